"""The tree searches and weighted Best-of-N on the paper's model pairing (``rm_vocab:
by_string``, ``tests/paper_pair.py``) equal them on the RM re-indexed to the LM's vocabulary by
hand: every id the RM reads is the same row in both, in programs of the same shapes."""

from __future__ import annotations

import jax
import pytest

import nabla_jax as nj
from tests.paper_pair import (
    LM_PADDED_ROWS,
    reindexed_rm_by_hand,
    same_tokenizer_class,
    save_paper_pair,
)
from tests.tiny_decode import PROMPTS

HOT = nj.SamplingConfig(temperature=1.0)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    d = tmp_path_factory.mktemp("paper")
    lm_tok, rm_tok, _, rm_t = save_paper_pair(d)
    hand = reindexed_rm_by_hand(rm_t, lm_tok, rm_tok, len(lm_tok) + LM_PADDED_ROWS)
    hand.save_pretrained(d / "hand")
    lm_tok.save_pretrained(d / "hand")
    same_tokenizer_class(d / "hand")
    lm = nj.load_causal_lm(d / "lm")
    return lm, nj.load_reward_model(d / "rm"), nj.load_reward_model(d / "hand")


def _same(got, want):
    assert [r.token_ids for r in got] == [r.token_ids for r in want]
    assert [t["score"] for r in got for t in r.trace] == [t["score"] for r in want for t in r.trace]
    assert sum(r.stats["score_calls"] for r in got) > 0  # the RM was read


def test_searches_on_the_pairing_equal_the_rm_reindexed_by_hand(pairs):
    lm, rm, hand = pairs
    key = jax.random.key(4)
    kw = dict(sampling=HOT, max_length=10, step_delimiter=" ")
    for run in (
        lambda r: nj.beam_search(lm, r, PROMPTS, key, beams=2, expansions=2, **kw),
        lambda r: nj.mcts(lm, r, PROMPTS, key, branch=2, max_depth=2, **kw),
        lambda r: nj.weighted_best_of_n(
            lm, r, PROMPTS, key, n=3, sampling=HOT, max_length=10, answer_extractor=len
        ),  # fmt: skip
    ):
        _same(run(rm), run(hand))
