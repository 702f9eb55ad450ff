"""Step-level Monte Carlo tree search (``mcts:BxD``): ``B`` children per expansion, depth ``D``.

Each simulation, per prompt:

1. **Selection** — from the root, descend by UCT (:func:`~nabla_jax.decoding.mcts_tree.
   select_leaf`; the constant ``c`` is a run-time number) to a node not yet expanded.
2. **Expansion** — if that node's response has not ended and it is less than ``D`` steps deep,
   sample ``B`` child steps from it (:mod:`nabla_jax.decoding.search_rows`: up to a token that
   contains the step delimiter). Each child starts from a copy of its parent's key/value cache
   rows (a pool of one cache row per node slot), so the prefix is never recomputed, and its
   cache is stored in its own slot.
3. **Evaluation** — each child's value is the reward model's (or ``scorer``'s) score of a
   completed rollout from it (to EOS or ``max_length``; ``rollout_sampling``, default the
   expansion's sampling); a child whose response ended is scored as it is. With
   ``value="partial"`` the child's partial response is scored instead (no rollout).
4. **Backup** — the children's values are summed into their parent and every ancestor, with
   ``B`` visits. A selected node that cannot be expanded is re-evaluated with its mean value
   (one visit).

The answer is the best-scored completed rollout of the whole search (``answer="best"``), or
the completed rollout of the end of the most-visited path (``answer="visits"``).

Everything runs in one compiled program per bucket: a ``lax.while_loop`` over the simulations,
``G`` prompts batched, ``G·B`` working rows and ``G·(1 + simulations·B)`` pooled cache rows
(memory grows with the simulations: ``T = 1 + simulations·B`` cache rows per prompt). Keys:
child ``b`` of simulation ``s`` draws its step with ``SEARCH`` counter ``2·(s·B + b)`` and its
rollout with ``2·(s·B + b) + 1``. The host reads the device once per group of prompts, however
many simulations run.

Model calls per prompt: one per generated token forwarded (steps and rollouts), one per RM
scoring of a child.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nabla_jax.decoding.buffers import KVState, empty_responses, prefill_prompts
from nabla_jax.decoding.continuation import TRACE_COUNTS, PromptCache, Sampler, Span
from nabla_jax.decoding.continuation import continue_responses as cont
from nabla_jax.decoding.flops import call_flops
from nabla_jax.decoding.keys import SEARCH, stream_keys
from nabla_jax.decoding.mcts_tree import Tree, backup, empty_tree, most_visited_leaf, select_leaf
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

__all__ = ["ANSWERS", "VALUES", "MCTSOut", "mcts", "mcts_program"]

#: How the answer is chosen: the best-scored completed rollout, or the most-visited path's.
ANSWERS = ("best", "visits")
#: A child's value: the score of a completed rollout from it, or of its partial response.
VALUES = ("rollout", "partial")


class MCTSOut(NamedTuple):
    """What :func:`mcts_program` returns (``[G, ...]``).

    Attributes:
      tree: the final :class:`~nabla_jax.decoding.mcts_tree.Tree`.
      node_length: ``[G, T]`` each node's response length (its steps).
      tokens: ``[G, T, L]`` the completed rollout of each node; length ``[G, T]``; score
        ``[G, T]`` its value (-inf: never evaluated; the root is never evaluated).
      best, visited: ``[G]`` the slot of the best-scored rollout / the most-visited path's end.
      calls: ``[G, 4]`` rollout calls, score calls, RM input tokens, expansions.
    """

    tree: Tree
    node_length: jax.Array
    tokens: jax.Array
    length: jax.Array
    score: jax.Array
    best: jax.Array
    visited: jax.Array
    calls: jax.Array


class _Search(NamedTuple):
    sim: jax.Array
    tree: Tree
    pool: KVState  # [G*T] one cache row per node slot
    node_tokens: jax.Array  # [G, T, L]
    node_len: jax.Array  # [G, T]
    roll_tokens: jax.Array  # [G, T, L]
    roll_len: jax.Array  # [G, T]
    roll_score: jax.Array  # [G, T]
    calls: jax.Array  # [G, 4]


def _put(pool: KVState, rows, new: KVState) -> KVState:
    """``pool`` with rows ``rows [W]`` replaced by ``new``'s ``W`` rows."""
    from nabla_jax.models.layers import KVCache

    def walk(p, n):
        if isinstance(p, KVCache):
            return KVCache(p.k.at[:, rows].set(n.k), p.v.at[:, rows].set(n.v))
        return p.at[rows].set(n)

    is_cache = lambda x: isinstance(x, KVCache)
    return jax.tree.map(walk, pool, new, is_leaf=is_cache)


