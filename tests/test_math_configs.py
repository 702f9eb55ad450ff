"""The MATH-500 configs load; the two decoding configs differ from each other in exactly the
documented ways, and the reward-model variants keep the paper-faithful decoding."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from nabla_jax.app.config_io import ConfigError, load_run_config
from nabla_jax.tasks import task_from_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _flat(cfg, prefix=""):
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            out.update(_flat(v, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = v
    return out


def test_both_math500_configs_load_and_differ_only_as_documented():
    public = load_run_config(CONFIGS / "qwen2.5-7b-math500-public.yaml")
    paper = load_run_config(CONFIGS / "qwen2.5-7b-math500.yaml")
    a, b = _flat(public["decode"]), _flat(paper["decode"])
    diff = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
    assert diff == {
        "rollout.top_k": (20, 0),
        "resample.top_k": (20, 0),
        "dto_window": (None, 32),
        "dto.window_dtype": ("bfloat16", "float32"),
    }
    # The public script's settings.
    d = public["decode"]
    assert (d.max_length, d.max_n_generations, d.confidence_threshold) == (1024, 8, 0.97)
    assert (d.rollout.temperature, d.rollout.top_p) == (0.6, 0.95)
    assert (d.resample.temperature, d.resample.top_p) == (0.5, 0.95)
    assert (d.dto.num_steps, d.dto.learning_rate, d.dto.reward_coeff) == (20, 0.01, 1.0)
    assert d.grad_threshold == 4.0 and d.dto.grad_caching and not d.dto.update_postfix
    assert public["models"]["dtype"] == paper["models"]["dtype"] == "bfloat16"
    # Tasks: both math; only the paper-faithful one appends an instruction.
    assert task_from_config(public).name == task_from_config(paper).name == "math"
    assert task_from_config(public).instruction is None
    assert "\\boxed{}" in task_from_config(paper).instruction
    assert public["baselines"].top_k == 20 and paper["baselines"].top_k == 0


def test_reward_model_configs_load_with_the_paper_decoding():
    """The cross-vocabulary (Skywork) and PRM configs keep the paper-faithful decoding settings
    and only change how the reward model is read."""
    paper = load_run_config(CONFIGS / "qwen2.5-7b-math500.yaml")
    sky = load_run_config(CONFIGS / "qwen2.5-7b-math500-skywork.yaml")
    prm = load_run_config(CONFIGS / "qwen2.5-7b-math500-prm.yaml")
    for cfg in (sky, prm):
        assert _flat(cfg["decode"]) == _flat(paper["decode"])
        assert cfg["baselines"] == paper["baselines"]
        assert task_from_config(cfg).instruction == task_from_config(paper).instruction
        assert cfg["models"]["dtype"] == "bfloat16"
    assert sky["models"]["rm_vocab"] == "by_string" and "rm_steps" not in sky["models"]
    assert prm["models"]["rm_steps"] == {
        "layout": "math_prm", "aggregate": "min", "temperature": 0.1, "separator": "<extra_0>"
    }  # fmt: skip
    assert "rm_vocab" not in prm["models"]  # resolved from the two tokenizers


@pytest.mark.parametrize(
    "models, message",
    [
        ({"rm_vocab": "string"}, r"models.rm_vocab must be one of shared, by_string, got 'string'"),
        ({"rm_steps": {"aggregate": "max"}}, r"aggregate must be one of last, min, product"),
        ({"rm_steps": {"aggregate": "min", "tau": 1}}, r"unknown key\(s\) \['tau'\] in models.rm"),
        ({"rm_steps": {"aggregate": "soft_min"}}, r"temperature must be a number > 0 for soft_"),
        ({"rm_steps": {"aggregate": "min", "temperature": -1}}, r"number > 0 for min, got -1"),
        ({"rm_steps": {"aggregate": "mean", "temperature": 1}}, r"min and soft_min only, not 'm"),
        ({"rm_steps": {"aggregate": "min", "layout": "mlp"}}, r"layout must be one of token_cl"),
        ({"rm_steps": {"aggregate": "min", "separator": ""}}, r"separator must be a token str"),
        ({"rm_steps": "min"}, r"rm_steps must be a mapping"),
        ({"rm_head": "prm"}, r"unknown key\(s\) \['rm_head'\] in models; valid keys: lm, rm, dty"),
    ],
)
def test_reward_model_settings_are_checked(tmp_path, models, message):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"models": models}))
    with pytest.raises(ConfigError, match=message):
        load_run_config(path)
