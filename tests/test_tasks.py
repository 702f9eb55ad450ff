"""The bundled arithmetic task: generation, splits, solutions, answers, prompt-set files."""

import collections
import json
import re

import pytest

from nabla_jax.tasks import (
    ANSWER_PREFIX,
    SPLITS,
    Problem,
    ProblemFileError,
    chat_messages,
    extract_answer,
    format_prompt,
    fresh_test_problems,
    generate,
    grade,
    load_problems,
    make_problem,
    save_problems,
    split_of,
)

_STEP = re.compile(r"^(\d+)([-+*])(\d+)=(-?\d+)$")


def _expr(p: Problem) -> str:
    assert p.question.startswith("Compute ")
    return p.question[len("Compute ") :]


# ------------------------------------------------------------------------------ generation


def test_deterministic_by_seed():
    a = generate("train", 200, seed=3)
    b = generate("train", 200, seed=3)
    c = generate("train", 200, seed=4)
    assert a == b
    assert [p.question for p in a] != [p.question for p in c]
    # a longer draw with the same seed extends the shorter one
    assert generate("train", 300, seed=3)[:200] == a


def test_distinct_within_a_draw_and_stable_ids():
    ps = generate("validation", 2000, seed=0)
    assert len({p.question for p in ps}) == len(ps)
    assert len({p.id for p in ps}) == len(ps)
    # the id depends on the problem only, not on the seed that drew it
    by_q = {p.question: p.id for p in generate("validation", 3000, seed=1)}
    shared = [p for p in ps if p.question in by_q]
    assert all(by_q[p.question] == p.id for p in shared)


def test_splits_are_disjoint_over_a_large_sample():
    train = {p.question for seed in (0, 1) for p in generate("train", 20000, seed)}
    val = {p.question for seed in (0, 1) for p in generate("validation", 3000, seed)}
    test = {p.question for seed in (0, 1, 2) for p in generate("test", 3000, seed)}
    fresh = {p.question for p in fresh_test_problems(3000, seed=12345)}
    assert not train & val and not train & test and not val & test
    assert not fresh & train and not fresh & val
    assert all(split_of(q) == "train" for q in train)
    assert all(split_of(q) == "validation" for q in val)
    assert all(split_of(q) == "test" for q in test | fresh)


def test_split_of_ignores_prefix_and_shares_match_fractions():
    p = generate("test", 1, seed=0)[0]
    assert split_of(p.question) == split_of(_expr(p)) == "test"
    # draws before split filtering land in the splits in about the stated shares
    counts = collections.Counter(
        split_of(f"{a}+{b}*{c}") for a in range(60) for b in range(60) for c in range(2, 10)
    )
    total = sum(counts.values())
    for name, (lo, hi) in SPLITS.items():
        assert abs(counts[name] / total - (hi - lo) / 1000) < 0.01


def test_fresh_test_problems_are_the_test_distribution():
    assert fresh_test_problems(50, seed=7) == generate("test", 50, seed=7)
    assert fresh_test_problems(50, seed=7) != fresh_test_problems(50, seed=8)


def test_num_ops_range_and_distribution():
    ps = generate("train", 6000, seed=0)
    counts = collections.Counter(p.num_ops for p in ps)
    assert set(counts) == {3, 4, 5}
    assert all(abs(c / len(ps) - 1 / 3) < 0.03 for c in counts.values())
    ps2 = generate("train", 300, seed=0, min_ops=2, max_ops=2, max_value=200)
    assert {p.num_ops for p in ps2} == {2}
    assert all(0 <= p.answer <= 200 for p in ps2)


def test_every_solution_is_arithmetically_correct():
    for split in SPLITS:
        for p in generate(split, 2000, seed=11):
            lines = p.solution.split("\n")
            assert lines[-1] == f"{ANSWER_PREFIX} {p.answer}"
            steps = lines[:-1]
            assert len(steps) == p.num_ops
            # the question's expression, read with standard precedence, is the left-to-right chain
            expr = _expr(p)
            assert re.fullmatch(r"[\d()+\-*]+", expr)
            assert eval(expr) == p.answer  # noqa: S307 (digits and operators only, checked above)
            prev = None
            for line in steps:
                m = _STEP.match(line)
                assert m, line
                a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
                assert c == {"+": a + b, "-": a - b, "*": a * b}[op]
                assert 0 <= c <= 999
                if prev is not None:
                    assert a == prev  # each step starts from the previous result
                prev = c
            assert prev == p.answer
            # the operands appear in the expression in order
            assert re.findall(r"\d+", expr) == [re.match(r"\d+", steps[0])[0]] + [
                _STEP.match(s)[3] for s in steps
            ]
            assert grade(p.solution, p.answer)
            assert not grade(p.solution, p.answer + 1)
            assert not grade(p.solution.rsplit("\n", 1)[0], p.answer)  # no answer line


def test_make_problem_parentheses():
    p = make_problem(12, [("+", 7), ("*", 3), ("-", 5)])
    assert p.question == "Compute (12+7)*3-5"
    assert p.solution == "12+7=19\n19*3=57\n57-5=52\nAnswer: 52"
    assert (p.answer, p.num_ops) == (52, 3)
    q = make_problem(4, [("*", 3), ("+", 2), ("*", 2), ("*", 5), ("-", 9)])
    assert q.question == "Compute (4*3+2)*2*5-9"
    assert q.answer == eval("(4*3+2)*2*5-9")  # noqa: S307
    with pytest.raises(ValueError, match="unknown operation"):
        make_problem(1, [("/", 2)])
    with pytest.raises(ValueError, match="at least one"):
        make_problem(1, [])


