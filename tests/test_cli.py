"""The `nabla-jax` command and run configs: errors, config files, benchmark resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nabla_jax.app import cli
from nabla_jax.app.bundled import BUNDLED_LM, bundled_baseline_sampling, bundled_decode_config
from nabla_jax.app.config_io import ConfigError, decode_config_from_dict, load_run_config
from nabla_jax.app.evaluation import check_baseline_sampling, parse_methods, summarize
from nabla_jax.decoding.sampling import SamplingConfig

ROOT = Path(__file__).resolve().parent.parent


def _fails(argv, capsys, phrase):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    assert phrase in capsys.readouterr().err


def test_bad_model_path(capsys):
    _fails(["decode", "--lm", "/no/such/dir", "--prompt", "hi"], capsys, "does not exist")


def test_bad_prompts_file(capsys):
    _fails(["decode", "--prompts", "/no/such.jsonl"], capsys, "does not exist")


def test_unknown_method(capsys):
    _fails(["bench", "accuracy", "--methods", "greedy,tot"], capsys, "unknown method 'tot'")
    _fails(["bench", "accuracy", "--methods", "greedy,mcts"], capsys, "mcts needs 2 counts")
    _fails(["bench", "accuracy", "--methods", "bon"], capsys, "needs a sample count")


def test_bad_config_key(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("decode:\n  max_lenght: 10\n")
    _fails(["decode", "--config", str(cfg), "--prompt", "hi"], capsys, "max_lenght")
    cfg.write_text("decode:\n  dto: {learning_rate: -1}\n")
    _fails(["decode", "--config", str(cfg), "--prompt", "hi"], capsys, "learning_rate")
    cfg.write_text("decoding: {}\n")
    _fails(["decode", "--config", str(cfg), "--prompt", "hi"], capsys, "unknown top-level key")


def test_mesh_that_does_not_fit(capsys):
    _fails(["decode", "--mesh", "data=3,model=5", "--prompt", "hi"], capsys, "devices")


def test_incomplete_multihost_flags(capsys):
    # A library ValueError reaching the CLI is one line and exit code 2, not a traceback.
    argv = ["decode", "--coordinator-address", "127.0.0.1:1", "--prompt", "hi"]
    _fails(argv, capsys, "needs all of --coordinator-address, --num-processes and --process-id")
    # --debug (before or after the subcommand) shows the traceback instead.
    for debug_argv in (["--debug", *argv], [*argv, "--debug"]):
        with pytest.raises(ValueError, match="needs all of"):
            cli.main(debug_argv)


def test_bundled_defaults_are_the_one_shipped_file():
    """One file holds the bundled settings: the repository's configs/arithmetic.yaml is the
    package's assets/arithmetic.yaml, and bundled_decode_config() reads it."""
    from nabla_jax.app.bundled import BUNDLED_CONFIG

    assert (ROOT / "configs" / "arithmetic.yaml").samefile(BUNDLED_CONFIG)
    run = load_run_config(BUNDLED_CONFIG)
    assert run["decode"] == bundled_decode_config()
    assert run["baselines"] == bundled_baseline_sampling()
    cfg = bundled_decode_config()  # the settings chosen on validation (the file's comments)
    assert (cfg.max_length, cfg.max_n_generations, cfg.dto_window, cfg.batch_size) == (96, 8, 32, 8)
    assert cfg.rollout.temperature == 0.0 and cfg.resample.temperature == 0.5
    assert cfg.confidence_threshold == 0.99 and cfg.grad_threshold is None
    assert cfg.resample_excludes_current and cfg.accept_margin == 4.0
    assert bundled_decode_config(max_length=16).max_length == 16
    template = load_run_config(ROOT / "configs" / "qwen2.5-7b-math500.yaml")
    assert template["decode"].max_length == 1024 and template["models"]["dtype"] == "bfloat16"


