"""The method registry: every decoding method by name, baselines and ∇-Reasoner variants alike.

Names: ``greedy``, ``cot``, ``bon:N``, ``sc:N`` (the baselines) and ``nabla`` with its ablations
(``nabla-norej``, ``nabla-nodto``, ``nabla-nocache``). :func:`parse_method` validates one spec,
:func:`parse_methods` a comma-separated list; :func:`method_runner` builds ``run(prompts, key)``
for a method from shared settings — the evaluation and the CLI both go through it. What a task
contributes (the answer self-consistency votes on, an exact acceptance scorer) is passed in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from nabla_jax.decoding.baselines import best_of_n, greedy_cot, sampled_cot, self_consistency
from nabla_jax.decoding.config import DecodeConfig
from nabla_jax.decoding.nabla import NablaDecoder
from nabla_jax.decoding.results import DecodeResult
from nabla_jax.decoding.sampling import SamplingConfig
from nabla_jax.decoding.scoring import Scorer
from nabla_jax.models.model import CausalLM, RewardModel

__all__ = [
    "BASELINES",
    "METHODS",
    "NABLA_VARIANTS",
    "OPTIONS",
    "Baseline",
    "check_baseline_sampling",
    "method_runner",
    "parse_method",
    "parse_methods",
    "run_baseline",
    "with_overrides",
]


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
      options: the shared optional settings (:data:`OPTIONS`) the function takes; the others
        are not passed to it.
    """

    name: str
    fn: Callable[..., list[DecodeResult]]
    takes_n: bool
    needs_key: bool
    needs_rm: bool
    description: str
    options: frozenset[str] = frozenset()


#: Optional settings a comparison shares; each baseline takes the ones it names.
OPTIONS = frozenset({"sampling", "answer_extractor", "scorer", "rm_vocab"})


BASELINES: Mapping[str, Baseline] = {
    b.name: b
    for b in (
        Baseline("greedy", greedy_cot, False, False, False, "greedy chain of thought"),
        Baseline(
            "cot",
            sampled_cot,
            False,
            True,
            False,
            "one sampled chain of thought",
            frozenset({"sampling"}),
        ),
        Baseline(
            "bon",
            best_of_n,
            True,
            True,
            True,
            "Best-of-N ranked by the reward model",
            frozenset({"sampling", "scorer", "rm_vocab"}),
        ),
        Baseline(
            "sc",
            self_consistency,
            True,
            True,
            False,
            "self-consistency majority vote",
            frozenset({"sampling", "answer_extractor"}),
        ),
    )
}

#: ∇-Reasoner variants: ``DecodeConfig`` overrides applied to the run's config (a ``dto`` entry
#: overrides fields of its ``DTOConfig``).
NABLA_VARIANTS: Mapping[str, Mapping[str, Any]] = {
    "nabla": {},
    "nabla-norej": {"rejection_sampling": False},
    "nabla-nodto": {"use_dto": False},
    "nabla-nocache": {"dto": {"grad_caching": False}},
}

#: Every method name, as a spec would spell it (``:N`` for a sample count).
METHODS: tuple[str, ...] = tuple(
    f"{b.name}:N" if b.takes_n else b.name for b in BASELINES.values()
) + tuple(NABLA_VARIANTS)


def parse_method(spec: str, *, extra: Sequence[str] = ()) -> tuple[str, int | None]:
    """``"bon:8"`` -> ``("bon", 8)``; ``"greedy"`` / ``"nabla"`` -> ``(name, None)``.

    Args:
      spec: a method name, with ``:N`` (N >= 1) for the methods that take a sample count.
      extra: further accepted names without a count.

    Returns:
      ``(name, n)``; ``n`` is None for methods without a sample count.

    Raises:
      ValueError: unknown method, a missing / malformed count, or a count given to a method that
        takes none — the message lists the known methods.
    """
    if not isinstance(spec, str):
        raise TypeError(f"method must be a string like 'bon:8', got {type(spec).__name__}")
    plain = tuple(NABLA_VARIANTS) + tuple(e for e in extra if e not in NABLA_VARIANTS)
    known = ", ".join([m for m in METHODS if m not in NABLA_VARIANTS] + list(plain))
    name, colon, count = spec.strip().partition(":")
    name = name.strip()
    if name in plain and name not in BASELINES:
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