def test_generate_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown split"):
        generate("dev", 1)
    with pytest.raises(ValueError, match="min_ops"):
        generate("train", 1, min_ops=4, max_ops=3)
    with pytest.raises(ValueError, match="n must be"):
        generate("train", -1)


def test_prompt_and_messages():
    p = generate("test", 1, seed=0)[0]
    assert format_prompt(p) == p.question
    assert format_prompt("Compute 1+2") == "Compute 1+2"
    assert chat_messages(p) == [{"role": "user", "content": p.question}]
    msgs = chat_messages(p, with_solution=True, system="S")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    assert msgs[-1]["content"] == p.solution
    with pytest.raises(ValueError):
        chat_messages("Compute 1+2", with_solution=True)


# ------------------------------------------------------------------------------ answers


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Answer: 42", 42),
        ("1+2=3\nAnswer: 3", 3),
        ("Answer:42", 42),
        ("Answer :   7", 7),
        ("Answer: -5", -5),
        ("Answer: - 5", -5),
        ("Answer: −12", -12),
        ("Answer: +8", 8),
        ("answer: 9", 9),
        ("ANSWER: 10.", 10),
        ("Answer: 10.0", 10),
        ("Answer: 10.5", None),
        ("Answer: 1,234", 1234),
        ("Answer: 52, done", 52),
        ("**Answer:** 13", 13),
        ("Answer: 1\nAnswer: 2", 2),  # the last one counts
        ("Answer: 1\nAnswer: x", None),  # ... even when it has no number
        ("Answer: 7<|im_end|>", 7),
        ("Answer: 007", 7),
        ("Answer:\n", None),
        ("Answer: ", None),
        ("", None),
        ("the result is 42", None),
        ("Answer: 12,34", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_grade_is_exact():
    assert grade("Answer: 42", 42)
    assert not grade("Answer: 42", 43)
    assert not grade("Answer: 420", 42)
    assert not grade("no answer", 42)
    assert grade("Answer: -3", -3)
    with pytest.raises(ValueError):
        grade("Answer: 1", None)


# ------------------------------------------------------------------------------ files


def test_save_load_round_trip_json_and_jsonl(tmp_path):
    ps = generate("test", 25, seed=0)
    for name in ("set.json", "set.jsonl"):
        path = save_problems(tmp_path / name, ps)
        assert load_problems(path) == ps
    # JSONL is one object per line
    lines = (tmp_path / "set.jsonl").read_text().splitlines()
    assert len(lines) == 25 and json.loads(lines[0])["id"] == ps[0].id


def test_load_minimal_objects_and_defaults(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(
        '{"question": "Compute 1+2", "answer": "3"}\n\n'
        '{"question": "What is 2*3?", "id": 17, "extra": [1]}\n'
    )
    a, b = load_problems(path)
    assert a == Problem(id="mine-0", question="Compute 1+2", answer=3)
    assert b == Problem(id="17", question="What is 2*3?")
    single = tmp_path / "one.json"
    single.write_text(json.dumps({"question": "Q", "answer": 5}, indent=2))
    assert load_problems(single) == [Problem(id="one-0", question="Q", answer=5)]
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"problems": [{"question": "Q"}]}))
    assert load_problems(wrapped) == [Problem(id="wrapped-0", question="Q")]


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="problem file not found"):
        load_problems(tmp_path / "nope.json")


def test_load_bad_json_list_names_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n {"question": "a"},\n {"question": "b",,}\n]\n')
    with pytest.raises(ProblemFileError, match=r"bad\.json: invalid JSON at line 3"):
        load_problems(path)


def test_load_bad_jsonl_names_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "a"}\n{"question": "b"}\n{"question": \n')
    with pytest.raises(ProblemFileError, match="invalid JSON on line 3"):
        load_problems(path)


def test_load_missing_question_names_item(tmp_path):
    path = tmp_path / "noq.jsonl"
    path.write_text('{"question": "a"}\n{"prompt": "b"}\n')
    with pytest.raises(ProblemFileError, match=r"line 2: missing required field 'question'"):
        load_problems(path)
    path = tmp_path / "noq.json"
    path.write_text(json.dumps([{"question": "a"}, {"answer": 1}]))
    with pytest.raises(ProblemFileError, match=r"item 1: missing required field 'question'"):
        load_problems(path)


@pytest.mark.parametrize(
    "content, match",
    [
        ("", "empty"),
        ("[]", "no problems"),
        ('["Compute 1+2"]', "expected a JSON object"),
        ('[{"question": ""}]', "non-empty string"),
        ('[{"question": "q", "answer": "three"}]', "'answer' must be an integer"),
        ('[{"question": "q", "answer": true}]', "'answer' must be an integer"),
        ('[{"question": "q", "answer": 2.5}]', "'answer' must be an integer"),
        ('[{"question": "q", "num_ops": "3"}]', "'num_ops' must be an integer"),
        ('[{"question": "q", "id": "a"}, {"question": "r", "id": "a"}]', "duplicate id 'a'"),
    ],
)
def test_load_bad_values(tmp_path, content, match):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(ProblemFileError, match=match):
        load_problems(path)
