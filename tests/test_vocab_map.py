"""Cross-vocabulary reward models: the LM-id → RM-id table, its coverage, the refusal of
unrelated tokenizers, the rm_vocab mode, the JAX application against its PyTorch twin, and the
miniature paper pairing scored through the table against an RM re-indexed by hand."""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import nabla_jax as nj
from nabla_jax.functional.vocab_map import map_token_ids, mapped_rm_embeddings, rm_soft_embeds
from nabla_jax.text.vocab import TokenizationMismatchError, VocabMismatchError
from nabla_jax.text.vocab_map import (
    VocabCoverage,
    build_vocab_map,
    resolve_rm_vocab,
    rm_fallback_id,
    unmatched_ids,
)
from tests import tolerances as tol
from tests.paper_pair import (
    LM_PADDED_ROWS,
    RM_ADDED,
    RM_PADDED_ROWS,
    paper_tokenizers,
    reindexed_rm_by_hand,
    save_paper_pair,
)
from tests.reference import torch_vocab_map as ref
from tests.tokenizer_utils import make_chatml_tokenizer

OTHER_TEXTS = (
    "Colorless green ideas sleep furiously.",
    "Integrals: the integral of x dx is x^2 / 2 + C.",
    "Mixed-case WORDS and numbers 998877.",
)
LM_ROWS = 300 + LM_PADDED_ROWS
RM_ROWS = 300 + len(RM_ADDED) + RM_PADDED_ROWS


@pytest.fixture(scope="module")
def toks():
    return paper_tokenizers()


@pytest.fixture(scope="module")
def lm_only_tok():
    """The LM tokenizer plus a token the RM's lacks (it lands on id 300, where the RM has
    ``<think>``)."""
    tok = make_chatml_tokenizer()
    tok.add_tokens(["<|lm_only|>"])
    return tok


# ------------------------------------------------------------------------ the table


def test_paper_pair_table_and_coverage(toks):
    lm_tok, rm_tok = toks
    vm = build_vocab_map(lm_tok, rm_tok, LM_ROWS, RM_ROWS)
    np.testing.assert_array_equal(vm.table[:300], np.arange(300))
    np.testing.assert_array_equal(vm.table[300:], np.full(LM_PADDED_ROWS, rm_tok.pad_token_id))
    assert vm.table.dtype == np.int32 and not vm.table.flags.writeable
    assert vm.coverage == VocabCoverage(
        lm_rows=LM_ROWS, lm_tokens=300, rm_rows=RM_ROWS, unmatched_tokens=0,
        padded_rows=LM_PADDED_ROWS, fallback_id=0, examples=(),
    )  # fmt: skip
    assert vm.coverage.unmatched_rows == LM_PADDED_ROWS
    assert "300/300 LM tokens matched" in vm.coverage.summary()


def test_table_matches_torch_twin(toks, lm_only_tok):
    lm_tok, rm_tok = toks
    for lm in (lm_tok, lm_only_tok):
        vm = build_vocab_map(lm, rm_tok, LM_ROWS, RM_ROWS)
        np.testing.assert_array_equal(vm.table, ref.vocab_mapping(lm, rm_tok, LM_ROWS))


def test_unmatched_tokens_are_counted_and_found(toks, lm_only_tok):
    _, rm_tok = toks
    vm = build_vocab_map(lm_only_tok, rm_tok, LM_ROWS, RM_ROWS)
    assert vm.table[300] == rm_tok.pad_token_id  # not the RM's <think>, which shares id 300
    assert vm.coverage.unmatched_tokens == 1 and vm.coverage.examples == ("<|lm_only|>",)
    assert vm.coverage.padded_rows == LM_PADDED_ROWS - 1
    prompt = lm_only_tok.encode("Let's think <|lm_only|> step by step.")
    assert unmatched_ids(vm, prompt) == (300,)
    assert unmatched_ids(vm, lm_only_tok.encode("Let's think step by step.")) == ()
    assert unmatched_ids(vm, np.array([[5, 310], [7, 7]])) == (310,)  # a padded row
    assert unmatched_ids(vm, []) == ()
    with pytest.raises(nj.OutOfVocabularyError, match="outside the LM's 313 rows"):
        unmatched_ids(vm, [LM_ROWS])
    with pytest.raises(TypeError, match="integer LM token ids"):
        unmatched_ids(vm, [1.5])


