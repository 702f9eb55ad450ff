"""The math task end to end on a tiny random Qwen2 LM / RM pair (mechanics only): `bench accuracy
--task math` with resume, summary and plot; `decode --trace` writing the revision events."""

from __future__ import annotations

import json

import pytest

from nabla_jax.app import cli
from nabla_jax.app.evaluation import summarize
from tests.hf_models import save_chat_pair

PROBLEMS = [
    {"problem": "What is $2 + 2$?", "answer": "4", "unique_id": "a"},
    {"problem": "Solve $3x + 5 = 20$.", "answer": "5", "unique_id": "b"},
]
CONFIG = """\
task: {name: math, instruction: "Put your final answer within \\\\boxed{}."}
decode:
  max_length: 10
  max_n_generations: 3
  rollout: {temperature: 1.0, top_k: 20}
  resample: {temperature: 1.5, top_k: 20}
  grad_threshold: null
  confidence_threshold: 1.0
  dto_window: null
  batch_size: 2
  dto: {num_steps: 2, learning_rate: 0.05, window_dtype: bfloat16}
baselines: {temperature: 1.0}
"""


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    lm_dir, rm_dir = tmp_path_factory.mktemp("lm"), tmp_path_factory.mktemp("rm")
    save_chat_pair(lm_dir, rm_dir)
    return str(lm_dir), str(rm_dir)


@pytest.fixture()
def files(tmp_path):
    problems = tmp_path / "math.jsonl"
    problems.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    cfg = tmp_path / "math.yaml"
    cfg.write_text(CONFIG)
    return problems, cfg


def test_bench_accuracy_math_task(pair, files, tmp_path, capsys):
    problems, cfg = files
    out = tmp_path / "acc.jsonl"
    argv = ["bench", "accuracy", "--task", "math", "--problems", str(problems), "--lm", pair[0],
            "--rm", pair[1], "--config", str(cfg), "--methods", "greedy,sc:2,nabla",
            "--output", str(out), "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    lines = out.read_text().splitlines()
    assert "_provenance" in json.loads(lines[0])  # the run's settings head the file
    rows = [json.loads(line) for line in lines[1:]]
    assert len(rows) == 6 and {r["problem_id"] for r in rows} == {"a", "b"}
    for r in rows:
        assert r["answer"] in ("4", "5") and isinstance(r["correct"], bool)
        assert r["predicted"] is None or isinstance(r["predicted"], str)
        assert r["model_calls"] > 0
    summary = json.loads((tmp_path / "acc.summary.json").read_text())
    assert list(summary) == ["greedy", "sc:2", "nabla"] and summary["nabla"]["n"] == 2
    assert (tmp_path / "acc.png").stat().st_size > 0
    # resume: nothing recomputed
    assert cli.main(argv) == 0
    assert len(out.read_text().splitlines()) == 7 and summarize(str(out))["greedy"]["n"] == 2
    # --num-problems takes the file's first N (a new run: another problem set, another file)
    first = tmp_path / "first.jsonl"
    assert (
        cli.main(argv[:-3] + ["--output", str(first), "--no-progress", "--num-problems", "1"]) == 0
    )
    assert summarize(str(first))["greedy"]["n"] == 1


def test_bench_accuracy_math_needs_a_file_with_answers(files, tmp_path, capsys):
    problems, cfg = files
    base = ["bench", "accuracy", "--task", "math", "--methods", "greedy",
            "--output", str(tmp_path / "x.jsonl")]  # fmt: skip
    with pytest.raises(SystemExit):
        cli.main(base)
    assert "--task math needs --problems FILE" in capsys.readouterr().err
    no_answer = tmp_path / "q.jsonl"
    no_answer.write_text('{"problem": "What is 1+1?"}\n')
    with pytest.raises(SystemExit):
        cli.main(base + ["--problems", str(no_answer)])
    assert "have no 'answer'" in capsys.readouterr().err


def test_decode_trace_writes_revisions(pair, files, tmp_path):
    problems, cfg = files
    out = tmp_path / "out.jsonl"
    argv = ["decode", "--prompts", str(problems), "--lm", pair[0], "--rm", pair[1],
            "--config", str(cfg), "--output", str(out), "--trace"]  # fmt: skip
    assert cli.main(argv) == 0
    head, *lines = out.read_text().splitlines()
    assert "_provenance" in json.loads(head)
    rows = [json.loads(line) for line in lines]
    assert [r["prompt"] for r in rows] == [
        p["problem"] + "\nPut your final answer within \\boxed{}." for p in PROBLEMS
    ]
    events = [e for r in rows for e in r["revisions"]]
    assert events, "confidence threshold 1.0 refines every position"
    for r in rows:
        assert len(r["revisions"]) == r["stats"]["refinements"]
        for e in r["revisions"]:
            assert set(e) >= {"position", "old_text", "new_text", "verdict", "score_current"}
            assert e["verdict"] in ("accepted", "rejected", "unchanged")
            assert isinstance(e["old_text"], str) and isinstance(e["new_text"], str)
            assert (e["verdict"] == "unchanged") == (e["old_token"] == e["new_token"])


def test_bench_without_matplotlib_skips_only_the_plot(pair, files, tmp_path, capsys, monkeypatch):
    from nabla_jax.app import evaluation

    monkeypatch.setattr(evaluation, "plotting_available", lambda: False)
    problems, cfg = files
    out = tmp_path / "acc.jsonl"
    argv = ["bench", "accuracy", "--task", "math", "--problems", str(problems), "--lm", pair[0],
            "--rm", pair[1], "--config", str(cfg), "--methods", "greedy",
            "--output", str(out), "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert evaluation.NO_PLOT_MESSAGE in captured.err and evaluation.NO_PLOT_MESSAGE in captured.out
    assert (tmp_path / "acc.summary.json").exists() and not (tmp_path / "acc.png").exists()


def test_decode_trace_in_the_terminal(pair, files, capsys):
    _, cfg = files
    argv = ["decode", "--prompt", "What is $1+1$?", "--lm", pair[0], "--rm", pair[1],
            "--config", str(cfg), "--trace"]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "What is $1+1$?" in out and "'refinements'" in out
    assert "within \\boxed{}" in out  # --prompt gets the task's instruction too
    assert "resampled the token already there" in out or "verdict" in out
