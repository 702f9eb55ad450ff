"""The method registry: every decoding method by name, baselines and ∇-Reasoner variants alike.

Names: ``greedy``, ``cot``, ``bon:N``, ``sc:N``, ``wbon:N`` (weighted Best-of-N) and the tree
searches ``beam:NxM`` (N beams, M expansions each) and ``mcts:BxD`` (B children per expansion,
depth D) — the baselines — and ``nabla`` with its ablations (``nabla-norej``, ``nabla-nodto``,
``nabla-nocache``). :func:`parse_method` validates one spec,
:func:`parse_methods` a comma-separated list; :func:`method_runner` builds ``run(prompts, key)``
for a method from shared settings — the evaluation and the CLI both go through it. What a task
contributes (the answer self-consistency votes on, an exact acceptance scorer) is passed in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from nabla_jax.decoding.baselines import best_of_n, greedy_cot, sampled_cot, self_consistency
from nabla_jax.decoding.beam import beam_search
from nabla_jax.decoding.config import DecodeConfig
from nabla_jax.decoding.mcts_search import mcts
from nabla_jax.decoding.nabla import NablaDecoder
from nabla_jax.decoding.results import DecodeResult
from nabla_jax.decoding.sampling import SamplingConfig
from nabla_jax.decoding.scoring import Scorer
from nabla_jax.decoding.search_options import SearchOptions
from nabla_jax.decoding.weighted import weighted_best_of_n
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
      name: the method name (``greedy``, ``cot``, ``bon``, ``sc``, ``wbon``, ``beam``, ``mcts``).
      fn: the function.
      takes_n: the method takes a count (``bon:8``, ``beam:4x4``); required then.
      needs_key: the function takes a PRNG key.
      needs_rm: the function takes a reward model.
      description: one line.
      options: the shared optional settings (:data:`OPTIONS`) the function takes; the others
        are not passed to it.
      counts: the keyword arguments the spec's counts fill (``("n",)`` for ``bon:N``,
        ``("beams", "expansions")`` for ``beam:NxM``); default ``("n",)`` when ``takes_n``.
    """

    name: str
    fn: Callable[..., list[DecodeResult]]
    takes_n: bool
    needs_key: bool
    needs_rm: bool
    description: str
    options: frozenset[str] = frozenset()
    counts: tuple[str, ...] = ()

    @property
    def count_names(self) -> tuple[str, ...]:
        """The keyword arguments the spec's counts fill (empty without a count)."""
        return self.counts or (("n",) if self.takes_n else ())

    @property
    def spec(self) -> str:
        """The method as a spec spells it: ``bon:N``, ``beam:NxM``, ``greedy``."""
        letters = ("N", "M") if self.name != "mcts" else ("B", "D")
        return (
            f"{self.name}:{'x'.join(letters[: len(self.count_names)])}"
            if self.takes_n
            else (self.name)
        )


#: Optional settings a comparison shares; each baseline takes the ones it names.
OPTIONS = frozenset({"sampling", "answer_extractor", "scorer", "rm_vocab", "step_delimiter"})

