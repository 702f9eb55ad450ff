"""Weighted Best-of-N: the reward summed over each distinct answer of ``n`` samples.

The ``n`` samples of a prompt are Best-of-N's (:func:`nabla_jax.decoding.samples.
generate_samples`: sample ``i`` is rollout ``i``, the ∇-Reasoner decoder's generation ``i``
under the same key), each scored as Best-of-N scores it (:func:`score_samples`: the RM chat
template around the response, or an exact acceptance scorer). The task's answer extractor
(passed in, like self-consistency's) groups the samples; the answer whose samples' rewards sum
highest wins (:func:`weighted_vote`), and the result is its best-scored sample.

Model calls per prompt: one per generated token of every sample, one per RM scoring (``n``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

from nabla_jax.decoding.flops import sequence_flops
from nabla_jax.decoding.pair import check_pair
from nabla_jax.decoding.results import DecodeResult
from nabla_jax.decoding.samples import Sample, generate_samples, sample_result
from nabla_jax.decoding.sampling import SamplingConfig
from nabla_jax.decoding.scoring import Scorer, rm_scores
from nabla_jax.decoding.stopping import default_eos_ids
from nabla_jax.functional.step_reward import rm_frame
from nabla_jax.models.model import CausalLM, RewardModel
from nabla_jax.runtime.buckets import bucket_length
from nabla_jax.text.templates import rm_prefix_suffix_ids

__all__ = [
    "check_prompts",
    "rm_flops",
    "rm_inputs",
    "score_samples",
    "weighted_best_of_n",
    "weighted_vote",
]


def check_prompts(prompts, **counts) -> list:
    """``prompts`` as a list (a bare string is an error) and every named count an int >= 1."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise TypeError("prompts must be a list of prompts (wrap one prompt in a list)")
    for name, v in counts.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    return list(prompts)


def rm_inputs(rm, framing, prompts: list, groups: list[list[Sample]], eos_ids,
              system) -> tuple[list, list]:  # fmt: skip
    """The RM input id lists of every sample, prompt by prompt: ``RM prefix ++ response (a
    trailing EOS dropped, its LM ids mapped to RM ids) ++ RM suffix`` (the frame
    :func:`~nabla_jax.functional.step_reward.rm_frame` gives ``rm``), and where each response
    begins; ``framing`` is :func:`~nabla_jax.decoding.pair.check_pair`'s ``(rm_tokenizer,
    vocabulary)``."""
    rm_tok, vocabulary = framing
    eos = set(eos_ids)
    seqs, starts = [], []
    for p, group in zip(prompts, groups, strict=True):
        prefix, suffix = rm_frame(rm, *rm_prefix_suffix_ids(rm_tok, p, system=system))
        for s in group:
            body = s.tokens[:-1] if s.tokens and s.tokens[-1] in eos else s.tokens
            seqs.append(prefix + vocabulary.rm_id_list(body) + suffix)
            starts.append(len(prefix))
    return seqs, starts


def rm_flops(rm, framing, prompts, groups, eos_ids, system) -> int:
    """FLOPs of one RM scoring in :func:`score_samples`'s program (its input width is
    ``bucket_length`` of the longest RM input)."""
    seqs, _ = rm_inputs(rm, framing, prompts, groups, eos_ids, system)
    return sequence_flops(rm.config, bucket_length(max(max(len(s) for s in seqs), 1)))


def score_samples(
    framing, rm, prompts: list, groups: list[list[Sample]], *, eos_ids, system, scorer,
    batch_size: int,
):  # fmt: skip
    """Scores ``[len(prompts), n]`` (float64) and RM input tokens ``[len(prompts)]`` of the
    samples, each framed ``RM prefix ++ response (a trailing EOS dropped) ++ RM suffix``; a
    ``scorer`` (RM input id lists -> floats) replaces the reward model. The RM input width of
    the scoring program is ``bucket_length`` of the longest input."""
    seqs, starts = rm_inputs(rm, framing, prompts, groups, eos_ids, system)
    if scorer is not None:
        scores = np.asarray(scorer(seqs), np.float64).reshape(-1)
        if scores.shape != (len(seqs),):
            raise ValueError(f"scorer returned {scores.shape[0]} scores for {len(seqs)} inputs")
    else:
        scores = rm_scores(rm, seqs, batch_size=2 * batch_size, starts=starts)
    n = len(groups[0]) if groups else 0
    tokens = [sum(len(s) for s in seqs[i * n : (i + 1) * n]) for i in range(len(prompts))]
    return scores.reshape(len(prompts), n), tokens


