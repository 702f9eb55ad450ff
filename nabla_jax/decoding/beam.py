"""Step-level beam search (``beam:NxM``): ``N`` beams kept, ``M`` sampled expansions per beam.

Per prompt the search keeps ``N`` partial responses (beams). Each depth, every unfinished beam
is continued ``M`` times by one step (:mod:`nabla_jax.decoding.search_rows`: up to a token that
contains the step delimiter, an EOS, a stop sequence or ``max_length``), each candidate is
scored by the reward model read at the step's end (the partial response framed by the RM
template, :func:`~nabla_jax.decoding.scoring.score_responses`, or an acceptance scorer), and
the ``N`` best candidates (a finished beam competes with its kept score) become the beams. The
search ends when every beam has ended or after ``max_depth`` steps; the answer is the
best-scored beam.

Device layout: rows = ``G`` prompts × ``N`` beams × ``M`` expansions (row ``(g·N + n)·M + m``),
``max_length`` response slots, all in one compiled program per bucket whose depth loop is a
``lax.while_loop``; a candidate that survives is copied — tokens and key/value cache rows — into
its new beam's ``M`` rows, so children continue from their parent's cache without recomputing
the prefix. Only beam 0 is live at depth 0 (the ``N`` beams start equal). Expansion ``m`` of beam
``n`` at depth ``d`` draws with the key ``SEARCH`` counter ``(d·N + n)·M + m``.

Model calls per prompt: one per generated token forwarded (every candidate's step), one per RM
scoring of a candidate; ``beam:1x1`` with greedy expansion is greedy CoT with a score per step.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nabla_jax.decoding.buffers import KVState, empty_responses, prefill_prompts
from nabla_jax.decoding.continuation import (
    TRACE_COUNTS,
    PromptCache,
    Sampler,
    Span,
    continue_responses,
)
from nabla_jax.decoding.flops import call_flops
from nabla_jax.decoding.keys import SEARCH, stream_keys
from nabla_jax.decoding.pair import check_pair
from nabla_jax.decoding.results import DecodeResult, empty_stats, response_text
from nabla_jax.decoding.sampling import SamplingConfig, SamplingParams, SamplingProgram
from nabla_jax.decoding.scoring import Scorer, rm_input_length, score_responses
from nabla_jax.decoding.search_rows import (
    check_delimiter,
    ended,
    prompt_groups,
    step_tables,
    step_token_ids,
    take_rows,
    typed_key,
)
from nabla_jax.decoding.stopping import default_eos_ids, stop_tables
from nabla_jax.decoding.weighted import check_prompts
from nabla_jax.runtime.profiling import device_get

__all__ = ["BeamOut", "beam_search", "beam_program"]


class BeamOut(NamedTuple):
    """What :func:`beam_program` returns per prompt ``[G, N, ...]`` / ``[G]``.

    Attributes:
      tokens: ``[G, N, L]`` the final beams; length ``[G, N]``; score ``[G, N]`` (-inf: never
        live); ended ``[G, N]`` the beam's response is over (not cut by ``max_depth``).
      rollout_calls, score_calls, rm_tokens, depth (steps taken): ``[G]`` int32.
    """

    tokens: jax.Array
    length: jax.Array
    score: jax.Array
    ended: jax.Array
    rollout_calls: jax.Array
    score_calls: jax.Array
    rm_tokens: jax.Array
    depth: jax.Array


class _Beams(NamedTuple):
    depth: jax.Array
    tokens: jax.Array  # [R, L]
    length: jax.Array  # [R]
    stop: jax.Array  # [R]
    kv: KVState
    score: jax.Array  # [G, N]
    done: jax.Array  # [G, N] ended or cut
    over: jax.Array  # [G, N] ended
    calls: jax.Array  # [G, 4] rollout calls, score calls, rm tokens, steps taken


@functools.partial(
    jax.jit, static_argnames=("beams", "expand", "length", "prog", "scorer", "pad_id")
)
def beam_program(
    lm, rm, group, key, params, tables, steps, max_depth, rm_ids=None, *, beams: int,
    expand: int, length: int, prog: SamplingProgram, scorer: Scorer | None = None,
    pad_id: int = 0,
) -> BeamOut:  # fmt: skip
    """Beam search of one :class:`~nabla_jax.decoding.search_rows.SearchGroup` (traceable).

    ``tables``: the real EOS ids and stop sequences; ``steps``: the rollout tables (EOS ids,
    step-ending tokens, stop sequences); ``max_depth``: run-time int32; ``rm_ids [V_lm]``: the
    RM id of each LM id (None: the RM reads LM ids).
    """
    TRACE_COUNTS["beam"] += 1
    g, p = group.lm_ids.shape
    nm = beams * expand
    r = g * nm
    kv, first_logits, first_hidden = prefill_prompts(
        lm, group.lm_ids, group.lm_mask, p + length + 1
    )
    of_prompt = jnp.repeat(jnp.arange(g), nm)
    kv, first_logits, first_hidden = take_rows((kv, first_logits, first_hidden), of_prompt)
    prompt_len = jnp.sum(group.lm_mask, axis=-1)[of_prompt]
    frame = take_rows(group.frame, of_prompt)
    base = group.base_keys(key)[of_prompt]
    beam_of = (jnp.arange(r) // expand) % beams
    child_of = jnp.arange(r) % expand
    live0 = (jnp.arange(beams)[None, :] == 0) & group.valid[:, None]
    init = _Beams(
        depth=jnp.int32(0),
        tokens=jnp.full((r, length), pad_id, jnp.int32),
        length=jnp.zeros((r,), jnp.int32),
        stop=jnp.zeros((r,), jnp.int32),
        kv=kv,
        score=jnp.where(live0, 0.0, -jnp.inf).astype(jnp.float32),
        done=~live0,
        over=jnp.zeros((g, beams), bool),
        calls=jnp.zeros((g, 4), jnp.int32),
    )

    def body(s: _Beams) -> _Beams:
        live = jnp.isfinite(s.score) & ~s.done  # [G, N]
        active = live.reshape(-1)[jnp.arange(r) // expand]
        keys = stream_keys(base, SEARCH, s.depth * nm + beam_of * expand + child_of)
        resp = empty_responses(r, length, pad_id=pad_id)._replace(
            tokens=s.tokens, length=s.length, stop=s.stop
        )
        resp, kv, calls = continue_responses(
            lm,
            prompt=PromptCache(s.kv, p, prompt_len, first_logits, first_hidden),
            span=Span(resp, s.length, jnp.full((r,), length, jnp.int32), active, keys),
            sampler=Sampler(params, prog, steps, pad_id),
        )
        new, _, _ = score_responses(
            rm,
            frame,
            resp.tokens,
            resp.length,
            tables,
            scorer=scorer,
            wanted=active,
            rm_ids=rm_ids,
        )
        rm_tok = jnp.where(active, rm_input_length(frame, resp.tokens, resp.length, tables), 0)
        keep = (jnp.isfinite(s.score) & s.done).reshape(-1)[jnp.arange(r) // expand]
        keep = keep & (child_of == 0)  # a finished beam competes once, with its kept score
        old = jnp.repeat(s.score.reshape(-1), expand)
        cand = jnp.where(active, new, jnp.where(keep, old, -jnp.inf)).reshape(g, nm)
        over_row = jnp.where(
            active,
            ended(resp.tokens, resp.length, resp.stop, tables, length),
            jnp.repeat(s.over.reshape(-1), expand),
        ).reshape(g, nm)
        order = jnp.argsort(-cand, axis=-1, stable=True)[:, :beams]  # [G, N] best first
        src = (jnp.arange(g)[:, None] * nm + order).reshape(-1)  # source row of each beam
        rows = jnp.repeat(src, expand)
        score = jnp.take_along_axis(cand, order, axis=1)
        over = jnp.take_along_axis(over_row, order, axis=1)
        per = lambda x: jnp.sum(x.reshape(g, nm), axis=-1)
        n_active = per(active.astype(jnp.int32))
        used = jnp.stack([per(calls), n_active, per(rm_tok), (n_active > 0).astype(jnp.int32)], -1)
        return _Beams(
            depth=s.depth + 1,
            tokens=resp.tokens[rows],
            length=resp.length[rows],
            stop=resp.stop[rows],
            kv=take_rows(kv, rows),
            score=score,
            done=over | (s.depth + 1 >= max_depth),
            over=over,
            calls=s.calls + used,
        )

    def cond(s: _Beams):
        return (s.depth < max_depth) & jnp.any(jnp.isfinite(s.score) & ~s.done)

    s = jax.lax.while_loop(cond, body, init)
    first = jnp.arange(g * beams) * expand  # row m = 0 of each beam
    return BeamOut(
        tokens=s.tokens[first].reshape(g, beams, length),
        length=s.length[first].reshape(g, beams),
        score=s.score,
        ended=s.over,
        rollout_calls=s.calls[:, 0],
        score_calls=s.calls[:, 1],
        rm_tokens=s.calls[:, 2],
        depth=s.calls[:, 3],
    )


def beam_search(
    lm,
    rm,
    prompts: Sequence[Any],
    key,
    *,
    beams: int,
    expansions: int,
    sampling: SamplingConfig,
    max_length: int,
    step_delimiter: str = "\n",
    max_depth: int | None = None,
    stop_strings: Sequence[str] = (),
    eos_ids: Sequence[int] | None = None,
    system: str | None = None,
    batch_size: int = 8,
    scorer: Scorer | None = None,
    rm_vocab: str | None = None,
) -> list[DecodeResult]:
    """Step-level beam search with the reward model (or ``scorer``) read at each step's end.

    Args:
      lm, rm: the policy and the reward model (a checked pair).
      prompts: user message strings or chat message lists.
      key: a ``jax.random`` key (expansions are drawn with ``sampling``; greedy at temperature 0).
      beams: ``N`` beams kept; expansions: ``M`` candidate steps per beam.
      max_length: most generated tokens per response.
      step_delimiter: the text that ends a step (the task's: ``"\\n"`` for one line).
      max_depth: most steps (default ``max_length``: no cut before the length limit).
      stop_strings, eos_ids, system: as in :func:`~nabla_jax.decoding.baselines.best_of_n`.
      batch_size: rows per compiled call; ``max(1, batch_size // (N·M))`` prompts share one.
      scorer: RM input id lists -> floats, replacing the reward model (e.g. an oracle).
      rm_vocab: how the RM reads LM ids (``"shared"``, ``"by_string"`` or None: see
        :mod:`nabla_jax.decoding.pair`).

    Returns:
      One ``DecodeResult`` per prompt: the best-scored final beam; ``stats``: ``score``,
      ``depth``, ``beams``, ``chosen``, ``rollout_calls``, ``score_calls``, ``rewarded_tokens``,
      ``model_calls`` (their calls' sum), ``generations`` = candidates scored; ``trace``: one
      entry per final beam (``beam``, ``text``, ``token_ids``, ``score``, ``ended``).
    """
    check_delimiter(step_delimiter)
    prompts = check_prompts(
        prompts, beams=beams, expansions=expansions, max_length=max_length,
        batch_size=batch_size,
    )  # fmt: skip
    max_depth = max_length if max_depth is None else max_depth
    check_prompts([], max_depth=max_depth)
    if not isinstance(sampling, SamplingConfig):
        raise TypeError(f"sampling must be a SamplingConfig, got {type(sampling).__name__}")
    if scorer is not None and not callable(scorer):
        raise TypeError("scorer must be callable: list of RM input id lists -> scores")
    rm_tok, vocabulary = check_pair(lm, rm, "beam search", rm_vocab)
    rm_ids = None if vocabulary.vocab_map is None else jnp.asarray(vocabulary.vocab_map.table)
    if not prompts:
        return []
    tok = lm.tokenizer
    eos_ids = tuple(eos_ids) if eos_ids is not None else default_eos_ids(lm)
    stop_ids = [tok.encode(s, add_special_tokens=False) for s in stop_strings]
    tables = stop_tables(eos_ids, stop_ids)
    steps = step_tables(
        eos_ids, step_token_ids(tok, lm.config.vocab_size, step_delimiter), stop_ids
    )
    g = max(1, batch_size // (beams * expansions))
    pad = lm.config.pad_token_id if lm.config.pad_token_id is not None else 0
    key = typed_key(jax.random.key(0) if key is None and sampling.greedy else key)
    groups = prompt_groups(lm, rm, rm_tok, prompts, group=g, max_length=max_length,
                           system=system)  # fmt: skip
    params, prog = SamplingParams.of(sampling), SamplingProgram.of(sampling)
    outs = [
        device_get(
            beam_program(
                lm,
                rm,
                grp,
                key,
                params,
                tables,
                steps,
                np.int32(max_depth),
                rm_ids,
                beams=beams,
                expand=expansions,
                length=max_length,
                prog=prog,
                scorer=scorer,
                pad_id=pad,
            )
        )  # fmt: skip
        for grp in groups
    ]
    eos = set(eos_ids)
    grp = groups[0]
    slots = grp.lm_ids.shape[1] + max_length + 1
    rm_width = grp.frame.prefix_ids.shape[1] + max_length + grp.frame.suffix_ids.shape[1]
    results = []
    for i, p in enumerate(prompts):
        out, j = outs[i // g], i % g
        trace = []
        for n in range(beams):
            if not np.isfinite(out.score[j, n]):
                continue
            ids = out.tokens[j, n, : int(out.length[j, n])].tolist()
            text, reason = response_text(tok, ids, eos, stop_strings)
            if not out.ended[j, n]:
                reason = "max_depth"
            entry = {"beam": n, "text": text, "token_ids": ids, "stop_reason": reason}
            trace.append(entry | {"score": float(out.score[j, n]), "ended": bool(out.ended[j, n])})
        best = trace[0]  # beams are sorted best first (ties: the earlier candidate)
        stats = empty_stats()
        stats["rollout_calls"] = int(out.rollout_calls[j])
        stats["generated_tokens"] = int(out.rollout_calls[j])
        stats["score_calls"] = stats["generations"] = int(out.score_calls[j])
        stats["rewarded_tokens"] = int(out.rm_tokens[j])
        stats["model_calls"] = stats["rollout_calls"] + stats["score_calls"]
        stats["flops"] = call_flops(
            lm.config, rm.config, rollout_calls=stats["rollout_calls"], cache_slots=slots,
            score_calls=0 if scorer is not None else stats["score_calls"], rm_width=rm_width,
        )  # fmt: skip
        stats.update(
            method=f"beam:{beams}x{expansions}", stop_reason=best["stop_reason"],
            score=best["score"], depth=int(out.depth[j]), beams=len(trace), chosen=0,
        )  # fmt: skip
        results.append(DecodeResult(p, best["text"], best["token_ids"], stats, trace))
    return results