def test_unrelated_tokenizers_refused_in_one_line(toks):
    lm_tok, _ = toks
    other = make_chatml_tokenizer(OTHER_TEXTS)
    with pytest.raises(TokenizationMismatchError, match="unrelated") as info:
        build_vocab_map(lm_tok, other, LM_ROWS, 300)
    assert "\n" not in str(info.value)


def test_build_errors(toks):
    lm_tok, rm_tok = toks
    with pytest.raises(ValueError, match="lm_rows must be a positive int"):
        build_vocab_map(lm_tok, rm_tok, 0, RM_ROWS)
    with pytest.raises(nj.OutOfVocabularyError, match="RM tokenizer has token id 302 but"):
        build_vocab_map(lm_tok, rm_tok, LM_ROWS, 300)
    with pytest.raises(nj.OutOfVocabularyError, match="LM tokenizer has token id 299 but"):
        build_vocab_map(lm_tok, rm_tok, 299, RM_ROWS)
    with pytest.raises(ValueError, match="fallback_id 400 is outside the RM's 308 rows"):
        build_vocab_map(lm_tok, rm_tok, LM_ROWS, RM_ROWS, fallback_id=400)
    with pytest.raises(TypeError, match="get_vocab"):
        build_vocab_map(lm_tok, None, LM_ROWS, RM_ROWS)
    with pytest.raises(TypeError, match="sequence of strings"):
        build_vocab_map(lm_tok, rm_tok, LM_ROWS, RM_ROWS, samples="one string")


def test_fallback_order(toks):
    _, rm_tok = toks
    assert rm_fallback_id(rm_tok, RM_ROWS) == rm_tok.pad_token_id
    no_pad = copy.deepcopy(rm_tok)
    no_pad.pad_token = None
    assert rm_fallback_id(no_pad, RM_ROWS) == no_pad.eos_token_id  # no unk in this tokenizer
    no_pad.unk_token = "<|im_start|>"
    assert rm_fallback_id(no_pad, RM_ROWS) == 1
    with pytest.raises(ValueError, match="outside the RM's 1 embedding rows"):
        rm_fallback_id(no_pad, 1)

    class Bare:
        pad_token_id = unk_token_id = eos_token_id = None

    with pytest.raises(ValueError, match="no pad, unk or eos token"):
        rm_fallback_id(Bare(), RM_ROWS)


# ------------------------------------------------------------------------ the mode


def test_resolve_rm_vocab(toks, lm_only_tok):
    lm_tok, rm_tok = toks
    same = make_chatml_tokenizer()
    assert resolve_rm_vocab(None, lm_tok, same, 300, 300) == "shared"
    assert resolve_rm_vocab(None, lm_tok, same, LM_ROWS, 300) == "by_string"  # padded rows
    assert resolve_rm_vocab(None, lm_tok, rm_tok, LM_ROWS, RM_ROWS) == "by_string"
    assert resolve_rm_vocab(None, lm_only_tok, rm_tok, LM_ROWS, RM_ROWS) == "by_string"
    assert resolve_rm_vocab("by_string", lm_tok, same, 300, 300) == "by_string"
    assert resolve_rm_vocab("shared", lm_tok, same, 300, 300) == "shared"
    assert resolve_rm_vocab(None, lm_tok, None, 300, 300) == "shared"
    other = make_chatml_tokenizer(OTHER_TEXTS)
    with pytest.raises(ValueError, match="differ beyond added tokens.*set rm_vocab 'by_string'"):
        resolve_rm_vocab(None, lm_tok, other, 300, 300)
    with pytest.raises(ValueError, match=r"one of shared, by_string .*got 'bystring'"):
        resolve_rm_vocab("bystring", lm_tok, rm_tok, LM_ROWS, RM_ROWS)
    with pytest.raises(VocabMismatchError, match="313 != RM vocabulary size 308"):
        resolve_rm_vocab("shared", lm_tok, rm_tok, LM_ROWS, RM_ROWS)
    with pytest.raises(ValueError, match="needs the RM's own tokenizer"):
        resolve_rm_vocab("by_string", lm_tok, None, 300, 300)
    with pytest.raises(VocabMismatchError, match="no tokenizer to match"):
        resolve_rm_vocab(None, lm_tok, None, LM_ROWS, 300)


# ------------------------------------------------------------------------ JAX application


