"""Sampled responses of prompts, the shared machinery of the baselines.

:func:`generate_samples` renders prompts with the LM chat template and generates ``n`` samples of
each, ``batch_size`` (prompt, sample) rows per call of one fixed-shape rollout program
(:func:`nabla_jax.decoding.generate.generate_padded`, ``max_length`` response slots, the prompt
width bucketed once per call). Sample ``i`` of a prompt is drawn with
``fold_in(fold_in(fold_in(key, prompt_id), ROLLOUT), i)`` (:func:`prompt_keys`): independent of
its company, and sample 0 is the ∇-Reasoner decoder's first rollout under the same key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from nabla_jax.decoding.flops import token_flops
from nabla_jax.decoding.generate import generate_padded
from nabla_jax.decoding.keys import check_key, prompt_id, rollout_keys
from nabla_jax.decoding.results import DecodeResult, empty_stats
from nabla_jax.decoding.sampling import SamplingConfig
from nabla_jax.decoding.stopping import STOP_EOS, STOP_REASONS, default_eos_ids, trim_text
from nabla_jax.runtime.buckets import bucket_length, pad_ids
from nabla_jax.runtime.profiling import device_get
from nabla_jax.text.templates import build_messages, lm_prompt_ids

__all__ = ["Sample", "generate_samples", "prompt_keys", "sample_result"]


@dataclasses.dataclass
class Sample:
    """One sampled response: its ids (EOS included), trimmed text, stop reason, calls, and the
    FLOPs of those calls at the rollout program's shape (:mod:`nabla_jax.decoding.flops`)."""

    tokens: list[int]
    text: str
    stop_reason: str
    calls: int
    flops: int = 0


def prompt_keys(key, prompt: Any, n: int, *, system: str | None = None) -> jax.Array:
    """The ``[n]`` rollout keys of a prompt's samples (independent of the batch it is in).

    ``fold_in(fold_in(fold_in(key, prompt_id), ROLLOUT), i)`` for ``i < n``, where ``prompt_id``
    is the ∇-Reasoner decoder's crc32 of the prompt's chat messages.
    """
    pid = np.full((n,), prompt_id(build_messages(prompt, system=system)), np.uint32)
    return rollout_keys(key, pid, np.arange(n, dtype=np.uint32))


def generate_samples(
    lm,
    prompts: list,
    key,
    n: int,
    *,
    sampling: SamplingConfig,
    max_length: int,
    stop_strings: Sequence[str],
    eos_ids: Sequence[int] | None,
    system: str | None,
    batch_size: int,
) -> list[list[Sample]]:
    """``n`` samples of every prompt, batched over (prompt, sample) rows in input order."""
    if not isinstance(sampling, SamplingConfig):
        raise TypeError(f"sampling must be a SamplingConfig, got {type(sampling).__name__}")
    stop_strings = tuple(stop_strings)
    if eos_ids is None:
        eos_ids = default_eos_ids(lm)
    greedy = sampling.greedy
    if not greedy and key is None:
        raise ValueError("sampling with temperature > 0 needs a key")
    if key is not None:
        check_key(key, "sampling")
    rows = []  # (prompt ids, key index)
    pids = []
    for row, p in enumerate(prompts):
        if not p or (isinstance(p, str) and not p.strip()):
            raise ValueError(f"prompt {row} is empty; give the text to decode")
        ids = lm_prompt_ids(lm.tokenizer, p, system=system)
        pids.append(prompt_id(build_messages(p, system=system)))
        rows += [(ids, len(rows) + i) for i in range(n)]
    all_keys = None
    if not greedy:  # every row's key in one compiled call (no per-row dispatches)
        prompt_of = np.repeat(np.asarray(pids, np.uint32), n)
        sample_of = np.tile(np.arange(n, dtype=np.uint32), len(prompts))
        all_keys = rollout_keys(key, prompt_of, sample_of)
    # One program for every chunk: batch_size rows (short chunks padded with idle rows of budget
    # 0), the prompt width bucketed once over all rows, max_length response slots.
    pad = lm.config.pad_token_id if lm.config.pad_token_id is not None else 0
    width = bucket_length(max(len(r[0]) for r in rows))
    stop_ids = [lm.tokenizer.encode(s, add_special_tokens=False) for s in stop_strings]
    per_token = token_flops(lm.config, width + max_length + 1)  # the cache the program reads
    samples: list[Sample] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        m = len(chunk)
        padded = chunk + [chunk[0]] * (batch_size - m)
        ids, mask = pad_ids([r[0] for r in padded], width, left=True, pad_id=pad)
        out = generate_padded(
            lm,
            ids,
            mask,
            None if greedy else all_keys[np.asarray([r[1] for r in padded])],
            max_new_tokens=np.asarray([max_length] * m + [0] * (batch_size - m), np.int32),
            sampling=sampling,
            eos_ids=eos_ids,
            stop_ids=stop_ids,
            buffer_len=max_length,
            return_logits=False,
            pad_id=pad,
        )
        tokens, lengths, codes = device_get((out.tokens, out.lengths, out.stop))
        for j in range(m):
            toks = tokens[j, : int(lengths[j])].tolist()
            body = toks[:-1] if codes[j] == STOP_EOS else toks
            text, cut = trim_text(lm.tokenizer.decode(body), stop_strings)
            reason = "stop_string" if cut else STOP_REASONS[int(codes[j])]
            flops = len(toks) * per_token
            samples.append(Sample(toks, text, reason, calls=len(toks), flops=flops))
    return [samples[i * n : (i + 1) * n] for i in range(len(prompts))]


def sample_result(
    prompt, method: str, samples: list[Sample], chosen: int, extra=None
) -> DecodeResult:
    stats = empty_stats()
    stats["generations"] = len(samples)
    for s in samples:
        stats["generated_tokens"] += len(s.tokens)
        stats["rollout_calls"] += s.calls
    trace = []
    for i, s in enumerate(samples):
        event = {
            "sample": i,
            "text": s.text,
            "token_ids": list(s.tokens),
            "generated_tokens": len(s.tokens),
            "stop_reason": s.stop_reason,
        }
        if extra is not None:
            event.update(extra[i])
        trace.append(event)
    best = samples[chosen]
    stats["stop_reason"] = best.stop_reason
    stats["method"] = method
    stats["samples"] = len(samples)
    stats["chosen"] = chosen
    stats["model_calls"] = stats["rollout_calls"]
    stats["flops"] = sum(s.flops for s in samples)
    return DecodeResult(prompt, best.text, list(best.tokens), stats, trace)
