"""The command line's success paths, end to end on tiny random models (and `demo` on the
bundled ones): what is printed, what is written, and that it is well-formed."""

from __future__ import annotations

import json

import pytest

from nabla_jax.app import cli
from nabla_jax.app.bundled import BUNDLED_LM
from tests.hf_models import save_chat_pair

pytestmark = pytest.mark.slow

SMALL = """\
decode:
  max_length: 12
  max_n_generations: 2
  batch_size: 2
  grad_threshold: null
  dto: {num_steps: 2, learning_rate: 1e-2}
baselines: {temperature: 0.8}
"""


@pytest.fixture(scope="module")
def run_args(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    save_chat_pair(root / "lm", root / "rm")
    (root / "small.yaml").write_text(SMALL)
    return root, ["--lm", str(root / "lm"), "--rm", str(root / "rm"), "--config",
                  str(root / "small.yaml")]  # fmt: skip


def test_decode_prompt_prints_the_response(run_args, capsys):
    _, common = run_args
    assert cli.main(["decode", "--prompt", "What is 2+2?", *common]) == 0
    out = capsys.readouterr().out
    assert out.startswith("### What is 2+2?\n")
    assert "'model_calls':" in out and "'generations':" in out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_decode_prompts_file_writes_one_row_per_prompt(run_args, tmp_path, capsys, dtype):
    root, common = run_args
    questions = ["What is 2+2?", "Add 7 and 5.", "What is 9-4?"]  # 2 chunks of batch_size 2
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"question": q}) + "\n" for q in questions))
    out = tmp_path / "o.jsonl"
    argv = ["decode", "--prompts", str(prompts), "--output", str(out), "--dtype", dtype]
    assert cli.main([*argv, *common]) == 0
    head, *lines = out.read_text().splitlines()
    assert json.loads(head)["_provenance"]["kind"] == "decode"
    rows = [json.loads(line) for line in lines]
    assert [r["prompt"] for r in rows] == questions
    assert [r["id"] for r in rows] == ["p-0", "p-1", "p-2"]
    for r in rows:
        assert isinstance(r["response"], str)
        assert r["stats"]["model_calls"] >= 1 and r["stats"]["generations"] >= 1
    assert f"wrote 3 responses to {out}" in capsys.readouterr().out


def test_bench_accuracy_with_sampled_baselines(run_args, tmp_path, capsys):
    _, common = run_args
    out = tmp_path / "acc.jsonl"
    argv = ["bench", "accuracy", "--methods", "cot,bon:2,sc:2", "--num-problems", "2",
            "--seed", "3", "--output", str(out), "--no-progress", *common]  # fmt: skip
    assert cli.main(argv) == 0
    lines = out.read_text().splitlines()
    assert "_provenance" in json.loads(lines[0])
    rows = [json.loads(line) for line in lines[1:]]
    assert sorted((r["method"], r["problem_id"]) for r in rows) == sorted(
        (m, pid) for m in ("cot", "bon:2", "sc:2") for pid in {r["problem_id"] for r in rows}
    )
    assert len(rows) == 6
    summary = json.loads((tmp_path / "acc.summary.json").read_text())
    assert list(summary) == ["cot", "bon:2", "sc:2"] and all(s["n"] == 2 for s in summary.values())
    # Two samples cost more model calls than one.
    assert summary["bon:2"]["mean_model_calls"] > summary["cot"]["mean_model_calls"]
    assert summary["sc:2"]["mean_model_calls"] > summary["cot"]["mean_model_calls"]
    assert "| bon:2 |" in capsys.readouterr().out


@pytest.mark.skipif(not (BUNDLED_LM / "config.json").exists(), reason="bundled models missing")
def test_demo_fast_mode(capsys):
    assert cli.main(["demo", "--num-problems", "1", "--max-length", "16"]) == 0
    out = capsys.readouterr().out
    assert "greedy 0/1 correct" in out or "greedy 1/1 correct" in out
    assert "∇-Reasoner" in out and "calls/problem" in out
