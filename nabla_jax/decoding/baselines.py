"""Baselines on the same footing as the ∇-Reasoner decoder: greedy CoT, sampled CoT, Best-of-N
(reward-model ranked) and self-consistency (majority vote over extracted answers).

Every function takes a batch of prompts (user message strings or chat message lists), renders them
with the LM chat template (:func:`nabla_jax.text.templates.lm_prompt_ids`), and generates with the
batched :func:`nabla_jax.decoding.generate.rollout` — the ``n`` samples of a prompt are rows of the
same batches as every other prompt's samples. Results are :class:`~nabla_jax.decoding.nabla.
DecodeResult` objects, like the decoder's: ``text`` (trimmed before the first EOS / stop string),
``token_ids`` (the chosen sample's generated ids, EOS included), ``stats`` (the decoder's counters,
zero where a method has no such part, plus ``stop_reason``, ``method``, ``samples``, ``chosen``)
and ``trace`` (one dict per sample: ``sample``, ``text``, ``token_ids``, ``generated_tokens``,
``stop_reason``, and ``score`` for Best-of-N, ``answer`` for self-consistency).

Model calls (per prompt, counted as the decoder counts them,
docs/algorithm.md#counting-model-calls): one per generated token of every sample
(``rollout_calls``), one per reward-model scoring of a candidate (``score_calls``); ``model_calls``
is their sum.

Randomness (:mod:`nabla_jax.decoding.keys`, docs/algorithm.md#randomness): a prompt's keys derive
from ``key`` folded with ``crc32`` of the prompt's chat messages — the decoder's prompt id — then
with the decoder's rollout stream and the sample index ``i``: ``fold_in(fold_in(fold_in(key,
prompt_id), ROLLOUT), i)``. So a prompt's samples do not depend on its batch company, sample ``i``
of Best-of-N and of self-consistency are the same rollout for the same key, and sample 0 is
:func:`sampled_cot`'s response — which is also the ∇-Reasoner decoder's initial rollout under the
same key and rollout sampling settings (common random numbers across methods). Identical prompts in
one call get identical samples.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

from nabla_jax.decoding.pair import check_pair, check_policy
from nabla_jax.decoding.results import DecodeResult
from nabla_jax.decoding.samples import generate_samples, prompt_keys, sample_result
from nabla_jax.decoding.sampling import SamplingConfig
from nabla_jax.decoding.stopping import default_eos_ids
from nabla_jax.decoding.weighted import rm_flops, score_samples
from nabla_jax.models.model import CausalLM, RewardModel
from nabla_jax.models.partition import shard_model

__all__ = [
    "best_of_n",
    "greedy_cot",
    "majority_vote",
    "prompt_keys",
    "sampled_cot",
    "self_consistency",
]

GREEDY = SamplingConfig(temperature=0.0)


# --------------------------------------------------------------------------------------------
# Shared machinery
# --------------------------------------------------------------------------------------------


def _accepts_mesh(fn):
    """Add ``mesh=``: with a ``jax.sharding.Mesh`` the models' weights are split over its
    "model" axis (``nj.sharding.shard_model``) before ``fn`` runs; the results are the same."""

    @functools.wraps(fn)
    def wrapper(lm, *args, mesh=None, **kwargs):
        if mesh is not None:
            lm = shard_model(lm, mesh)
            args = tuple(shard_model(a, mesh) if isinstance(a, RewardModel) else a for a in args)
        return fn(lm, *args, **kwargs)

    return wrapper


def _check_common(lm, prompts, max_length: int, batch_size: int, n: int = 1) -> list:
    check_policy(lm, "the baseline")
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise TypeError("prompts must be a list of prompts (wrap one prompt in a list)")
    for name, v in (("max_length", max_length), ("batch_size", batch_size), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    return list(prompts)


# --------------------------------------------------------------------------------------------
# Greedy and sampled chain of thought
# --------------------------------------------------------------------------------------------


@_accepts_mesh
def greedy_cot(
    lm: CausalLM,
    prompts: Sequence[Any],
    *,
    max_length: int,
    stop_strings: Sequence[str] = (),
    eos_ids: Sequence[int] | None = None,
    system: str | None = None,
    batch_size: int = 8,
) -> list[DecodeResult]:
    """Greedy (temperature 0) chain of thought, one rollout per prompt.

    Args:
      lm: the ``CausalLM`` (with a chat-template tokenizer).
      prompts: user message strings or chat message lists.
      max_length: most generated tokens per response.
      stop_strings: strings that end a response (the text is trimmed before them).
      eos_ids: ids that end a response; None = the LM config's EOS ids plus the tokenizer's.
      system: optional system message.
      batch_size: rows per compiled rollout call.

    Returns:
      One ``DecodeResult`` per prompt, in input order; ``stats["model_calls"]`` = generated tokens.
    """
    prompts = _check_common(lm, prompts, max_length, batch_size)
    if not prompts:
        return []
    groups = generate_samples(
        lm,
        prompts,
        None,
        1,
        sampling=GREEDY,
        max_length=max_length,
        stop_strings=stop_strings,
        eos_ids=eos_ids,
        system=system,
        batch_size=batch_size,
    )
    return [sample_result(p, "greedy", g, 0) for p, g in zip(prompts, groups, strict=True)]


@_accepts_mesh
def sampled_cot(
    lm: CausalLM,
    prompts: Sequence[Any],
    key,
    *,
    sampling: SamplingConfig,
    max_length: int,
    stop_strings: Sequence[str] = (),
    eos_ids: Sequence[int] | None = None,
    system: str | None = None,
    batch_size: int = 8,
) -> list[DecodeResult]:
    """One sampled chain of thought per prompt (sample 0 of :func:`prompt_keys`).

    Same arguments as :func:`greedy_cot`, plus ``key`` (a ``jax.random`` key) and ``sampling``
    (a :class:`SamplingConfig`). Under the same key and ``sampling`` equal to the decoder's
    ``DecodeConfig.rollout``, the response is the ∇-Reasoner decoder's initial rollout.
    """
    prompts = _check_common(lm, prompts, max_length, batch_size)
    if not prompts:
        return []
    groups = generate_samples(
        lm,
        prompts,
        key,
        1,
        sampling=sampling,
        max_length=max_length,
        stop_strings=stop_strings,
        eos_ids=eos_ids,
        system=system,
        batch_size=batch_size,
    )
    return [sample_result(p, "cot", g, 0) for p, g in zip(prompts, groups, strict=True)]


# --------------------------------------------------------------------------------------------
# Best-of-N
# --------------------------------------------------------------------------------------------


@_accepts_mesh
def best_of_n(
    lm: CausalLM,
    rm: RewardModel,
    prompts: Sequence[Any],
    key,
    *,
    n: int,
    sampling: SamplingConfig,
    max_length: int,
    stop_strings: Sequence[str] = (),
    eos_ids: Sequence[int] | None = None,
    system: str | None = None,
    batch_size: int = 8,
    scorer: Callable[[list[list[int]]], Sequence[float]] | None = None,
    rm_vocab: str | None = None,
) -> list[DecodeResult]:
    """Best-of-N: ``n`` samples per prompt, each scored by the reward model; keep the argmax.

    Every candidate is scored as the decoder's acceptance test scores a response: the RM chat
    template's prefix ++ the response ids (a trailing EOS dropped) ++ the template's suffix
    (:func:`nabla_jax.text.templates.rm_prefix_suffix_ids`), so all candidates are framed
    identically. Ties go to the earliest sample.

    Args:
      lm, prompts, key, sampling, max_length, stop_strings, eos_ids, system, batch_size: as in
        :func:`sampled_cot`.
      rm: the ``RewardModel`` (its tokenizer's chat template, or the LM's when it has none).
      n: samples per prompt.
      scorer: optional replacement for the RM score: list of RM input id lists -> floats.
      rm_vocab: how the RM reads LM ids (``"shared"``, ``"by_string"`` or None: see
        :mod:`nabla_jax.decoding.pair`); the response ids are mapped to RM ids by string.

    Returns:
      One ``DecodeResult`` per prompt; ``stats``: ``generations = n``, ``score_calls = n``,
      ``rewarded_tokens`` = RM input tokens, ``model_calls`` = generated tokens + n; each
      trace entry has the sample's ``score``.
    """
    prompts = _check_common(lm, prompts, max_length, batch_size, n)
    rm_tok, vocabulary = check_pair(lm, rm, "Best-of-N", rm_vocab)
    if scorer is not None and not callable(scorer):
        raise TypeError("scorer must be callable: list of RM input id lists -> scores")
    if not prompts:
        return []
    groups = generate_samples(
        lm,
        prompts,
        key,
        n,
        sampling=sampling,
        max_length=max_length,
        stop_strings=stop_strings,
        eos_ids=eos_ids,
        system=system,
        batch_size=batch_size,
    )
    eos_ids = tuple(eos_ids) if eos_ids is not None else default_eos_ids(lm)
    framing = (rm_tok, vocabulary)
    scores, rm_tokens = score_samples(
        framing, rm, prompts, groups, eos_ids=eos_ids, system=system, scorer=scorer,
        batch_size=batch_size,
    )  # fmt: skip
    score_flops = (
        0 if scorer is not None else rm_flops(rm, framing, prompts, groups, eos_ids, system)
    )
    out = []
    for i, (p, group) in enumerate(zip(prompts, groups, strict=True)):
        sc = scores[i]
        chosen = int(np.argmax(sc))  # first index among ties
        extra = [{"score": float(v)} for v in sc]
        res = sample_result(p, f"bon:{n}", group, chosen, extra)
        res.stats["score_calls"] = n
        res.stats["rewarded_tokens"] = rm_tokens[i]
        res.stats["model_calls"] = res.stats["rollout_calls"] + n
        res.stats["flops"] += n * score_flops
        res.stats["score"] = float(sc[chosen])
        out.append(res)
    return out


# --------------------------------------------------------------------------------------------
# Self-consistency
# --------------------------------------------------------------------------------------------


def majority_vote(answers: Sequence[Hashable | None]) -> int:
    """Index of the sample that self-consistency keeps.

    The most frequent non-None answer wins; among answers tied on votes, the one that appears
    first wins; the returned index is that answer's first sample. None answers do not vote
    unless every answer is None (then sample 0).

    Args:
      answers: one extracted answer per sample (hashable, or None); at least one.

    Returns:
      The index of the chosen sample.
    """
    answers = list(answers)
    if not answers:
        raise ValueError("majority_vote needs at least one answer")
    counts: dict = {}
    first: dict = {}
    for i, a in enumerate(answers):
        if a is None:
            continue
        try:
            counts[a] = counts.get(a, 0) + 1
        except TypeError as e:
            raise TypeError(
                f"answer {a!r} of sample {i} is not hashable: the answer extractor must return "
                "hashable values (str, int, tuple...) or None"
            ) from e
        first.setdefault(a, i)
    if not counts:
        return 0
    best = max(counts.values())
    return min(first[a] for a, c in counts.items() if c == best)


@_accepts_mesh
def self_consistency(
    lm: CausalLM,
    prompts: Sequence[Any],
    key,
    *,
    n: int,
    sampling: SamplingConfig,
    max_length: int,
    answer_extractor: Callable[[str], Hashable | None],
    stop_strings: Sequence[str] = (),
    eos_ids: Sequence[int] | None = None,
    system: str | None = None,
    batch_size: int = 8,
) -> list[DecodeResult]:
    """Self-consistency: ``n`` samples per prompt and a majority vote over their answers.

    Args:
      lm, prompts, key, sampling, max_length, stop_strings, eos_ids, system, batch_size: as in
        :func:`sampled_cot`.
      n: samples per prompt.
      answer_extractor: ``text -> answer or None`` applied to each sample's (trimmed) text —
        the task's (``nabla_jax.tasks.extract_answer`` for the bundled arithmetic task,
        ``get_task(name).extract``). See :func:`majority_vote` for the vote.

    Returns:
      One ``DecodeResult`` per prompt: the text of the chosen sample (the first sample with the
      winning answer); ``stats["answer"]`` / ``stats["votes"]``; each trace entry has its
      ``answer``. ``model_calls`` = generated tokens (no reward model).
    """
    if not callable(answer_extractor):
        raise TypeError(
            "answer_extractor must be callable: text -> answer or None (the task's extractor, "
            "e.g. nabla_jax.tasks.extract_answer for the bundled arithmetic task)"
        )
    prompts = _check_common(lm, prompts, max_length, batch_size, n)
    if not prompts:
        return []
    groups = generate_samples(
        lm,
        prompts,
        key,
        n,
        sampling=sampling,
        max_length=max_length,
        stop_strings=stop_strings,
        eos_ids=eos_ids,
        system=system,
        batch_size=batch_size,
    )
    out = []
    for p, group in zip(prompts, groups, strict=True):
        answers = [answer_extractor(s.text) for s in group]
        chosen = majority_vote(answers)
        res = sample_result(p, f"sc:{n}", group, chosen, [{"answer": a} for a in answers])
        winner = answers[chosen]
        res.stats["answer"] = winner
        res.stats["votes"] = 0 if winner is None else sum(a == winner for a in answers)
        out.append(res)
    return out
