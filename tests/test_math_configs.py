"""The two MATH-500 configs load, and differ from each other in exactly the documented ways."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from nabla_jax.app.config_io import load_run_config
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