@functools.partial(
    jax.jit,
    static_argnames=(
        "branch",
        "sims",
        "length",
        "prog",
        "roll_prog",
        "scorer",
        "pad_id",
        "rollout",
    ),
)
def mcts_program(
    lm, rm, group, key, params, roll_params, tables, steps, max_depth, c, rm_ids=None, *,
    branch: int,
    sims: int, length: int, prog: SamplingProgram, roll_prog: SamplingProgram,
    scorer: Scorer | None = None, pad_id: int = 0, rollout: bool = True,
) -> MCTSOut:  # fmt: skip
    """MCTS of one :class:`~nabla_jax.decoding.search_rows.SearchGroup` (traceable).

    ``tables``: real EOS ids and stop sequences; ``steps``: the step rollout tables;
    ``max_depth`` (int32) and ``c`` (float32, the UCT constant) are run-time values;
    ``rollout=False`` values a child by its partial response (no rollout); ``rm_ids [V_lm]``:
    the RM id of each LM id (None: the RM reads LM ids).
    """
    TRACE_COUNTS["mcts"] += 1
    g, p = group.lm_ids.shape
    t, w, b = 1 + sims * branch, g * branch, branch
    kv, first_logits, first_hidden = prefill_prompts(
        lm, group.lm_ids, group.lm_mask, p + length + 1
    )
    pool = take_rows(kv, jnp.repeat(jnp.arange(g), t))
    of_prompt = jnp.repeat(jnp.arange(g), b)
    first_logits, first_hidden = take_rows((first_logits, first_hidden), of_prompt)
    prompt_len = jnp.sum(group.lm_mask, axis=-1)[of_prompt]
    frame = take_rows(group.frame, of_prompt)
    base = group.base_keys(key)[of_prompt]
    child = jnp.arange(w) % b
    gi = jnp.arange(g)
    full = jnp.full((w,), length, jnp.int32)
    blank = jnp.zeros((g, t), jnp.int32)
    init = _Search(
        sim=jnp.int32(0), tree=empty_tree(g, t), pool=pool,
        node_tokens=jnp.full((g, t, length), pad_id, jnp.int32), node_len=blank,
        roll_tokens=jnp.full((g, t, length), pad_id, jnp.int32), roll_len=blank,
        roll_score=jnp.full((g, t), -jnp.inf, jnp.float32), calls=jnp.zeros((g, 4), jnp.int32),
    )  # fmt: skip

    def body(s: _Search) -> _Search:
        tree = s.tree
        leaf = select_leaf(tree, b, c, max_depth)
        leaf_depth = tree.depth[gi, leaf]
        grow = group.valid & ~tree.terminal[gi, leaf] & (leaf_depth < max_depth)  # [G]
        active = grow[of_prompt]
        rows = of_prompt * t + leaf[of_prompt]
        resp = empty_responses(w, length, pad_id=pad_id)._replace(
            tokens=s.node_tokens[gi, leaf][of_prompt], length=s.node_len[gi, leaf][of_prompt]
        )
        prompt = lambda kv: PromptCache(kv, p, prompt_len, first_logits, first_hidden)
        counter = 2 * (s.sim * b + child)
        step, kv, c1 = cont(
            lm, prompt=prompt(take_rows(s.pool, rows)),
            span=Span(resp, resp.length, full, active, stream_keys(base, SEARCH, counter)),
            sampler=Sampler(params, prog, steps, pad_id),
        )  # fmt: skip
        over = ended(step.tokens, step.length, step.stop, tables, length)
        slots = 1 + s.sim * b + jnp.arange(b)  # [B] this simulation's node slots
        pool = _put(s.pool, of_prompt * t + jnp.tile(slots, g), kv)
        done, c2 = step, jnp.zeros_like(c1)
        if rollout:
            done, _, c2 = cont(
                lm, prompt=prompt(kv),
                span=Span(step, step.length, full, active & ~over,
                          stream_keys(base, SEARCH, counter + 1)),
                sampler=Sampler(roll_params, roll_prog, tables, pad_id),
            )  # fmt: skip
        value, _, _ = score_responses(
            rm,
            frame,
            done.tokens,
            done.length,
            tables,
            scorer=scorer,
            wanted=active,
            rm_ids=rm_ids,
        )
        value = jnp.where(active, value, 0.0)
        rm_tok = jnp.where(active, rm_input_length(frame, done.tokens, done.length, tables), 0)
        per = lambda x: x.reshape(g, b)
        on = per(active)
        tree = tree._replace(
            parent=tree.parent.at[:, slots].set(jnp.where(on, leaf[:, None], -1)),
            depth=tree.depth.at[:, slots].set((leaf_depth + 1)[:, None]),
            terminal=tree.terminal.at[:, slots].set(per(over) & on),
            visits=tree.visits.at[:, slots].set(on.astype(jnp.int32)),
            evals=tree.evals.at[:, slots].set(on.astype(jnp.int32)),
            value=tree.value.at[:, slots].set(per(value)),
            first_child=tree.first_child.at[gi, leaf].set(
                jnp.where(grow, slots[0], tree.first_child[gi, leaf])
            ),
        )
        # A leaf that cannot grow is evaluated again with its mean value (one visit).
        mean = tree.value[gi, leaf] / jnp.maximum(tree.visits[gi, leaf], 1)
        again = group.valid & ~grow
        tree = tree._replace(evals=tree.evals.at[gi, leaf].add(again.astype(jnp.int32)))
        up_value = jnp.where(grow, jnp.sum(per(value), axis=-1), jnp.where(again, mean, 0.0))
        up_visits = jnp.where(grow, b, again.astype(jnp.int32))
        tree = backup(tree, leaf, up_value, up_visits, max_depth)
        used = jnp.stack(
            [jnp.sum(per(c1 + c2), -1), jnp.sum(on, -1), jnp.sum(per(rm_tok), -1), grow], -1
        )
        return _Search(
            sim=s.sim + 1, tree=tree, pool=pool,
            node_tokens=s.node_tokens.at[:, slots].set(step.tokens.reshape(g, b, length)),
            node_len=s.node_len.at[:, slots].set(per(step.length)),
            roll_tokens=s.roll_tokens.at[:, slots].set(done.tokens.reshape(g, b, length)),
            roll_len=s.roll_len.at[:, slots].set(per(done.length)),
            roll_score=s.roll_score.at[:, slots].set(jnp.where(on, per(value), -jnp.inf)),
            calls=s.calls + used.astype(jnp.int32),
        )  # fmt: skip

    s = jax.lax.while_loop(lambda s: s.sim < sims, body, init)
    return MCTSOut(
        tree=s.tree, node_length=s.node_len, tokens=s.roll_tokens, length=s.roll_len,
        score=s.roll_score, best=jnp.argmax(s.roll_score, axis=-1).astype(jnp.int32),
        visited=most_visited_leaf(s.tree, b, max_depth), calls=s.calls,
    )  # fmt: skip


