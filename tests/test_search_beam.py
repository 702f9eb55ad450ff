"""Weighted Best-of-N and step-level beam search on the tiny random chat pair."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from nabla_jax.decoding import SamplingConfig, best_of_n, greedy_cot, sampled_cot
from nabla_jax.decoding import self_consistency as sc_run
from nabla_jax.decoding.beam import beam_search
from nabla_jax.decoding.scoring import rm_scores
from nabla_jax.decoding.weighted import weighted_best_of_n, weighted_vote
from nabla_jax.runtime import profiling
from nabla_jax.text.templates import rm_prefix_suffix_ids
from tests import tolerances as tol
from tests.tiny_decode import PROMPTS, load_chat_pair

HOT = SamplingConfig(temperature=1.5)
GREEDY = SamplingConfig(temperature=0.0)
MAX_LEN = 12
EOS = {0, 2}
TOKENIZER = []  # the RM's tokenizer (a perturbed RM copy may not carry one)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    lm, rm = load_chat_pair(tmp_path_factory)
    TOKENIZER[:] = [rm.tokenizer]
    return lm, rm


def parity(text):  # few distinct answers, so several samples share one; empty texts abstain
    return None if not text else len(text) % 2


# -------------------------------------------------------------------------------- weighted BoN


def test_weighted_vote_differs_from_majority_and_best_of_n():
    answers = ["a", "a", "b", "b", "b", "c"]
    rewards = [0.5, 0.5, 0.2, 0.2, 0.2, 0.9]
    # majority: "b"; Best-of-N: sample 5 ("c", 0.9); weighted: "a" (1.0 > 0.9 > 0.6).
    assert weighted_vote(answers, rewards) == 0
    assert weighted_vote(["x", "y", "y"], [0.1, 0.3, 0.4]) == 2  # the winner's best sample
    assert weighted_vote([None, "y", None], [9.0, 0.1, 8.0]) == 1  # None does not vote
    assert weighted_vote([None, None], [0.1, 0.2]) == 1  # all None: plain Best-of-N
    assert weighted_vote(["p", "q"], [1.0, 1.0]) == 0  # tie: the answer seen first
    with pytest.raises(ValueError, match="one reward per answer"):
        weighted_vote(["a"], [1.0, 2.0])
    with pytest.raises(TypeError, match="hashable"):
        weighted_vote([[1]], [1.0])


def test_weighted_best_of_n_on_best_of_n_samples(models):
    lm, rm = models
    key = jax.random.key(2)
    kw = dict(n=4, sampling=HOT, max_length=MAX_LEN)
    w = weighted_best_of_n(lm, rm, PROMPTS, key, answer_extractor=parity, **kw)
    bon = best_of_n(lm, rm, PROMPTS, key, **kw)
    for a, b in zip(w, bon, strict=True):
        assert [t["token_ids"] for t in a.trace] == [t["token_ids"] for t in b.trace]
        np.testing.assert_array_equal([t["score"] for t in a.trace], [t["score"] for t in b.trace])
        answers, scores = [t["answer"] for t in a.trace], [t["score"] for t in a.trace]
        assert a.stats["chosen"] == weighted_vote(answers, scores)
        assert a.token_ids == a.trace[a.stats["chosen"]]["token_ids"]
        assert a.stats["model_calls"] == a.stats["generated_tokens"] + 4 == b.stats["model_calls"]
        assert a.stats["rewarded_tokens"] == b.stats["rewarded_tokens"]
    # A scorer that makes the vote differ from the plain argmax: reward 1 per sample, except 3
    # for the last one — the answer held by most samples wins unless it is outweighed.
    scorer = lambda seqs: [3.0 if i % 4 == 3 else 1.0 for i in range(len(seqs))]
    ws = weighted_best_of_n(lm, rm, PROMPTS, key, answer_extractor=parity, scorer=scorer, **kw)
    sc = sc_run(lm, PROMPTS, key, answer_extractor=parity, **kw)
    for a, m in zip(ws, sc, strict=True):
        answers = [t["answer"] for t in a.trace]
        assert a.stats["chosen"] == weighted_vote(answers, [1, 1, 1, 3])
        assert a.stats["weight"] == sum(
            s for s, x in zip([1, 1, 1, 3], answers, strict=True) if x == a.stats["answer"]
        )
        assert [t["token_ids"] for t in a.trace] == [t["token_ids"] for t in m.trace]


def test_wbon_one_is_sampled_cot_sample_zero(models):
    lm, rm = models
    key = jax.random.key(7)
    one = weighted_best_of_n(
        lm, rm, PROMPTS, key, n=1, sampling=HOT, max_length=MAX_LEN, answer_extractor=parity
    )
    cot = sampled_cot(lm, PROMPTS, key, sampling=HOT, max_length=MAX_LEN)
    assert [r.token_ids for r in one] == [r.token_ids for r in cot]
    assert [r.text for r in one] == [r.text for r in cot]


def test_weighted_best_of_n_bad_input(models):
    lm, rm = models
    kw = dict(n=2, sampling=HOT, max_length=MAX_LEN)
    with pytest.raises(TypeError, match="answer_extractor must be callable"):
        weighted_best_of_n(lm, rm, PROMPTS, jax.random.key(0), answer_extractor=None, **kw)
    with pytest.raises(TypeError, match="list of prompts"):
        weighted_best_of_n(lm, rm, "hi", jax.random.key(0), answer_extractor=parity, **kw)
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        weighted_best_of_n(
            lm, rm, PROMPTS, jax.random.key(0), n=0, sampling=HOT, max_length=MAX_LEN,
            answer_extractor=parity,
        )  # fmt: skip


# -------------------------------------------------------------------------------- beam search


def _delimiter(lm):
    """A step delimiter the greedy responses cross several times (a token of their text)."""
    g = greedy_cot(lm, PROMPTS, max_length=MAX_LEN)
    longest = max(g, key=lambda r: len(r.token_ids))
    return lm.tokenizer.decode([longest.token_ids[1]]), g


def test_beam_one_by_one_is_greedy(models):
    lm, rm = models
    delim, greedy = _delimiter(lm)
    beams = beam_search(
        lm, rm, PROMPTS, jax.random.key(0), beams=1, expansions=1, sampling=GREEDY,
        max_length=MAX_LEN, step_delimiter=delim,
    )  # fmt: skip
    assert max(b.stats["depth"] for b in beams) >= 2, "the test needs responses of several steps"
    for b, g in zip(beams, greedy, strict=True):
        assert b.token_ids == g.token_ids
        assert b.text == g.text
        assert b.stats["stop_reason"] == g.stats["stop_reason"]
        st = b.stats
        assert st["rollout_calls"] == len(g.token_ids) == st["generated_tokens"]
        assert st["score_calls"] == st["depth"]  # one candidate scored per step
        assert st["model_calls"] == st["rollout_calls"] + st["score_calls"]


def _rescore(rm, prompt, ids, tokenizer=None):
    prefix, suffix = rm_prefix_suffix_ids(tokenizer or TOKENIZER[0], prompt)
    body = ids[:-1] if ids and ids[-1] in EOS else ids
    return float(rm_scores(rm, [prefix + body + suffix])[0])


def test_beam_search_sampled(models):
    lm, rm = models
    key = jax.random.key(3)
    kw = dict(beams=2, expansions=3, sampling=HOT, max_length=MAX_LEN, step_delimiter=" ")
    res = beam_search(lm, rm, PROMPTS, key, **kw)
    again = beam_search(lm, rm, PROMPTS, key, **kw)
    alone = beam_search(lm, rm, PROMPTS[1:2], key, **kw)
    # batch_size 6 = one prompt per compiled call (2 x 3 rows), 24 = all three in one.
    wide = beam_search(lm, rm, PROMPTS, key, batch_size=24, **kw)
    # Rows per program differ (6 against 24), so XLA may order the RM's reductions
    # differently: tokens must agree exactly, scores within the RM's own float32 sensitivity
    # (tests/tolerances.py's backward-error ball, measured by rescoring the final beams).
    seqs = [(p, t["token_ids"]) for p, r in zip(PROMPTS, res, strict=True) for t in r.trace]
    rescore = lambda m: np.asarray([_rescore(m, p, ids) for p, ids in seqs])
    bound = tol.ball_tolerance(rescore, rm, tol.gamma(tol.longest_contraction(rm, extra=64)), 64)
    for r, a, w in zip(res, again, wide, strict=True):
        assert (r.token_ids, r.stats, r.trace) == (a.token_ids, a.stats, a.trace)
        assert r.token_ids == w.token_ids
        assert [t["token_ids"] for t in r.trace] == [t["token_ids"] for t in w.trace]
        tol.assert_within([t["score"] for t in w.trace], [t["score"] for t in r.trace], bound)
        strip = lambda st: {k: v for k, v in st.items() if k != "score"}
        assert strip(r.stats) == strip(w.stats)
    assert (alone[0].token_ids, alone[0].trace) == (res[1].token_ids, res[1].trace)
    other = beam_search(lm, rm, PROMPTS, jax.random.key(4), **kw)
    assert [r.trace for r in other] != [r.trace for r in res]
    for p, r in zip(PROMPTS, res, strict=True):
        scores = [t["score"] for t in r.trace]
        assert scores == sorted(scores, reverse=True) and r.stats["score"] == scores[0]
        assert r.token_ids == r.trace[0]["token_ids"] and 1 <= len(r.token_ids) <= MAX_LEN
        # a beam's score is the RM's score of its response (framed differently: the same bound)
        tol.assert_within([t["score"] for t in r.trace],
                          [_rescore(rm, p, t["token_ids"]) for t in r.trace], bound)  # fmt: skip
        st = r.stats
        assert st["score_calls"] <= 2 * 3 * st["depth"] and st["score_calls"] >= 3
        assert st["model_calls"] == st["rollout_calls"] + st["score_calls"]


def test_beam_search_with_a_scorer_and_depth_limit(models):
    lm, rm = models
    key = jax.random.key(5)
    want = 40  # the scorer rewards each occurrence of this token id
    scorer = lambda seqs: [float(s.count(want)) for s in seqs]
    kw = dict(sampling=HOT, max_length=MAX_LEN, step_delimiter=" ", scorer=scorer)
    wide = beam_search(lm, rm, PROMPTS, key, beams=4, expansions=4, **kw)
    for r in wide:
        assert r.stats["score"] == r.token_ids.count(want)
    cut = beam_search(lm, rm, PROMPTS, key, beams=2, expansions=2, max_depth=1, **kw)
    assert all(r.stats["depth"] == 1 for r in cut)


def test_beam_search_compiles_once_per_bucket(models):
    lm, rm = models
    words = ["Hi?", "What is 2 + 2?", "Solve 3x + 5 = 20.", "Why?", "Add 7 and 8.", "Go on."]
    kw = dict(beams=2, expansions=2, sampling=HOT, max_length=MAX_LEN, step_delimiter=" ")
    beam_search(lm, rm, words[:1], jax.random.key(0), **kw)
    for batch in (words[:2], words, words + words[::-1]):
        with profiling.track() as t:
            res = beam_search(lm, rm, batch, jax.random.key(len(batch)), **kw)
        assert t.lowered == 0, "more prompts of the same bucket must reuse the program"
        assert len(res) == len(batch)


def test_beam_search_bad_input(models):
    lm, rm = models
    kw = dict(sampling=HOT, max_length=MAX_LEN)
    with pytest.raises(ValueError, match="beams must be an int >= 1"):
        beam_search(lm, rm, PROMPTS, jax.random.key(0), beams=0, expansions=2, **kw)
    with pytest.raises(ValueError, match="step_delimiter must be a non-empty string"):
        beam_search(lm, rm, PROMPTS, jax.random.key(0), beams=1, expansions=1,
                    step_delimiter="", **kw)  # fmt: skip
    with pytest.raises(ValueError, match="no token of the LM's vocabulary"):
        beam_search(lm, rm, PROMPTS, jax.random.key(0), beams=1, expansions=1,
                    step_delimiter="\u2603", **kw)  # fmt: skip
    with pytest.raises(ValueError, match="max_depth must be an int >= 1"):
        beam_search(lm, rm, PROMPTS, jax.random.key(0), beams=1, expansions=1, max_depth=0, **kw)