_SEARCH = frozenset({"sampling", "scorer", "rm_vocab", "step_delimiter"})


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
        Baseline(
            "wbon",
            weighted_best_of_n,
            True,
            True,
            True,
            "weighted Best-of-N: the answer with the largest summed reward",
            frozenset({"sampling", "answer_extractor", "scorer", "rm_vocab"}),
        ),
        Baseline(
            "beam",
            beam_search,
            True,
            True,
            True,
            "step-level beam search: N beams, M expansions each, scored at each step end",
            _SEARCH,
            ("beams", "expansions"),
        ),
        Baseline(
            "mcts",
            mcts,
            True,
            True,
            True,
            "step-level MCTS: B children per expansion, depth D, UCT, rollout values",
            _SEARCH,
            ("branch", "max_depth"),
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
METHODS: tuple[str, ...] = tuple(b.spec for b in BASELINES.values()) + tuple(NABLA_VARIANTS)


def parse_method(spec: str, *, extra: Sequence[str] = ()) -> tuple[str, Any]:
    """``"bon:8"`` -> ``("bon", 8)``; ``"beam:4x4"`` -> ``("beam", (4, 4))``; ``"greedy"`` /
    ``"nabla"`` -> ``(name, None)``.

    Args:
      spec: a method name, with ``:N`` (N >= 1) for the methods that take a sample count and
        ``:NxM`` (both >= 1) for the tree searches (``beam:NxM``, ``mcts:BxD``).
      extra: further accepted names without a count.

    Returns:
      ``(name, count)``: an int for ``:N``, a pair of ints for ``:NxM``, None for methods
      without a count.

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
    parts = [c.strip() for c in count.split("x")] if colon else []
    wanted = len(base.count_names)
    if len(parts) != wanted or not all(c.isdigit() and int(c) >= 1 for c in parts):
        what = (
            "a sample count >= 1"
            if wanted == 1
            else (f"{wanted} counts >= 1 ({' x '.join(base.count_names)})")
        )
        example = f"{name}:8" if wanted == 1 else f"{name}:{'x'.join(['4'] * wanted)}"
        raise ValueError(f"method {spec!r}: {name} needs {what}, e.g. {example} (known: {known})")
    counts = tuple(int(c) for c in parts)
    return name, counts[0] if wanted == 1 else counts


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


def _samples(method: str) -> bool:
    """Whether a method's answers are drawn (several draws of one distribution)."""
    if method == "cot":
        return True
    name, _, count = method.partition(":")
    if name in ("bon", "sc", "wbon"):
        return True
    if name in ("beam", "mcts") and count:  # several expansions of one node would be equal
        parts = count.split("x")
        width = parts[1] if name == "beam" and len(parts) == 2 else parts[0]
        return width.strip().isdigit() and int(width) > 1
    return False


def check_baseline_sampling(methods: Sequence[str], sampling: SamplingConfig) -> None:
    """Sampled baselines (``cot``, ``bon:N``, ``sc:N``, ``wbon:N``, and ``beam:NxM`` / ``mcts:BxD``
    with more than one expansion per node) need a temperature above 0: greedy "samples" would
    all be the same answer. Raises ``ValueError`` naming the methods."""
    sampled = [m for m in methods if _samples(m)]
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
    method: str | tuple[str, Any],
    lm: CausalLM,
    prompts: Sequence[Any],
    key=None,
    *,
    rm: RewardModel | None = None,
    **kwargs,
) -> list[DecodeResult]:
    """Run a baseline given as ``"bon:8"`` (or ``("bon", 8)``, ``("beam", (4, 4))``) with shared
    keyword settings.

    ``kwargs`` are passed on (``max_length``, ``sampling``, ``stop_strings``, ``eos_ids``,
    ``system``, ``batch_size``, ``answer_extractor``, ``scorer``, ``step_delimiter``...), except
    the shared options (:data:`OPTIONS`) the baseline does not take (:attr:`Baseline.options`).
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
        counts = n if isinstance(n, tuple) else (n,)
        if len(counts) != len(base.count_names):
            raise ValueError(f"method {name!r} takes counts {base.count_names}, got {n!r}")
        kw.update(zip(base.count_names, counts, strict=True))
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
    step_delimiter: str | None = None,
    next_token_oracle: Callable[[Sequence[int], Sequence[int]], int] | None = None,
    search: SearchOptions | None = None,
) -> Callable[[Sequence[Any], Any], list[DecodeResult]]:
    """``run(prompts, key) -> list[DecodeResult]`` for one method, sharing ``cfg``'s settings
    (max_length, stop strings, system message) so that comparisons are fair.

    Args:
      method: a spec (see :func:`parse_method`).
      cfg: the ∇-Reasoner config (a variant applies its overrides to it).
      sampling: how the sampled baselines draw (default ``cfg.rollout``).
      answer_extractor: the task's ``text -> answer`` that self-consistency and weighted
        Best-of-N vote on.
      scorer: an exact acceptance scorer (RM input id lists -> floats) replacing the reward
        model in ∇-Reasoner's acceptance test, in Best-of-N's ranking and in the tree searches'
        values; None = the RM.
      rm_vocab: how the RM reads LM ids (:mod:`nabla_jax.decoding.pair`); None = the default.
      step_delimiter: the task's step delimiter of the tree searches (None = their default,
        ``"\\n"``: one line per step).
      next_token_oracle: for the ∇ variants: names the right next token of a response
        prefix, so the trace records its probability before and after DTO.
      search: the tree searches' settings beyond their counts (simulations, UCT constant,
        answer and value of ``mcts``; ``beam``'s depth limit); None = the functions' defaults.
    """
    name, n = parse_method(method)
    if search is not None and not isinstance(search, SearchOptions):
        raise TypeError(f"search must be a SearchOptions, got {type(search).__name__}")
    if name in NABLA_VARIANTS:
        variant = with_overrides(cfg, NABLA_VARIANTS[name])
        decoder = NablaDecoder(lm, rm, variant, scorer=scorer, rm_vocab=rm_vocab,
                               next_token_oracle=next_token_oracle)  # fmt: skip
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
    if step_delimiter is not None:
        common["step_delimiter"] = step_delimiter
    if search is not None:
        common.update(search.keywords(name))
    return lambda prompts, key: run_baseline((name, n), lm, prompts, key, rm=rm, **common)