def parse_methods(spec: str | Sequence[str]) -> list[str]:
    """``"greedy,bon:8,sc:8,nabla"`` → validated method specs, in order (each once)."""
    names = [m.strip() for m in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [m for m in names if m]
    if not names:
        raise ValueError("no methods given; e.g. --methods greedy,bon:8,sc:8,nabla")
    dup = sorted({m for m in names if names.count(m) > 1})
    if dup:
        raise ValueError(f"method(s) {dup} given twice; list each method once")
    for m in names:
        parse_method(m)
    return names


def check_baseline_sampling(methods: Sequence[str], sampling: SamplingConfig) -> None:
    """Sampled baselines (``cot``, ``bon:N``, ``sc:N``) need a temperature above 0: greedy
    "samples" would all be the same answer. Raises ``ValueError`` naming the methods."""
    sampled = [m for m in methods if m == "cot" or m.partition(":")[0] in ("bon", "sc")]
    if sampled and sampling.temperature == 0:
        raise ValueError(
            f"methods {sampled} sample their answers, but the baseline sampling is greedy "
            "(temperature 0), so every sample would be the same; set a temperature > 0 (the run "
            "config's `baselines: {temperature: 0.6, top_p: 0.95}`)"
        )


def with_overrides(cfg: DecodeConfig, overrides: Mapping[str, Any]) -> DecodeConfig:
    """``cfg`` with ``overrides`` replaced (a ``dto`` mapping replaces fields of ``cfg.dto``)."""
    kw = dict(overrides)
    if "dto" in kw:
        kw["dto"] = dataclasses.replace(cfg.dto, **kw["dto"])
    return dataclasses.replace(cfg, **kw)


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
    ``system``, ``batch_size``, ``answer_extractor``, ``scorer``...), except the shared options
    (:data:`OPTIONS`) the baseline does not take (:attr:`Baseline.options`).
    """
    name, n = parse_method(method) if isinstance(method, str) else method
    if name not in BASELINES:
        raise ValueError(f"method {name!r} is not a baseline; use method_runner for it")
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
    kw = {k: v for k, v in kwargs.items() if k not in OPTIONS or k in base.options}
    if base.takes_n:
        kw["n"] = n
    return base.fn(*args, **kw)


def method_runner(
    method: str,
    lm: CausalLM,
    rm: RewardModel,
    cfg: DecodeConfig,
    sampling: SamplingConfig | None = None,
    *,
    answer_extractor: Callable[[str], Hashable | None] | None = None,
    scorer: Scorer | None = None,
    rm_vocab: str | None = None,
) -> Callable[[Sequence[Any], Any], list[DecodeResult]]:
    """``run(prompts, key) -> list[DecodeResult]`` for one method, sharing ``cfg``'s settings
    (max_length, stop strings, system message) so that comparisons are fair.

    Args:
      method: a spec (see :func:`parse_method`).
      cfg: the ∇-Reasoner config (a variant applies its overrides to it).
      sampling: how the sampled baselines draw (default ``cfg.rollout``).
      answer_extractor: the task's ``text -> answer`` that self-consistency votes on.
      scorer: an exact acceptance scorer (RM input id lists -> floats) replacing the reward
        model in ∇-Reasoner's acceptance test and in Best-of-N's ranking; None = the RM.
      rm_vocab: how the RM reads LM ids (:mod:`nabla_jax.decoding.pair`); None = the default.
    """
    name, n = parse_method(method)
    if name in NABLA_VARIANTS:
        variant = with_overrides(cfg, NABLA_VARIANTS[name])
        decoder = NablaDecoder(lm, rm, variant, scorer=scorer, rm_vocab=rm_vocab)
        return lambda prompts, key: decoder.generate(prompts, key)
    sampling = cfg.rollout if sampling is None else sampling
    check_baseline_sampling([method], sampling)
    common = dict(
        max_length=cfg.max_length, stop_strings=cfg.stop_strings, system=cfg.system,
        sampling=sampling,
    )  # fmt: skip
    if answer_extractor is not None:
        common["answer_extractor"] = answer_extractor
    if scorer is not None:
        common["scorer"] = scorer
    if rm_vocab is not None:
        common["rm_vocab"] = rm_vocab
    return lambda prompts, key: run_baseline((name, n), lm, prompts, key, rm=rm, **common)
