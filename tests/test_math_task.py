"""The math task: problem files, boxed-answer extraction, answer equivalence (math-verify)."""

from __future__ import annotations

import json

import pytest

from nabla_jax.tasks import get_task, task_from_config
from nabla_jax.tasks.math import (
    MathFileError,
    MathProblem,
    canonical_answer,
    extract_answer,
    format_prompt,
    grade,
    load_problems,
)


def boxed(ans: str) -> str:
    return f"Some reasoning first.\nSo the answer is $\\boxed{{{ans}}}$."


# (reference answer, predicted boxed content, equal?) — hand-written.
EQUIVALENCE = [
    # fractions
    ("\\frac{1}{2}", "0.5", True),
    ("\\frac12", "\\dfrac{1}{2}", True),
    ("\\frac{1}{2}", "1/2", True),
    ("\\frac{3}{4}", "\\tfrac{6}{8}", True),
    ("\\frac{1}{3}", "0.33", False),
    # decimals
    ("2", "2.0", True),
    ("0.25", "\\frac{1}{4}", True),
    ("3.5", "3.05", False),
    # radicals
    ("2\\sqrt{3}", "\\sqrt{12}", True),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}", True),
    ("\\sqrt{2}", "\\sqrt{3}", False),
    # intervals
    ("(-\\infty, 3]", "(-\\infty,3]", True),
    ("(-\\infty, 3]", "(-\\infty,3)", False),
    ("[2, 5)", "[2,5)", True),
    # sets / lists of solutions
    ("\\{1,2,3\\}", "\\{3,2,1\\}", True),
    ("1, 2, 3", "3, 2, 1", True),
    ("\\{1,2\\}", "\\{1,3\\}", False),
    # units and degrees
    ("90^\\circ", "90", True),
    ("90", "90^{\\circ}", True),
    ("5\\text{ cm}", "5", True),
    ("\\$18.90", "18.90", True),
    ("50\\%", "50", True),
    # \text{}
    ("\\text{(C)}", "C", True),
    ("\\text{Evelyn}", "Evelyn", True),
    ("\\text{east}", "\\text{west}", False),
    # negative numbers
    ("-3", "-3", True),
    ("-3", "3", False),
    ("-\\frac{2}{3}", "-\\frac{4}{6}", True),
    # thousands separators
    ("1,000", "1000", True),
    ("10,000", "10000", True),
    ("12", "1,2", False),
    # symbolic equality
    ("x^2+2x+1", "(x+1)^2", True),
    ("x=5", "5", True),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", True),
    ("2\\pi", "\\pi+\\pi", True),
    ("x^2-1", "(x-1)(x+2)", False),
    # wrong answers
    ("3", "4", False),
    ("\\pi", "3.14159", False),
    ("7", "", False),
]


@pytest.mark.parametrize(("answer", "predicted", "equal"), EQUIVALENCE)
def test_answer_equivalence(answer, predicted, equal):
    assert grade(boxed(predicted), answer) is equal


def test_equivalence_table_is_broad():
    assert len(EQUIVALENCE) >= 30
    assert sum(not eq for _, _, eq in EQUIVALENCE) >= 10


def test_no_boxed_answer_is_wrong():
    assert not grade("The answer is 5.", "5")
    with pytest.raises(ValueError, match="without an answer"):
        grade(boxed("5"), None)


def test_grade_works_off_the_main_thread():
    import threading

    out = []
    worker = threading.Thread(target=lambda: out.append(grade(boxed("0.5"), "\\frac12")))
    worker.start()
    worker.join()
    assert out == [True]