def test_soft_embeds_match_torch_twin(toks):
    lm_tok, rm_tok = toks
    vm = build_vocab_map(lm_tok, rm_tok, LM_ROWS, RM_ROWS)
    rng = np.random.RandomState(0)
    embed = rng.randn(RM_ROWS, 16).astype(np.float32)
    y = jax.nn.softmax(jnp.asarray(rng.randn(2, 5, LM_ROWS) * 3, jnp.float32), -1)
    mapping = ref.vocab_mapping(lm_tok, rm_tok, LM_ROWS)
    # Row gathers are exact.
    np.testing.assert_array_equal(
        mapped_rm_embeddings(jnp.asarray(embed), vm.table),
        ref.aligned_rm_embed(torch.from_numpy(embed), mapping).numpy(),
    )
    got = rm_soft_embeds(y, jnp.asarray(embed), vm.table)
    want = ref.rm_soft_embeds(torch.from_numpy(np.array(y)), torch.from_numpy(embed), mapping)
    # y @ rows: a V_lm-term dot product per output, summed in another order by each library.
    abs_sum = np.abs(np.asarray(y)) @ np.abs(embed[np.asarray(vm.table)])
    tol.assert_within(got, want.numpy(), tol.reduction_bound(abs_sum.max(), LM_ROWS), "y @ E[t]")
    ids = np.array([[0, 5, 299, 300, 312]])
    np.testing.assert_array_equal(map_token_ids(vm.table, ids), [[0, 5, 299, 0, 0]])


def test_application_errors(toks):
    lm_tok, rm_tok = toks
    vm = build_vocab_map(lm_tok, rm_tok, LM_ROWS, RM_ROWS)
    with pytest.raises(ValueError, match=r"outside the RM's 200 embedding rows"):
        mapped_rm_embeddings(jnp.zeros((200, 4)), vm.table + 250)
    with pytest.raises(ValueError, match=r"\[V_lm\] integer"):
        mapped_rm_embeddings(jnp.zeros((RM_ROWS, 4)), vm.table.astype(np.float32))
    with pytest.raises(ValueError, match=r"\[V_rm, H_rm\]"):
        mapped_rm_embeddings(jnp.zeros((RM_ROWS,)), vm.table)
    with pytest.raises(ValueError, match="outside the table's 313 LM rows"):
        map_token_ids(vm.table, [LM_ROWS])
    with pytest.raises(ValueError, match="last axis .300. must be the LM vocabulary"):
        rm_soft_embeds(jnp.zeros((2, 300)), jnp.zeros((RM_ROWS, 4)), vm.table)


# ------------------------------------------------------------------------ the paper pairing


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("paper_pair")
    _, rm_tok, _, rm_t = save_paper_pair(d)
    lm_tok = nj.load_causal_lm(d / "lm").tokenizer  # as a user loads it (save_paper_pair's class)
    rm = nj.load_reward_model(d / "rm")
    assert rm.config.model_type == "qwen3" and rm.config.vocab_size == RM_ROWS
    return lm_tok, rm_tok, rm_t, rm


def test_scoring_through_table_equals_rm_reindexed_by_hand(pair):
    lm_tok, rm_tok, rm_t, rm = pair
    vm = build_vocab_map(lm_tok, rm.tokenizer, LM_ROWS, rm.config.vocab_size)
    hand = reindexed_rm_by_hand(rm_t, lm_tok, rm_tok, LM_ROWS)
    text = "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\nThe answer is 4."
    ids = np.array([lm_tok.encode(text)[:12]] * 2)
    ids[1, 3] = 306  # an LM padding row: the fallback row on both sides
    rng = np.random.RandomState(1)
    y = np.asarray(jax.nn.softmax(jnp.asarray(rng.randn(2, 12, LM_ROWS) * 4, jnp.float32), -1))

    def run(m):
        by_ids = m.score(map_token_ids(vm.table, ids), jnp.ones(ids.shape, jnp.int32))
        embeds = rm_soft_embeds(jnp.asarray(y), m.embed_matrix(), vm.table)
        return by_ids, m.score(inputs_embeds=embeds, attention_mask=jnp.ones(ids.shape))

    got_ids, got_soft = run(rm)
    with torch.no_grad():
        want_ids = hand(input_ids=torch.from_numpy(ids)).logits[:, 0].numpy()
        emb = torch.from_numpy(y) @ hand.model.embed_tokens.weight
        want_soft = hand(inputs_embeds=emb).logits[:, 0].numpy()
    # Another reduction order of the same model: the RM's own sensitivity inside float32's
    # backward-error ball, its longest contraction being the V_lm-term soft embedding.
    rel = tol.gamma(tol.longest_contraction(rm, extra=LM_ROWS))
    b_ids, b_soft = tol.ball_tolerance(run, rm, rel, (rm.config.hidden_size, LM_ROWS))
    tol.assert_within(got_ids, want_ids, b_ids, "scores of mapped ids")
    tol.assert_within(got_soft, want_soft, b_soft, "scores of soft one-hots")
    assert np.ptp(want_ids) > 1e-3 and np.ptp(want_soft) > 1e-3  # the rows tell apart