def weighted_vote(answers: Sequence[Hashable | None], rewards: Sequence[float]) -> int:
    """Index of the sample weighted Best-of-N keeps.

    Each non-None answer totals the rewards of its samples; the highest total wins (ties: the
    answer seen first), and the index returned is that answer's highest-scored sample (ties:
    the earliest). None answers do not vote unless every answer is None; then the best-scored
    sample wins (plain Best-of-N).

    Args:
      answers: one extracted answer per sample (hashable, or None); at least one.
      rewards: one reward per sample.
    """
    answers, rewards = list(answers), [float(r) for r in rewards]
    if not answers or len(answers) != len(rewards):
        raise ValueError(
            f"weighted_vote needs one reward per answer, got {len(answers)} answers and "
            f"{len(rewards)} rewards"
        )
    totals: dict = {}
    for i, a in enumerate(answers):
        if a is None:
            continue
        try:
            totals[a] = totals.get(a, 0.0) + rewards[i]
        except TypeError as e:
            raise TypeError(
                f"answer {a!r} of sample {i} is not hashable: the answer extractor must return "
                "hashable values (str, int, tuple...) or None"
            ) from e
    members = list(range(len(answers)))
    if totals:
        best = max(totals.values())
        winner = next(a for a in totals if totals[a] == best)  # insertion order = first seen
        members = [i for i, a in enumerate(answers) if a is not None and a == winner]
    return max(members, key=lambda i: (rewards[i], -i))


def weighted_best_of_n(
    lm: CausalLM,
    rm: RewardModel,
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
    scorer: Scorer | None = None,
    rm_vocab: str | None = None,
) -> list[DecodeResult]:
    """Weighted Best-of-N: ``n`` samples per prompt, the answer with the largest summed reward.

    Args:
      lm, rm, prompts, key, n, sampling: as in :func:`nabla_jax.decoding.baselines.best_of_n`
        (the same samples and scores).
      max_length, stop_strings, eos_ids, system, batch_size, scorer, rm_vocab: as there.
      answer_extractor: ``text -> answer or None``, the task's (as for self-consistency).

    Returns:
      One ``DecodeResult`` per prompt: the best-scored sample of the winning answer;
      ``stats``: ``answer``, ``weight`` (its summed reward), ``score`` (the chosen sample's),
      ``score_calls = n``, ``rewarded_tokens``, ``model_calls`` = generated tokens + n; each
      trace entry has its ``score`` and ``answer``.
    """
    if not callable(answer_extractor):
        raise TypeError(
            "answer_extractor must be callable: text -> answer or None (the task's extractor, "
            "e.g. nabla_jax.tasks.extract_answer for the bundled arithmetic task)"
        )
    if scorer is not None and not callable(scorer):
        raise TypeError("scorer must be callable: list of RM input id lists -> scores")
    prompts = check_prompts(prompts, max_length=max_length, batch_size=batch_size, n=n)
    framing = check_pair(lm, rm, "weighted Best-of-N", rm_vocab)
    if not prompts:
        return []
    eos_ids = tuple(eos_ids) if eos_ids is not None else default_eos_ids(lm)
    groups = generate_samples(
        lm, prompts, key, n, sampling=sampling, max_length=max_length,
        stop_strings=stop_strings, eos_ids=eos_ids, system=system, batch_size=batch_size,
    )  # fmt: skip
    scores, rm_tokens = score_samples(
        framing, rm, prompts, groups, eos_ids=eos_ids, system=system, scorer=scorer,
        batch_size=batch_size,
    )  # fmt: skip
    score_flops = (
        0 if scorer is not None else rm_flops(rm, framing, prompts, groups, eos_ids, system)
    )
    out = []
    for p, group, sc, tokens in zip(prompts, groups, scores, rm_tokens, strict=True):
        answers = [answer_extractor(s.text) for s in group]
        chosen = weighted_vote(answers, sc)
        extra = [{"score": float(v), "answer": a} for v, a in zip(sc, answers, strict=True)]
        res = sample_result(p, f"wbon:{n}", group, chosen, extra)
        winner = answers[chosen]
        res.stats["answer"] = winner
        res.stats["weight"] = float(
            sum(v for v, a in zip(sc, answers, strict=True) if winner is not None and a == winner)
            if winner is not None
            else sc[chosen]
        )
        res.stats["score"] = float(sc[chosen])
        res.stats["score_calls"] = n
        res.stats["rewarded_tokens"] = tokens
        res.stats["model_calls"] = res.stats["rollout_calls"] + n
        res.stats["flops"] += n * score_flops
        out.append(res)
    return out