def test_extract_answer_takes_the_last_box_with_nested_braces():
    text = "First \\boxed{1}, then \\boxed{\\frac{\\sqrt{2}}{\\{x\\}}} and done."
    assert extract_answer(text) == "\\frac{\\sqrt{2}}{\\{x\\}}"
    assert extract_answer("\\boxed {42}") == "42"
    assert extract_answer("\\fbox{7}") == "7"
    assert extract_answer("no box here") is None
    # an unbalanced last box falls back to the previous complete one
    assert extract_answer("\\boxed{3} then \\boxed{\\frac{1}{2}") == "3"
    assert extract_answer("\\boxed{") is None


def test_canonical_answer_merges_cosmetic_variants():
    a = canonical_answer("\\boxed{\\dfrac{1}{2}}")
    assert a == canonical_answer("\\boxed{ \\frac{1}{2} }") == "\\frac{1}{2}"
    assert canonical_answer("\\boxed{\\left(1, 2\\right)}") == "(1,2)"
    assert canonical_answer("nothing") is None


def test_load_problem_layouts(tmp_path):
    rows = [
        {"problem": "What is $1+1$?", "answer": "2", "unique_id": "test/a.json"},
        {"question": "Find $x$.", "answer": 3},
        {"prompt": "  Keep my spaces.  ", "answer": "\\frac12", "id": "c"},
    ]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    got = load_problems(jsonl)
    assert got == [
        MathProblem("test/a.json", "What is $1+1$?", "2"),
        MathProblem("p-1", "Find $x$.", "3"),
        MathProblem("c", "  Keep my spaces.  ", "\\frac12"),
    ]
    as_list = tmp_path / "l.json"
    as_list.write_text(json.dumps(rows))
    assert [p.question for p in load_problems(as_list)] == [p.question for p in got]
    wrapped = tmp_path / "w.json"
    wrapped.write_text(json.dumps({"prompts": ["Solve $x^2=4$.", {"prompt": "B", "answer": "1"}]}))
    w = load_problems(wrapped)
    assert w[0] == MathProblem("w-0", "Solve $x^2=4$.", None) and w[1].answer == "1"


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        ("", "empty"),
        ("[1, 2", "invalid JSON"),
        ('{"answer": "1"}\n{"answer": "2"}\n', "no problem text"),
        ('{"problem": ""}\n', "non-empty string"),
        ('{"problem": "a", "answer": [1]}\n', "'answer' must be"),
        ('{"problem": "a", "id": 1}\n{"problem": "b", "id": 1}\n', "duplicate id"),
        ("{bad}\n{also bad}\n", "invalid JSON on line 1"),
    ],
)
def test_bad_problem_files(tmp_path, content, phrase):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(MathFileError, match=phrase):
        load_problems(f)
    with pytest.raises(FileNotFoundError):
        load_problems(tmp_path / "missing.jsonl")


def test_prompt_is_unchanged_plus_optional_instruction():
    p = MathProblem("x", "Compute $\\frac{1}{2}+\\frac{1}{3}$.", "\\frac56")
    assert format_prompt(p) == p.question
    assert format_prompt(p, "Box it.") == p.question + "\nBox it."
    task = get_task("math", instruction="Box it.")
    assert task.format_prompt(p) == p.question + "\nBox it."
    assert task.vote_key(boxed("\\dfrac{5}{6}")) == task.vote_key(boxed("\\frac{5}{6}"))


def test_task_selection():
    assert get_task().name == "arithmetic" and get_task().fresh_problems is not None
    assert task_from_config({"task": {"name": "math", "instruction": "I"}}).instruction == "I"
    assert task_from_config({}, "math").fresh_problems is None
    # --task overrides the config's task; the config's instruction belongs to its own task
    assert task_from_config({"task": {"name": "math", "instruction": "I"}}, "arithmetic").name == (
        "arithmetic"
    )
    with pytest.raises(ValueError, match="unknown task 'gsm'"):
        get_task("gsm")
    with pytest.raises(ValueError, match="takes no instruction"):
        get_task("arithmetic", instruction="Box it.")
    with pytest.raises(ValueError, match="unknown key"):
        task_from_config({"task": {"name": "math", "suffix": "x"}})
