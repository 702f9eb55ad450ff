"""Step-level MCTS: the tree operations on hand-built trees, and searches on the tiny pair."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nabla_jax.decoding import SamplingConfig, greedy_cot
from nabla_jax.decoding.mcts_search import mcts
from nabla_jax.decoding.mcts_tree import (
    Tree,
    backup,
    empty_tree,
    most_visited_leaf,
    select_leaf,
    uct_scores,
)
from nabla_jax.runtime import profiling
from tests.tiny_decode import PROMPTS, load_chat_pair

HOT = SamplingConfig(temperature=1.5)
GREEDY = SamplingConfig(temperature=0.0)
MAX_LEN = 12


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return load_chat_pair(tmp_path_factory)


# -------------------------------------------------------------------------------- the tree


def _tree():
    """Root 0 with children 1, 2, 3; node 2 expanded into 4, 5, 6 (B = 3, T = 7).

    Visits / value sums: 1: 4 / 2.0 (Q 0.5), 2: 3 / 2.4 (Q 0.8), 3: 1 / 0.6 (Q 0.6);
    4: 1 / 0.9, 5: 1 / 0.1, 6: 0 / 0 (never visited)."""
    t = empty_tree(1, 7)
    parent = jnp.asarray([[-1, 0, 0, 0, 2, 2, 2]])
    first = jnp.asarray([[1, -1, 4, -1, -1, -1, -1]])
    depth = jnp.asarray([[0, 1, 1, 1, 2, 2, 2]])
    visits = jnp.asarray([[8, 4, 3, 1, 1, 1, 0]])
    evals = jnp.asarray([[0, 4, 1, 1, 1, 1, 0]])
    value = jnp.asarray([[5.0, 2.0, 2.4, 0.6, 0.9, 0.1, 0.0]])
    return t._replace(parent=parent, first_child=first, depth=depth, visits=visits,
                      evals=evals, value=value)  # fmt: skip


def test_uct_scores_formula():
    value, visits = jnp.asarray([2.0, 2.4, 0.6]), jnp.asarray([4, 3, 1])
    got = np.asarray(uct_scores(value, visits, jnp.asarray(8), 0.7))
    want = np.asarray([2.0 / 4, 2.4 / 3, 0.6]) + 0.7 * np.sqrt(np.log(8) / np.asarray([4, 3, 1]))
    np.testing.assert_allclose(got, want, rtol=1e-6)  # a few float32 roundings (≤ 8 ulps)
    assert np.isinf(np.asarray(uct_scores(value, jnp.asarray([1, 0, 2]), jnp.asarray(3), 1.0))[1])


def test_uct_picks_the_known_child():
    t = _tree()
    # c = 0: pure exploitation: child 2 (Q 0.8), then its unvisited child 6 (+inf).
    assert int(select_leaf(t, 3, 0.0, 5)[0]) == 6
    # c = 2: child 3 (1 visit): 0.6 + 2·sqrt(ln 8) = 3.48 beats 0.8 + 2·sqrt(ln 8 / 3) = 1.56.
    assert int(select_leaf(t, 3, 2.0, 5)[0]) == 3
    # Child 6 visited and poor: with c = 0, node 4 (Q 0.9) is the known best under 2.
    t6 = t._replace(visits=t.visits.at[0, 6].set(1), value=t.value.at[0, 6].set(-1.0))
    assert int(select_leaf(t6, 3, 0.0, 5)[0]) == 4
    assert int(select_leaf(t, 3, 0.0, 1)[0]) == 2  # at most max_depth steps down
    assert int(most_visited_leaf(t, 3, 5)[0]) == 1  # node 1 has the most visits (4)


def test_backup_adds_along_the_path():
    t = backup(_tree(), jnp.asarray([5]), jnp.asarray([1.5]), jnp.asarray([2]), 5)
    np.testing.assert_array_equal(np.asarray(t.visits[0]), [10, 4, 5, 1, 1, 3, 0])
    np.testing.assert_allclose(np.asarray(t.value[0]), [6.5, 2.0, 3.9, 0.6, 0.9, 1.6, 0.0])
    assert isinstance(t, Tree)


# -------------------------------------------------------------------------------- searches


def _delimiter(lm):
    g = greedy_cot(lm, PROMPTS, max_length=MAX_LEN)
    longest = max(g, key=lambda r: len(r.token_ids))
    return lm.tokenizer.decode([longest.token_ids[1]]), g


@pytest.mark.parametrize("answer", ["best", "visits"])
def test_mcts_one_child_is_greedy(models, answer):
    lm, rm = models
    delim, greedy = _delimiter(lm)
    res = mcts(lm, rm, PROMPTS, None, branch=1, max_depth=4, sampling=GREEDY,
               max_length=MAX_LEN, step_delimiter=delim, answer=answer)  # fmt: skip
    assert max(r.stats["nodes"] for r in res) >= 2, "the test needs several steps"
    for r, g in zip(res, greedy, strict=True):
        assert r.token_ids == g.token_ids and r.text == g.text
        assert all(e["token_ids"] == g.token_ids for e in r.trace)  # every rollout is greedy


def _visits_add_up(res, branch, sims):
    st = res.stats
    by = {e["node"]: e for e in res.trace}
    for e in res.trace:
        kids = [k for k in by.values() if k["parent"] == e["node"]]
        assert e["visits"] == e["evals"] + sum(k["visits"] for k in kids)
        if e["parent"] > 0:  # a child continues its parent's steps, one step further
            up = by[e["parent"]]
            cut = up["prefix_length"]
            assert e["prefix_length"] > cut and e["token_ids"][:cut] == up["token_ids"][:cut]
            assert e["depth"] == up["depth"] + 1
    top = sum(e["visits"] for e in res.trace if e["parent"] == 0)
    assert st["root_visits"] == top == branch * st["simulations"] + (sims - st["simulations"])
    assert st["nodes"] == st["score_calls"] == branch * st["simulations"]
    assert st["model_calls"] == st["rollout_calls"] + st["score_calls"]


def test_mcts_sampled_visits_determinism_batching(models):
    lm, rm = models
    key = jax.random.key(1)
    kw = dict(branch=2, max_depth=3, simulations=4, sampling=HOT, max_length=MAX_LEN,
              step_delimiter=" ")  # fmt: skip
    res = mcts(lm, rm, PROMPTS, key, **kw)
    again = mcts(lm, rm, PROMPTS, key, **kw)
    alone = mcts(lm, rm, PROMPTS[2:], key, **kw)
    for r, a in zip(res, again, strict=True):
        assert (r.token_ids, r.stats, r.trace) == (a.token_ids, a.stats, a.trace)
        _visits_add_up(r, 2, 4)
        assert r.stats["score"] == max(e["score"] for e in r.trace)
    assert (alone[0].token_ids, alone[0].trace) == (res[2].token_ids, res[2].trace)
    other = mcts(lm, rm, PROMPTS, jax.random.key(2), **kw)
    assert [r.trace for r in other] != [r.trace for r in res]
    visits = mcts(lm, rm, PROMPTS, key, answer="visits", **kw)
    for r, v in zip(res, visits, strict=True):
        assert r.trace == v.trace  # the same search; only the pick differs
        assert v.stats["answer"] == "visits" and v.token_ids in [e["token_ids"] for e in r.trace]


def test_mcts_finds_the_branch_an_oracle_knows(models):
    lm, rm = models
    greedy = greedy_cot(lm, PROMPTS, max_length=MAX_LEN)
    seen = {t for g in greedy for t in g.token_ids}
    right = {i for i in range(3, lm.config.vocab_size) if i % 3 == 0} - seen
    oracle = lambda seqs: [float(sum(t in right for t in s)) for s in seqs]
    found = mcts(lm, rm, PROMPTS, jax.random.key(0), branch=3, max_depth=3, sampling=HOT,
                 max_length=MAX_LEN, step_delimiter=" ", scorer=oracle)  # fmt: skip
    for r, g in zip(found, greedy, strict=True):
        assert sum(t in right for t in g.token_ids) == 0  # greedy never takes the right branch
        assert r.stats["score"] >= 1 and r.stats["score"] >= max(e["score"] for e in r.trace)
        assert sum(t in right for t in r.token_ids) >= 1


def test_mcts_compiles_once_per_bucket(models):
    lm, rm = models
    words = ["Hi?", "What is 2 + 2?", "Solve 3x + 5 = 20.", "Why?", "Add 7 and 8.", "Go on."]
    kw = dict(branch=2, max_depth=2, sampling=HOT, max_length=MAX_LEN, step_delimiter=" ")
    mcts(lm, rm, words[:1], jax.random.key(0), **kw)
    for batch in (words[:3], words + words[::-1]):
        with profiling.track() as t:
            res = mcts(lm, rm, batch, jax.random.key(len(batch)), uct_c=len(batch) / 3, **kw)
        assert t.lowered == 0, "more prompts (or another UCT constant) must reuse the program"
        assert t.transfers == -(-len(batch) // 4)  # one host read per group of 4 prompts
        assert len(res) == len(batch)


def test_mcts_bad_input(models):
    lm, rm = models
    kw = dict(sampling=HOT, max_length=MAX_LEN)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="branch must be an int >= 1"):
        mcts(lm, rm, PROMPTS, key, branch=0, max_depth=2, **kw)
    with pytest.raises(ValueError, match="simulations must be an int >= 1"):
        mcts(lm, rm, PROMPTS, key, branch=2, max_depth=2, simulations=0, **kw)
    with pytest.raises(ValueError, match="answer='most'"):
        mcts(lm, rm, PROMPTS, key, branch=2, max_depth=2, answer="most", **kw)
    with pytest.raises(ValueError, match="uct_c must be a number >= 0"):
        mcts(lm, rm, PROMPTS, key, branch=2, max_depth=2, uct_c=-1.0, **kw)
    with pytest.raises(ValueError, match="pass a jax.random key"):
        mcts(lm, rm, PROMPTS, None, branch=2, max_depth=2, **kw)


# -------------------------------------------------------------------------------- registry


def test_registry_runs_the_searches(models):
    lm, rm = models
    from nabla_jax.decoding import DecodeConfig, method_runner, parse_method, run_baseline
    from nabla_jax.decoding.beam import beam_search
    from nabla_jax.decoding.registry import check_baseline_sampling
    from nabla_jax.decoding.weighted import weighted_best_of_n

    assert parse_method("beam:4x2") == ("beam", (4, 2))
    assert parse_method(" mcts:2x3 ") == ("mcts", (2, 3))
    assert parse_method("wbon:8") == ("wbon", 8)
    for bad, msg in [("beam:4", "needs 2 counts"), ("mcts:2x0", "needs 2 counts"),
                     ("mcts:2x3x1", "needs 2 counts"), ("wbon:2x2", "needs a sample count"),
                     ("beam", "e.g. beam:4x4")]:  # fmt: skip
        with pytest.raises(ValueError, match=msg):
            parse_method(bad)
    with pytest.raises(ValueError, match=r"\['wbon:2', 'beam:2x2', 'mcts:2x1'\]"):
        check_baseline_sampling(["wbon:2", "beam:2x2", "beam:2x1", "mcts:2x1", "mcts:1x3"],
                                GREEDY)  # fmt: skip
    key = jax.random.key(3)
    kw = dict(sampling=HOT, max_length=MAX_LEN)
    via = run_baseline("mcts:2x2", lm, PROMPTS[:2], key, rm=rm, step_delimiter=" ", **kw)
    direct = mcts(lm, rm, PROMPTS[:2], key, branch=2, max_depth=2, step_delimiter=" ", **kw)
    assert [(r.token_ids, r.stats) for r in via] == [(r.token_ids, r.stats) for r in direct]
    # method_runner: the shared settings, the task's delimiter and answer extractor.
    cfg = DecodeConfig(max_length=MAX_LEN, rollout=HOT)
    parity = lambda text: len(text) % 2
    beam = method_runner("beam:2x2", lm, rm, cfg, step_delimiter=" ", answer_extractor=parity)
    got = beam(PROMPTS[:2], key)
    want = beam_search(lm, rm, PROMPTS[:2], key, beams=2, expansions=2, step_delimiter=" ", **kw)
    assert [(r.token_ids, r.stats) for r in got] == [(r.token_ids, r.stats) for r in want]
    wbon = method_runner("wbon:2", lm, rm, cfg, answer_extractor=parity)(PROMPTS[:2], key)
    want = weighted_best_of_n(lm, rm, PROMPTS[:2], key, n=2, answer_extractor=parity, **kw)
    assert [(r.token_ids, r.stats) for r in wbon] == [(r.token_ids, r.stats) for r in want]
    assert all(r.stats["model_calls"] > 0 for r in got + wbon)


def test_mcts_partial_values(models):
    lm, rm = models
    key = jax.random.key(1)
    kw = dict(branch=2, max_depth=3, simulations=3, sampling=HOT, max_length=MAX_LEN,
              step_delimiter=" ")  # fmt: skip
    full = mcts(lm, rm, PROMPTS, key, **kw)
    part = mcts(lm, rm, PROMPTS, key, value="partial", **kw)
    for f, p in zip(full, part, strict=True):
        _visits_add_up(p, 2, 3)
        # No rollout: each node's "completed" response is its own steps.
        assert all(e["prefix_length"] == len(e["token_ids"]) for e in p.trace)
        assert p.stats["rollout_calls"] <= f.stats["rollout_calls"]
        # The first expansion draws the same steps either way (the same keys).
        first = lambda r: [e["prefix_length"] for e in r.trace if e["depth"] == 1]
        assert first(f) == first(p)
    with pytest.raises(ValueError, match="value='prm'"):
        mcts(lm, rm, PROMPTS, key, value="prm", **kw)