def test_dto_through_table_equals_dto_on_rm_reindexed_by_hand(pair, tmp_path):
    """DTO (nj.refine) on the miniature pairing with rm_embed = E_rm[table] equals DTO with an
    RM whose embedding table was re-indexed to the LM's vocabulary by hand."""
    lm_tok, rm_tok, rm_t, rm = pair
    lm_dir = tmp_path / "pair"
    save_paper_pair(lm_dir)  # same seed: the same LM as the pair fixture's
    lm = nj.load_causal_lm(lm_dir / "lm")
    hand_t = reindexed_rm_by_hand(rm_t, lm_tok, rm_tok, LM_ROWS)
    hand_t.save_pretrained(tmp_path / "hand")
    hand = nj.load_reward_model(tmp_path / "hand", tokenizer=False)
    vm = build_vocab_map(lm_tok, rm.tokenizer, LM_ROWS, rm.config.vocab_size)
    rng = np.random.RandomState(7)
    # RM prefix / suffix ids below 300 mean the same token in the RM and in the hand-made RM.
    prob = nj.RefineProblem(
        lm_prefix_ids=rng.randint(3, 300, 6).tolist(),
        rm_prefix_ids=rng.randint(3, 300, 4).tolist(),
        rm_suffix_ids=rng.randint(3, 300, 2).tolist(),
        init=(rng.randn(4, LM_ROWS) * 0.5).astype(np.float32),
    )
    cfg = nj.DTOConfig(num_steps=4, learning_rate=0.3, update_postfix=True, grad_caching=False)
    key = jax.random.key(0)

    def run(ms):
        table = mapped_rm_embeddings(ms[1].embed_matrix(), vm.table)
        res = nj.refine(ms[0], ms[1], prob, cfg, key, rm_embed=table)
        return res.logits, res.trace.loss

    got = nj.refine(lm, hand, prob, cfg, key)
    want_logits, want_loss = run((lm, rm))
    # The same refinement reading bit-identical rows, in another program: its own sensitivity
    # inside float32's backward-error ball (tests/tolerances.py), as in test_functional.
    rel = tol.gamma(tol.longest_contraction(lm, rm, extra=LM_ROWS))
    b_logits, b_loss = tol.ball_tolerance(run, (lm, rm), rel, (LM_ROWS, LM_ROWS * 4))
    tol.assert_within(got.logits, want_logits, b_logits, "refined logits")
    tol.assert_within(got.trace.loss, want_loss, b_loss, "losses")
    np.testing.assert_array_equal(got.tokens, np.argmax(np.asarray(want_logits), -1))
    assert not np.allclose(np.asarray(want_logits), prob.init)  # the reward moved the window


def test_resolve_rm_vocabulary_for_model_pairs(pair):
    from types import SimpleNamespace

    from nabla_jax.functional.vocab_map import resolve_rm_vocabulary

    lm_tok, _, _, rm = pair
    lm = SimpleNamespace(tokenizer=lm_tok, config=SimpleNamespace(vocab_size=LM_ROWS))
    rv = resolve_rm_vocabulary(lm, rm)
    assert rv.mode == "by_string" and rv.vocab_map.coverage.padded_rows == LM_PADDED_ROWS
    np.testing.assert_array_equal(rv.rm_ids([[4, 310]]), [[4, 0]])
    rows = rv.embed_table(rm.embed_matrix())
    assert rows.shape == (LM_ROWS, rm.config.hidden_size)
    np.testing.assert_array_equal(rows[310], rm.embed_matrix()[0])
    same = SimpleNamespace(tokenizer=lm_tok, config=SimpleNamespace(vocab_size=300))
    shared = resolve_rm_vocabulary(same, same)
    assert shared.mode == "shared" and shared.vocab_map is None
    np.testing.assert_array_equal(shared.rm_ids([5, 6]), [5, 6])
    with pytest.raises(VocabMismatchError, match="313 != RM vocabulary size 308"):
        resolve_rm_vocabulary(lm, rm, "shared")
    with pytest.raises(ValueError, match="the LM has no tokenizer"):
        resolve_rm_vocabulary(SimpleNamespace(tokenizer=None, config=lm.config), rm)
