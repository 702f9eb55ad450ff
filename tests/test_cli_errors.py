"""Bad command lines: one line ``nabla-jax: error: …`` and exit code 2, before any model loads.

Most cases point --lm at a missing directory or rely on the check coming first, so that a test
passing proves the error is raised before models load.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from nabla_jax.app import evaluation
from nabla_jax.app.config_io import load_run_config
from tests.cli_helpers import cli_fails as _fails
from tests.hf_models import hf_model, save_chat_pair

MISSING = "/no/such/model/dir"


def test_seed_out_of_range(capsys):
    _fails(["decode", "--prompt", "hi", "--seed", str(10**23), "--lm", MISSING], capsys,
           "--seed 100000000000000000000000 is out of range")  # fmt: skip
    _fails(["bench", "accuracy", "--seed", "-1", "--lm", MISSING], capsys, "out of range")


def test_empty_prompt_is_refused(capsys):
    _fails(["decode", "--prompt", "  ", "--lm", MISSING], capsys, "--prompt is empty")


def test_model_path_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "weights.safetensors"
    f.write_bytes(b"x")
    _fails(["decode", "--prompt", "hi", "--lm", str(f)], capsys, "is a file; pass the model dir")


def test_binary_prompts_file_is_named(tmp_path, capsys):
    f = tmp_path / "prompts.jsonl"
    f.write_bytes(bytes(range(256)) * 4)
    _fails(["decode", "--prompts", str(f), "--lm", MISSING], capsys, f"{f}: not UTF-8 text")


def test_output_never_overwrites_the_prompts(tmp_path, capsys):
    f = tmp_path / "p.jsonl"
    f.write_text('{"question": "What is 2+2?"}\n')
    before = f.read_bytes()
    _fails(["decode", "--prompts", str(f), "--output", str(f)], capsys, "is the --prompts file")
    alias = tmp_path / "link.jsonl"
    alias.symlink_to(f)
    _fails(["decode", "--prompts", str(f), "--output", str(alias)], capsys, "--prompts file")
    assert f.read_bytes() == before


def test_output_paths_are_checked_before_models_load(tmp_path, capsys):
    argv = ["decode", "--prompt", "hi", "--lm", MISSING, "--output"]
    _fails([*argv, str(tmp_path / "nodir" / "o.jsonl")], capsys, "does not exist; create it")
    _fails([*argv, str(tmp_path)], capsys, "is a directory")
    # bench creates a missing results directory (its default is results/) but not a file's dir
    bench = ["bench", "accuracy", "--methods", "greedy", "--lm", MISSING, "--output"]
    (tmp_path / "file").write_text("")
    _fails([*bench, str(tmp_path / "file" / "acc.jsonl")], capsys, "cannot create directory")


def test_duplicate_methods_are_refused(capsys):
    _fails(["bench", "accuracy", "--methods", "greedy,greedy", "--lm", MISSING], capsys,
           "['greedy'] given twice")  # fmt: skip


def test_coordinator_that_never_answers_times_out_clearly(capsys, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("NABLA_COORDINATOR_TIMEOUT", "1")
    t0 = time.monotonic()
    argv = ["decode", "--prompt", "hi", "--coordinator-address", f"127.0.0.1:{port}",
            "--num-processes", "2", "--process-id", "1"]  # fmt: skip
    _fails(argv, capsys, f"no coordinator answered at 127.0.0.1:{port} within 1 s")
    assert time.monotonic() - t0 < 30


def test_yaml_exponent_numbers_are_numbers(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("decode:\n  dto: {learning_rate: 1e-2, eps: 1E-8}\n")
    run = load_run_config(cfg)
    assert run["decode"].dto.learning_rate == 0.01 and run["decode"].dto.eps == 1e-8


# -- model directories that cannot be used: one line, before the other model loads -------------


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    save_chat_pair(root / "lm", root / "rm")
    return root


def test_swapped_lm_and_rm(pair, capsys):
    argv = ["decode", "--prompt", "hi", "--lm", str(pair / "rm"), "--rm", str(pair / "lm")]
    _fails(argv, capsys, "is a reward model and --rm")
    _fails(["decode", "--prompt", "hi", "--lm", str(pair / "lm"), "--rm", str(pair / "lm")],
           capsys, "is a causal LM; it needs a *ForSequenceClassification head")  # fmt: skip


def test_vocabulary_mismatch_before_loading(pair, tmp_path, capsys):
    other = tmp_path / "rm101"
    hf_model("qwen2", "score").save_pretrained(other)  # 101-token vocabulary, no tokenizer
    import shutil

    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (pair / "lm" / name).exists():
            shutil.copy(pair / "lm" / name, other / name)
    argv = ["decode", "--prompt", "hi", "--lm", str(pair / "lm"), "--rm", str(other)]
    _fails(argv, capsys, "vocabulary size")


def test_library_errors_are_one_line(pair, tmp_path, capsys):
    # Unknown model type, a corrupt config.json, pickled-only weights: each one line.
    bad = tmp_path / "bad"
    bad.mkdir()
    cfg = json.loads((pair / "lm" / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "model_type": "mamba"}))
    (bad / "model.safetensors").symlink_to(pair / "lm" / "model.safetensors")
    argv = ["decode", "--prompt", "hi", "--rm", str(pair / "rm"), "--lm", str(bad)]
    _fails(argv, capsys, "model_type 'mamba'")
    (bad / "config.json").write_text("{")
    _fails(argv, capsys, "config.json is not valid JSON")
    pick = tmp_path / "pick"
    pick.mkdir()
    (pick / "config.json").write_text(json.dumps(cfg))
    (pick / "pytorch_model.bin").write_bytes(b"")
    for f in (pair / "lm").iterdir():  # a tokenizer: an LM without one is refused first
        if "token" in f.name:
            (pick / f.name).write_bytes(f.read_bytes())
    argv = ["decode", "--prompt", "hi", "--rm", str(pair / "rm"), "--lm", str(pick)]
    _fails(argv, capsys, "--allow-pickle")


# -- resume: integrity and provenance of the results file ----------------------------------------


def _prov(seed=0, methods=("greedy",)):
    from nabla_jax.app.bundled import bundled_decode_config

    return evaluation.provenance(
        seed=seed, methods=list(methods), cfg=bundled_decode_config(), lm="bundled",
        rm="bundled", dtype="float32", problems=["a", "b"],
    )  # fmt: skip


def _row(pid, method="greedy"):
    return json.dumps({"method": method, "problem_id": pid, "correct": True, "model_calls": 3,
                       "wall_seconds": 0.1})  # fmt: skip


def _results(path, *lines, prov=None):
    head = json.dumps({evaluation.PROVENANCE_KEY: prov or _prov()})
    path.write_text("\n".join([head, *lines]))
    return path


def test_torn_last_line_is_repaired_and_said(tmp_path):
    path = _results(tmp_path / "r.jsonl", _row("a"), _row("b")[:25])
    notes = evaluation.prepare_results_file(str(path), _prov())
    assert len(notes) == 1 and "removed a torn last line (line 3" in notes[0]
    assert path.read_text().endswith(_row("a") + "\n")
    assert evaluation.summarize(str(path))["greedy"]["n"] == 1
    # A whole last row without its newline only gets the newline.
    path = _results(tmp_path / "s.jsonl", _row("a"))
    assert "added it" in evaluation.prepare_results_file(str(path), _prov())[0]
    assert path.read_text().endswith(_row("a") + "\n")


def test_corrupt_line_names_file_and_line(tmp_path):
    path = _results(tmp_path / "r.jsonl", _row("a"), "{oops", _row("b"), "")
    with pytest.raises(evaluation.ResultsFileError, match=rf"{path}, line 3: not valid JSON"):
        evaluation.prepare_results_file(str(path), _prov())


def test_resume_of_another_run_is_refused(tmp_path, capsys):
    path = _results(tmp_path / "r.jsonl", _row("a"), "")
    with pytest.raises(evaluation.ResultsFileError, match=r"different run \(seed: file 0 vs now 1"):
        evaluation.prepare_results_file(str(path), _prov(seed=1))
    with pytest.raises(evaluation.ResultsFileError, match="methods"):
        evaluation.prepare_results_file(str(path), _prov(methods=["greedy", "nabla"]))
    legacy = tmp_path / "old.jsonl"
    legacy.write_text(_row("a") + "\n")
    with pytest.raises(evaluation.ResultsFileError, match="no provenance record"):
        evaluation.prepare_results_file(str(legacy), _prov())
    # Through the CLI: refused before any model loads (--lm does not even exist).
    argv = ["bench", "accuracy", "--methods", "greedy", "--num-problems", "2", "--seed", "5",
            "--lm", MISSING, "--output", str(path)]  # fmt: skip
    _fails(argv, capsys, "holds results of a different run")


def test_oracle_acceptance_needs_a_task_with_an_oracle(tmp_path, capsys):
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"question": "What is 1+1?", "answer": "2"}\n')
    argv = ["bench", "accuracy", "--task", "math", "--problems", str(problems), "--methods",
            "greedy", "--acceptance", "oracle", "--output", str(tmp_path / "r.jsonl")]  # fmt: skip
    _fails(argv + ["--lm", MISSING], capsys, "the math task has no oracle")