def mcts(
    lm,
    rm,
    prompts: Sequence[Any],
    key,
    *,
    branch: int,
    max_depth: int,
    sampling: SamplingConfig,
    max_length: int,
    simulations: int | None = None,
    uct_c: float = 1.0,
    answer: str = "best",
    value: str = "rollout",
    rollout_sampling: SamplingConfig | None = None,
    step_delimiter: str = "\n",
    stop_strings: Sequence[str] = (),
    eos_ids: Sequence[int] | None = None,
    system: str | None = None,
    batch_size: int = 8,
    scorer: Scorer | None = None,
    rm_vocab: str | None = None,
) -> list[DecodeResult]:
    """Step-level MCTS with UCT selection and completed-rollout values.

    Args:
      lm, rm: the policy and the reward model (a checked pair).
      prompts: user message strings or chat message lists.
      key: a ``jax.random`` key.
      branch: ``B`` child steps per expansion; max_depth: ``D``, most steps in the tree.
      sampling: how child steps are drawn; rollout_sampling: how the evaluation rollouts are
        drawn (default ``sampling``).
      max_length: most generated tokens per response.
      simulations: selection-expansion-evaluation-backup rounds (default ``D``: ``B·D``
        evaluated children, so ``mcts:4x5`` evaluates 20 completed rollouts).
      uct_c: the UCT exploration constant (run-time: no recompile per value).
      answer: ``"best"`` (the best-scored completed rollout) or ``"visits"`` (the completed
        rollout at the end of the most-visited path).
      value: ``"rollout"`` (a child's value is the score of a completed rollout from it) or
        ``"partial"`` (the score of its partial response, read at the step's end — a process
        reward; the "completed rollout" of the results is then the node's own response).
      step_delimiter, stop_strings, eos_ids, system, batch_size, scorer, rm_vocab: as in
        :func:`~nabla_jax.decoding.beam.beam_search` (``batch_size // B`` prompts per call).

    Returns:
      One ``DecodeResult`` per prompt; ``stats``: ``score``, ``simulations`` (expansions
      made), ``nodes`` (evaluated children), ``root_visits``, the call counters
      (``model_calls`` = ``rollout_calls`` + ``score_calls``); ``trace``: one entry per
      evaluated child (``node`` slot, ``parent``, ``depth``, ``visits``, ``evals``, ``value``
      sum, ``prefix_length`` — the tokens of the node's own steps — and the ``score``, ``text``,
      ``token_ids`` and ``stop_reason`` of its completed rollout).
    """
    check_delimiter(step_delimiter)
    sims = max_depth if simulations is None else simulations
    prompts = check_prompts(
        prompts, branch=branch, max_depth=max_depth, simulations=sims, max_length=max_length,
        batch_size=batch_size,
    )  # fmt: skip
    if answer not in ANSWERS:
        raise ValueError(f"answer={answer!r}: must be one of {ANSWERS}")
    if value not in VALUES:
        raise ValueError(f"value={value!r}: must be one of {VALUES}")
    if isinstance(uct_c, bool) or not isinstance(uct_c, (int, float)) or not uct_c >= 0:
        raise ValueError(f"uct_c must be a number >= 0, got {uct_c!r}")
    roll = sampling if rollout_sampling is None else rollout_sampling
    for name, sc in (("sampling", sampling), ("rollout_sampling", roll)):
        if not isinstance(sc, SamplingConfig):
            raise TypeError(f"{name} must be a SamplingConfig, got {type(sc).__name__}")
    if scorer is not None and not callable(scorer):
        raise TypeError("scorer must be callable: list of RM input id lists -> scores")
    rm_tok, vocabulary = check_pair(lm, rm, "MCTS", rm_vocab)
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
    g = max(1, batch_size // branch)
    pad = lm.config.pad_token_id if lm.config.pad_token_id is not None else 0
    greedy = sampling.greedy and roll.greedy
    key = typed_key(jax.random.key(0) if key is None and greedy else key)
    groups = prompt_groups(lm, rm, rm_tok, prompts, group=g, max_length=max_length,
                           system=system)  # fmt: skip
    run = functools.partial(
        mcts_program, branch=branch, sims=sims, length=max_length,
        prog=SamplingProgram.of(sampling), roll_prog=SamplingProgram.of(roll), scorer=scorer,
        pad_id=pad, rollout=value == "rollout",
    )  # fmt: skip
    outs = [
        device_get(run(lm, rm, grp, key, SamplingParams.of(sampling), SamplingParams.of(roll),
                       tables, steps, np.int32(max_depth), np.float32(uct_c), rm_ids))
        for grp in groups
    ]  # fmt: skip
    eos = set(eos_ids)
    grp = groups[0]
    slots = grp.lm_ids.shape[1] + max_length + 1
    rm_width = grp.frame.prefix_ids.shape[1] + max_length + grp.frame.suffix_ids.shape[1]
    results = []
    for i, p in enumerate(prompts):
        out, j = outs[i // g], i % g
        tr = out.tree
        trace = []
        for node in np.flatnonzero(np.isfinite(out.score[j])):
            ids = out.tokens[j, node, : int(out.length[j, node])].tolist()
            text, reason = response_text(tok, ids, eos, stop_strings)
            trace.append(
                {"node": int(node), "parent": int(tr.parent[j, node]),
                 "depth": int(tr.depth[j, node]), "visits": int(tr.visits[j, node]),
                 "evals": int(tr.evals[j, node]),
                 "value": float(tr.value[j, node]), "score": float(out.score[j, node]),
                 "prefix_length": int(out.node_length[j, node]), "text": text,
                 "token_ids": ids, "stop_reason": reason}
            )  # fmt: skip
        pick = int(out.best[j] if answer == "best" else out.visited[j])
        chosen = next(k for k, e in enumerate(trace) if e["node"] == pick)
        best = trace[chosen]
        calls = out.calls[j]
        stats = empty_stats()
        stats["rollout_calls"] = stats["generated_tokens"] = int(calls[0])
        stats["score_calls"] = stats["generations"] = int(calls[1])
        stats["rewarded_tokens"] = int(calls[2])
        stats["model_calls"] = stats["rollout_calls"] + stats["score_calls"]
        stats["flops"] = call_flops(
            lm.config, rm.config, rollout_calls=stats["rollout_calls"], cache_slots=slots,
            score_calls=0 if scorer is not None else stats["score_calls"], rm_width=rm_width,
        )  # fmt: skip
        stats.update(
            method=f"mcts:{branch}x{max_depth}", stop_reason=best["stop_reason"],
            score=best["score"], simulations=int(calls[3]), nodes=len(trace),
            root_visits=int(tr.visits[j, 0]), chosen=chosen, answer=answer,
        )  # fmt: skip
        results.append(DecodeResult(p, best["text"], best["token_ids"], stats, trace))
    return results