def test_nested_config_values():
    cfg = decode_config_from_dict(
        {"rollout": {"temperature": 0.3}, "dto": {"num_steps": 5}, "stop_strings": ["\n\n"]}
    )
    assert cfg.rollout.temperature == 0.3 and cfg.dto.num_steps == 5
    assert cfg.stop_strings == ("\n\n",)
    with pytest.raises(ConfigError, match="rollout"):
        decode_config_from_dict({"rollout": {"temp": 0.3}})


def test_greedy_baseline_sampling_is_refused(tmp_path, capsys):
    check_baseline_sampling(["greedy", "nabla"], SamplingConfig(temperature=0.0))  # nothing sampled
    with pytest.raises(ValueError, match=r"\['bon:8', 'sc:4'\].*temperature"):
        check_baseline_sampling(["greedy", "bon:8", "sc:4"], SamplingConfig(temperature=0.0))
    # From the command line: a config whose rollouts are greedy and that names no `baselines`
    # sampling fails before any model is loaded (the model path does not even exist).
    cfg = tmp_path / "greedy.yaml"
    cfg.write_text("decode:\n  rollout: {temperature: 0.0}\n")
    argv = ["bench", "accuracy", "--methods", "greedy,bon:4", "--config", str(cfg),
            "--lm", str(tmp_path / "missing"), "--output", str(tmp_path / "x.jsonl")]  # fmt: skip
    _fails(argv, capsys, "baselines: {temperature")
    with pytest.raises(ConfigError, match="baselines"):
        cfg.write_text("baselines: {temp: 0.6}\n")
        load_run_config(cfg)


def test_parse_methods():
    assert parse_methods("greedy, bon:8,sc:4,nabla") == ["greedy", "bon:8", "sc:4", "nabla"]
    with pytest.raises(ValueError, match="no methods"):
        parse_methods(" , ")


@pytest.mark.slow
@pytest.mark.skipif(not (BUNDLED_LM / "config.json").exists(), reason="bundled models missing")
def test_bench_accuracy_writes_results_and_resumes(tmp_path, capsys):
    out = tmp_path / "acc.jsonl"
    cfg = tmp_path / "small.yaml"
    cfg.write_text("decode:\n  max_length: 40\n  max_n_generations: 2\n  grad_threshold: null\n")
    argv = ["bench", "accuracy", "--methods", "greedy,nabla", "--num-problems", "2",
            "--seed", "7", "--output", str(out), "--config", str(cfg), "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    header, *lines = out.read_text().splitlines()
    prov = json.loads(header)["_provenance"]
    assert prov["seed"] == 7 and prov["methods"] == ["greedy", "nabla"]
    assert prov["decode"]["max_length"] == 40 and prov["lm"] == "bundled"
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 4 and {r["method"] for r in rows} == {"greedy", "nabla"}
    summary = json.loads((tmp_path / "acc.summary.json").read_text())
    assert set(summary) == {"greedy", "nabla"}
    assert set(summary["greedy"]) == {"accuracy", "mean_model_calls", "wall_seconds", "n"}
    assert (tmp_path / "acc.png").stat().st_size > 0
    # A rerun resumes: nothing is recomputed or appended.
    assert cli.main(argv) == 0
    assert len(out.read_text().splitlines()) == 5
    assert summarize(str(out))["greedy"]["n"] == 2
    assert "| greedy |" in capsys.readouterr().out
    # A kill mid-write leaves a torn last line: the rerun says so, recomputes that row only, and
    # the file is whole again.
    text = out.read_text()
    cut = text.rstrip("\n").rfind("\n") + 1 + 30
    out.write_text(text[:cut])
    assert cli.main(argv) == 0
    assert "removed a torn last line (line 5" in capsys.readouterr().err
    again = [json.loads(line) for line in out.read_text().splitlines()[1:]]
    assert len(again) == 4 and again[:3] == rows[:3]
    key = lambda r: (r["method"], r["problem_id"])
    assert key(again[3]) == key(rows[3])
    assert summarize(str(out))["nabla"]["n"] == 2
