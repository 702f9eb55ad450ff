"""The method registry: every decoding method by name (``greedy``, ``cot``, ``bon:N``, ``sc:N``).

:func:`parse_method` validates a method spec; :func:`run_baseline` runs a baseline by name with
shared keyword settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from nabla_jax.decoding.baselines import best_of_n, greedy_cot, sampled_cot, self_consistency
from nabla_jax.decoding.results import DecodeResult
from nabla_jax.models.model import CausalLM, RewardModel

__all__ = ["BASELINES", "Baseline", "parse_method", "run_baseline"]


@dataclasses.dataclass(frozen=True)
class Baseline:
    """A registered baseline.

    Attributes:
      name: the method name (``greedy``, ``cot``, ``bon``, ``sc``).
      fn: the function.
      takes_n: the method takes a sample count (``bon:8``); required then.
      needs_key: the function takes a PRNG key.
      needs_rm: the function takes a reward model.
      description: one line.
    """

    name: str
    fn: Callable[..., list[DecodeResult]]
    takes_n: bool
    needs_key: bool
    needs_rm: bool
    description: str


BASELINES: Mapping[str, Baseline] = {
    b.name: b
    for b in (
        Baseline("greedy", greedy_cot, False, False, False, "greedy chain of thought"),
        Baseline("cot", sampled_cot, False, True, False, "one sampled chain of thought"),
        Baseline("bon", best_of_n, True, True, True, "Best-of-N ranked by the reward model"),
        Baseline("sc", self_consistency, True, True, False, "self-consistency majority vote"),
    )
}


def parse_method(spec: str, *, extra: Sequence[str] = ()) -> tuple[str, int | None]:
    """``"bon:8"`` -> ``("bon", 8)``; ``"greedy"`` -> ``("greedy", None)``.

    Args:
      spec: a method name, with ``:N`` (N >= 1) for the methods that take a sample count.
      extra: further accepted names without a count (e.g. ``("nabla",)`` for the CLI).

    Returns:
      ``(name, n)``; ``n`` is None for methods without a sample count.

    Raises:
      ValueError: unknown method, a missing / malformed count, or a count given to a method that
        takes none — the message lists the known methods.
    """
    if not isinstance(spec, str):
        raise TypeError(f"method must be a string like 'bon:8', got {type(spec).__name__}")
    known = ", ".join(
        [f"{b.name}:N" if b.takes_n else b.name for b in BASELINES.values()] + list(extra)
    )
    name, colon, count = spec.strip().partition(":")
    name = name.strip()
    if name in extra and name not in BASELINES:
        if colon:
            raise ValueError(f"method {spec!r}: {name} takes no sample count (known: {known})")
        return name, None
    if name not in BASELINES:
        raise ValueError(f"unknown method {spec!r}; known methods: {known}")
    base = BASELINES[name]
    if not base.takes_n:
        if colon:
            raise ValueError(f"method {spec!r}: {name} takes no sample count (known: {known})")
        return name, None
    count = count.strip()
    if not colon or not count.isdigit() or int(count) < 1:
        raise ValueError(
            f"method {spec!r}: {name} needs a sample count >= 1, e.g. {name}:8 (known: {known})"
        )
    return name, int(count)


def run_baseline(
    method: str | tuple[str, int | None],
    lm: CausalLM,
    prompts: Sequence[Any],
    key=None,
    *,
    rm: RewardModel | None = None,
    **kwargs,
) -> list[DecodeResult]:
    """Run a baseline given as ``"bon:8"`` (or ``("bon", 8)``) with shared keyword settings.

    ``kwargs`` are passed on (``max_length``, ``sampling``, ``stop_strings``, ``eos_ids``,
    ``system``, ``batch_size``, ``answer_extractor``...); ``sampling`` is dropped for greedy,
    ``answer_extractor`` for methods other than ``sc``.
    """
    name, n = parse_method(method) if isinstance(method, str) else method
    base = BASELINES[name]
    args: list = [lm]
    if base.needs_rm:
        if rm is None:
            raise ValueError(f"method {name!r} needs a reward model: pass rm=")
        args.append(rm)
    args.append(prompts)
    if base.needs_key:
        if key is None:
            raise ValueError(f"method {name!r} samples: pass a jax.random key")
        args.append(key)
    kw = dict(kwargs)
    if name == "greedy":
        kw.pop("sampling", None)
    if name != "sc":
        kw.pop("answer_extractor", None)
    if base.takes_n:
        kw["n"] = n
    return base.fn(*args, **kw)
