"""Run configs: YAML / dict → ``DecodeConfig`` (with nested ``DTOConfig`` and sampling settings).

Layout of a config file (every key optional; unknown keys are an error)::

    decode:            # DecodeConfig fields
      max_length: 96
      max_n_generations: 8
      rollout: {temperature: 0.6, top_p: 0.95}
      resample: {temperature: 0.5, top_p: 0.95}
      dto: {num_steps: 20, learning_rate: 0.01}
    models: {lm: path, rm: path, dtype: float32, rm_vocab: by_string, rm_steps: {...}}
    mesh: "data=4,model=2"
    baselines: {temperature: 0.6, top_p: 0.95}   # sampling of CoT / Best-of-N / self-consistency
    search:            # the tree searches beyond their counts (decoding.search_options)
      mcts: {simulations: 10, uct_c: 1.0, answer: best, value: rollout}
      beam: {max_depth: 8}
    compilation_cache: false   # do not use the persistent XLA compilation cache (default: on)
    coordinator_timeout: 120   # seconds a multi-host process waits for the coordinator
    task: {name: math, instruction: "..."}        # the task's problems, prompts and grader
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from nabla_jax.decoding.config import DecodeConfig
from nabla_jax.decoding.sampling import SamplingConfig
from nabla_jax.decoding.search_options import BeamOptions, MCTSOptions, SearchOptions
from nabla_jax.functional.dto_config import DTOConfig
from nabla_jax.functional.reward_settings import REWARD_MODEL_KEYS, check_reward_settings

__all__ = [
    "TOP_LEVEL_KEYS",
    "ConfigError",
    "decode_config_from_dict",
    "load_run_config",
    "search_options_from_dict",
]

TOP_LEVEL_KEYS = (
    "decode", "models", "mesh", "task", "baselines", "search", "compilation_cache",
    "coordinator_timeout",
)  # fmt: skip


class ConfigError(ValueError):
    """A run config names an unknown key or holds a bad value."""


def _fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _build(cls, values: dict, where: str, nested: dict | None = None):
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping of {cls.__name__} fields, got {values!r}")
    known = _fields(cls)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; valid keys: {', '.join(known)}")
    kwargs = dict(values)
    for name, sub in (nested or {}).items():
        if name in kwargs:
            kwargs[name] = _build(sub, kwargs[name], f"{where}.{name}")
    for name, value in kwargs.items():
        if isinstance(value, list):
            kwargs[name] = tuple(value)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e


def decode_config_from_dict(values: dict | None) -> DecodeConfig:
    """``DecodeConfig`` from the ``decode:`` mapping of a run config."""
    return _build(
        DecodeConfig,
        values or {},
        "decode",
        {"rollout": SamplingConfig, "resample": SamplingConfig, "dto": DTOConfig},
    )


def _yaml_loader():
    """PyYAML's SafeLoader reading ``1e-2`` / ``5E3`` as floats (YAML 1.2), not strings: its
    YAML 1.1 float pattern demands a dot (``1.0e-2``), so ``learning_rate: 1e-2`` would be text."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return Loader


def load_run_config(path) -> dict[str, Any]:
    """Read a YAML run config; returns ``{"decode": DecodeConfig, "models": {...}, ...}``.
    Numbers in exponent form without a dot (``1e-2``) are read as numbers."""
    import yaml

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    with open(path, encoding="utf-8-sig") as f:  # a leading BOM is accepted
        try:
            raw = yaml.load(f, Loader=_yaml_loader()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with keys {TOP_LEVEL_KEYS}")
    unknown = sorted(set(raw) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level key(s) {unknown}; valid keys: {', '.join(TOP_LEVEL_KEYS)}"
        )
    out = dict(raw)
    out["decode"] = decode_config_from_dict(raw.get("decode"))
    models = raw.get("models") or {}
    model_keys = ("lm", "rm", "dtype", *REWARD_MODEL_KEYS)
    bad = sorted(set(models) - set(model_keys))
    if bad:
        raise ConfigError(
            f"{path}: unknown key(s) {bad} in models; valid keys: {', '.join(model_keys)}"
        )
    try:
        check_reward_settings(models)
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from e
    out["models"] = models
    if not isinstance(raw.get("compilation_cache", True), bool):
        raise ConfigError(
            f"{path}: compilation_cache must be true or false, got {raw['compilation_cache']!r}"
        )
    timeout = raw.get("coordinator_timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
    ):
        raise ConfigError(
            f"{path}: coordinator_timeout must be a number of seconds > 0, got {timeout!r}"
        )
    if raw.get("task") is not None:
        from nabla_jax.tasks.registry import task_from_config

        try:
            task_from_config(raw)
        except ValueError as e:
            raise ConfigError(f"{path}: {e}") from e
    if raw.get("baselines") is not None:
        out["baselines"] = _build(SamplingConfig, raw["baselines"], "baselines")
    if raw.get("search") is not None:
        out["search"] = search_options_from_dict(raw["search"], f"{path}: search")
    return out


def search_options_from_dict(values: dict | None, where: str = "search") -> SearchOptions:
    """``SearchOptions`` from the ``search:`` mapping of a run config."""
    nested = {"mcts": MCTSOptions, "beam": BeamOptions}
    return _build(SearchOptions, values or {}, where, nested)
