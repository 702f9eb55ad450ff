"""Baselines (nabla_jax.decoding.baselines) on tiny random models sharing a ChatML tokenizer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nabla_jax as nj
from nabla_jax.decoding import (
    BASELINES,
    DecodeResult,
    SamplingConfig,
    best_of_n,
    greedy_cot,
    majority_vote,
    parse_method,
    rollout,
    run_baseline,
    sampled_cot,
    self_consistency,
)
from nabla_jax.decoding.baselines import prompt_keys
from nabla_jax.text.templates import lm_prompt_ids, rm_prefix_suffix_ids
from tests import tolerances as tol
from tests.hf_models import save_chat_pair

PROMPTS = ["What is 2 + 2?", "Solve 3x + 5 = 20.", "Let's think step by step."]
HOT = SamplingConfig(temperature=1.5)
MAX_LEN = 10


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    lm_dir, rm_dir = tmp_path_factory.mktemp("lm"), tmp_path_factory.mktemp("rm")
    save_chat_pair(lm_dir, rm_dir)
    return nj.load_causal_lm(lm_dir), nj.load_reward_model(rm_dir)


def _same(a: DecodeResult, b: DecodeResult):
    assert a.text == b.text
    assert a.token_ids == b.token_ids
    assert a.stats == b.stats
    assert a.trace == b.trace


def _check_calls(res: DecodeResult, n: int, rm_calls: int = 0):
    st = res.stats
    tokens = sum(t["generated_tokens"] for t in res.trace)
    assert len(res.trace) == st["generations"] == st["samples"] == n
    assert st["generated_tokens"] == st["rollout_calls"] == tokens
    assert st["score_calls"] == rm_calls
    assert st["model_calls"] == tokens + rm_calls
    assert st["dto_calls"] == st["probe_calls"] == st["rejections"] == 0
    assert 1 <= len(res.token_ids) <= MAX_LEN
    assert res.token_ids == res.trace[st["chosen"]]["token_ids"]
    assert res.text == res.trace[st["chosen"]]["text"]


# -------------------------------------------------------------------------------- greedy / cot


def test_greedy_equals_rollout_at_temperature_zero(models):
    lm, _ = models
    results = greedy_cot(lm, PROMPTS, max_length=MAX_LEN)
    ref = rollout(
        lm,
        [lm_prompt_ids(lm.tokenizer, p) for p in PROMPTS],
        None,
        max_new_tokens=MAX_LEN,
        sampling=SamplingConfig(temperature=0.0),
        return_logits=False,
    )
    for b, res in enumerate(results):
        assert res.prompt == PROMPTS[b]
        assert res.token_ids == ref.row_tokens(b)
        assert res.text == ref.texts[b]
        assert res.stats["stop_reason"] == ref.stop_reason[b]
        assert res.stats["model_calls"] == len(res.token_ids) == int(ref.model_calls[b])
        _check_calls(res, 1)
    # Greedy is what a zero-temperature "cot" run gives, whatever the key.
    cot = sampled_cot(
        lm, PROMPTS, jax.random.key(3), sampling=SamplingConfig(temperature=0.0), max_length=MAX_LEN
    )
    assert [r.token_ids for r in cot] == [r.token_ids for r in results]


def test_sampled_cot_uses_sample_zero_key(models):
    lm, _ = models
    key = jax.random.key(5)
    results = sampled_cot(lm, PROMPTS, key, sampling=HOT, max_length=MAX_LEN)
    ids = [lm_prompt_ids(lm.tokenizer, p) for p in PROMPTS]
    keys = jnp.stack([prompt_keys(key, p, 1)[0] for p in PROMPTS])
    ref = rollout(lm, ids, keys, max_new_tokens=MAX_LEN, sampling=HOT, return_logits=False)
    for b, res in enumerate(results):
        assert res.token_ids == ref.row_tokens(b)
        _check_calls(res, 1)


def test_determinism_and_batch_independence(models):
    lm, _ = models
    key = jax.random.key(11)
    kw = dict(n=2, sampling=HOT, max_length=MAX_LEN, answer_extractor=len)
    batched = self_consistency(lm, PROMPTS, key, **kw)
    again = self_consistency(lm, PROMPTS, key, **kw)
    for a, b in zip(batched, again, strict=True):
        _same(a, b)
    # A prompt alone (and in a batch split into different chunks) decodes the same.
    alone = self_consistency(lm, [PROMPTS[1]], key, **kw)[0]
    _same(alone, batched[1])
    small = self_consistency(lm, PROMPTS[::-1], key, batch_size=2, **kw)
    for a, b in zip(small[::-1], batched, strict=True):
        _same(a, b)
    # Samples of a prompt differ from each other; another key gives other samples.
    assert len({tuple(t["token_ids"]) for r in batched for t in r.trace}) > len(PROMPTS)
    other = self_consistency(lm, PROMPTS, jax.random.key(12), **kw)
    assert [r.trace for r in other] != [r.trace for r in batched]


# -------------------------------------------------------------------------------- Best-of-N


def test_best_of_n_picks_highest_rescored_candidate(models):
    lm, rm = models
    n = 4
    results = best_of_n(lm, rm, PROMPTS, jax.random.key(1), n=n, sampling=HOT, max_length=MAX_LEN)
    eos = {2}
    # Re-score every candidate independently: right-padded (the baseline pads on the left).
    seqs = []
    for p, res in zip(PROMPTS, results, strict=True):
        prefix, suffix = rm_prefix_suffix_ids(rm.tokenizer, p)
        for t in res.trace:
            body = t["token_ids"]
            body = body[:-1] if body and body[-1] in eos else body
            seqs.append(prefix + body + suffix)
    width = max(len(q) for q in seqs)
    ids = np.zeros((len(seqs), width), np.int32)
    mask = np.zeros((len(seqs), width), np.int32)
    for i, q in enumerate(seqs):
        ids[i, : len(q)], mask[i, : len(q)] = q, 1
    score = jax.jit(lambda m, i, k: m.score(i, k))
    all_scores = np.asarray(score(rm, ids, mask))
    bound = tol.forward_tolerance(lambda m: score(m, ids, mask), rm, extra=width)
    for j, (p, res) in enumerate(zip(PROMPTS, results, strict=True)):
        prefix, suffix = rm_prefix_suffix_ids(rm.tokenizer, p)
        rescored = all_scores[j * n : (j + 1) * n]
        # left-padded inside the baseline, right-padded here: the same scores in other
        # positions, within the scoring forward's ball (forward_tolerance)
        tol.assert_within([t["score"] for t in res.trace], rescored, bound, "rescored scores")
        assert res.stats["chosen"] == int(np.argmax(rescored))
        assert res.stats["score"] == max(t["score"] for t in res.trace)
        _check_calls(res, n, rm_calls=n)
        lengths = sum(len(prefix) + len(suffix) + t["generated_tokens"] for t in res.trace)
        ends = sum(1 for t in res.trace if t["token_ids"][-1] in eos)
        assert res.stats["rewarded_tokens"] == lengths - ends


def test_best_of_n_samples_match_self_consistency_and_scorer_hook(models):
    lm, rm = models
    key = jax.random.key(2)
    kw = dict(n=2, sampling=HOT, max_length=MAX_LEN)
    sc = self_consistency(lm, PROMPTS, key, answer_extractor=len, **kw)
    # A scorer that prefers the last candidate of every prompt.
    bon = best_of_n(lm, rm, PROMPTS, key, scorer=lambda seqs: np.arange(len(seqs)) % 2, **kw)
    for a, b in zip(sc, bon, strict=True):
        assert [t["token_ids"] for t in a.trace] == [t["token_ids"] for t in b.trace]
        assert b.stats["chosen"] == 1
    one = best_of_n(lm, rm, PROMPTS, key, n=1, sampling=HOT, max_length=MAX_LEN)
    cot = sampled_cot(lm, PROMPTS, key, sampling=HOT, max_length=MAX_LEN)
    assert [r.token_ids for r in one] == [r.token_ids for r in cot]
    assert [r.token_ids for r in one] == [r.trace[0]["token_ids"] for r in sc]
    with pytest.raises(ValueError, match="scores for"):
        best_of_n(lm, rm, PROMPTS[:1], key, scorer=lambda seqs: [0.0], **kw)


# -------------------------------------------------------------------------------- self-consistency


def test_majority_vote_rules():
    assert majority_vote([1, 2, 2, 3]) == 1
    assert majority_vote([5, 7, 7, 5]) == 0  # tie: the answer seen first, its first sample
    assert majority_vote([7, 5, 5, 7]) == 0
    assert majority_vote([None, 3, None, None, 4, 4]) == 4  # None does not vote
    assert majority_vote([None, None, 9]) == 2
    assert majority_vote([None, None]) == 0  # all None: the first sample
    assert majority_vote(["a"]) == 0
    with pytest.raises(ValueError, match="at least one"):
        majority_vote([])
    with pytest.raises(TypeError, match="hashable"):
        majority_vote([[1], [1]])


def test_self_consistency_end_to_end(models):
    lm, _ = models
    n = 5

    def parity(text):  # few distinct answers, so votes are shared; empty texts abstain
        return None if not text else len(text) % 2

    results = self_consistency(
        lm,
        PROMPTS,
        jax.random.key(4),
        n=n,
        sampling=HOT,
        max_length=MAX_LEN,
        answer_extractor=parity,
    )
    for res in results:
        answers = [parity(t["text"]) for t in res.trace]
        assert [t["answer"] for t in res.trace] == answers
        assert res.stats["chosen"] == majority_vote(answers)
        assert res.stats["answer"] == answers[res.stats["chosen"]]
        if res.stats["answer"] is not None:
            assert res.stats["votes"] == answers.count(res.stats["answer"])
            assert res.stats["votes"] == max(answers.count(a) for a in set(answers) - {None})
        _check_calls(res, n)


def test_self_consistency_takes_the_tasks_extractor(models):
    """Decoding knows no task: the answer extractor is the caller's, and a missing or
    non-callable one is refused before any sample is drawn."""
    lm, _ = models
    kw = dict(n=3, sampling=HOT, max_length=4)
    with pytest.raises(TypeError, match="answer_extractor"):
        self_consistency(lm, PROMPTS[:1], jax.random.key(4), **kw)
    with pytest.raises(TypeError, match="must be callable.*extract_answer"):
        self_consistency(lm, PROMPTS[:1], jax.random.key(4), answer_extractor=3, **kw)
    seen = []
    res = self_consistency(
        lm, PROMPTS[:1], jax.random.key(4), answer_extractor=lambda t: seen.append(t) or len(seen),
        **kw,
    )  # fmt: skip
    assert [t["text"] for t in res[0].trace] == seen  # called once per sample, in order
    assert [t["answer"] for t in res[0].trace] == [1, 2, 3]


# -------------------------------------------------------------------------------- registry


def test_parse_method_and_run_baseline(models):
    assert parse_method("bon:8") == ("bon", 8)
    assert parse_method(" sc:4 ") == ("sc", 4)
    assert parse_method("greedy") == ("greedy", None)
    assert parse_method("cot") == ("cot", None)
    assert parse_method("nabla", extra=("nabla",)) == ("nabla", None)
    assert parse_method("nabla-nodto") == ("nabla-nodto", None)  # one registry: variants too
    assert set(BASELINES) == {"greedy", "cot", "bon", "sc", "wbon", "beam", "mcts"}
    for bad, msg in [
        ("beam:4", "needs 2 counts"),
        ("tree:4", "unknown method"),
        ("nabla-bogus", "unknown method"),
        ("nabla:2", "takes no sample count"),
        ("bon", "needs a sample count"),
        ("bon:0", "needs a sample count"),
        ("sc:x", "needs a sample count"),
        ("greedy:2", "takes no sample count"),
        ("", "unknown method"),
    ]:
        with pytest.raises(ValueError, match=msg):
            parse_method(bad)
    with pytest.raises(ValueError, match="known methods: greedy, cot, bon:N, sc:N"):
        parse_method("bogus")
    lm, rm = models
    key = jax.random.key(1)
    via = run_baseline("bon:2", lm, PROMPTS[:2], key, rm=rm, sampling=HOT, max_length=MAX_LEN)
    direct = best_of_n(lm, rm, PROMPTS[:2], key, n=2, sampling=HOT, max_length=MAX_LEN)
    for a, b in zip(via, direct, strict=True):
        _same(a, b)
    greedy = run_baseline("greedy", lm, PROMPTS, sampling=HOT, max_length=MAX_LEN)
    assert [r.stats["method"] for r in greedy] == ["greedy"] * len(PROMPTS)
    with pytest.raises(ValueError, match="reward model"):
        run_baseline("bon:2", lm, PROMPTS[:1], key, sampling=HOT, max_length=MAX_LEN)


def test_argument_errors(models):
    lm, rm = models
    with pytest.raises(TypeError, match="list of prompts"):
        greedy_cot(lm, "What is 2 + 2?", max_length=4)
    with pytest.raises(ValueError, match="n must be"):
        best_of_n(lm, rm, PROMPTS, jax.random.key(0), n=0, sampling=HOT, max_length=4)
    with pytest.raises(ValueError, match="needs a key"):
        sampled_cot(lm, PROMPTS, None, sampling=HOT, max_length=4)
    with pytest.raises(TypeError, match="RewardModel"):
        best_of_n(lm, lm, PROMPTS, jax.random.key(0), n=2, sampling=HOT, max_length=4)
    assert greedy_cot(lm, [], max_length=4) == []
