"""The paper's model pairing in the decoder: a Qwen2 policy with padded rows and a Qwen3 reward
model whose tokenizer adds tokens (``tests/paper_pair.py``), read ``rm_vocab: by_string``.

The decoder on that pair must equal the decoder on the same RM with its embedding table
re-indexed to the LM's vocabulary by hand (``reindexed_rm_by_hand``, the LM's tokenizer): every
id the RM reads and every RM embedding row DTO differentiates through is the same row in both,
in programs of the same shapes, so tokens, counters and scores agree exactly.
"""

from __future__ import annotations

import dataclasses

import jax
import pytest

import nabla_jax as nj
from nabla_jax.decoding import best_of_n
from nabla_jax.decoding.pair import check_pair
from tests.paper_pair import (
    LM_PADDED_ROWS,
    reindexed_rm_by_hand,
    same_tokenizer_class,
    save_paper_pair,
)
from tests.tiny_decode import PROMPTS, TINY_DECODE


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """``(lm, rm, hand)``: the miniature pairing and the hand re-indexed RM (shared vocab)."""
    d = tmp_path_factory.mktemp("paper")
    lm_tok, rm_tok, _, rm_t = save_paper_pair(d)
    hand = reindexed_rm_by_hand(rm_t, lm_tok, rm_tok, len(lm_tok) + LM_PADDED_ROWS)
    hand.save_pretrained(d / "hand")
    lm_tok.save_pretrained(d / "hand")  # the LM's ids, the RM's weights
    same_tokenizer_class(d / "hand")
    lm = nj.load_causal_lm(d / "lm")
    return lm, nj.load_reward_model(d / "rm"), nj.load_reward_model(d / "hand")


def test_default_is_by_string_and_shared_is_refused(pairs):
    lm, rm, hand = pairs
    checked = check_pair(lm, rm, "the decoder")
    assert checked.vocabulary.mode == "by_string"
    cov = checked.vocabulary.vocab_map.coverage
    assert cov.padded_rows == LM_PADDED_ROWS  # the LM's padded rows have no RM token
    assert check_pair(lm, hand, "the decoder").vocabulary.mode == "shared"
    with pytest.raises(ValueError, match="vocabulary"):
        nj.NablaDecoder(lm, rm, TINY_DECODE, rm_vocab="shared")
    with pytest.raises(ValueError, match="rm_vocab"):
        nj.NablaDecoder(lm, rm, TINY_DECODE, rm_vocab="by-string")


@pytest.mark.parametrize("use_dto", [True, False])
def test_decoder_on_the_pairing_equals_the_rm_reindexed_by_hand(pairs, use_dto):
    lm, rm, hand = pairs
    cfg = TINY_DECODE if use_dto else dataclasses.replace(TINY_DECODE, use_dto=False)
    key = jax.random.key(3)
    got = nj.NablaDecoder(lm, rm, cfg).generate(PROMPTS, key)
    want = nj.NablaDecoder(lm, hand, cfg).generate(PROMPTS, key)
    assert [r.token_ids for r in got] == [r.token_ids for r in want]
    assert [r.stats for r in got] == [r.stats for r in want]
    assert [r.trace for r in got] == [r.trace for r in want]
    assert sum(r.stats["score_calls"] for r in got) > 0  # the RM was read


def test_best_of_n_on_the_pairing_equals_the_rm_reindexed_by_hand(pairs):
    lm, rm, hand = pairs
    kw = dict(n=3, sampling=nj.SamplingConfig(temperature=1.0), max_length=10)
    key = jax.random.key(4)
    got = best_of_n(lm, rm, PROMPTS, key, **kw)
    want = best_of_n(lm, hand, PROMPTS, key, **kw)
    assert [r.token_ids for r in got] == [r.token_ids for r in want]
    assert [t["score"] for r in got for t in r.trace] == [t["score"] for r in want for t in r.trace]
