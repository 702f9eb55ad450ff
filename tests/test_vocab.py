"""Vocabulary checks and cross-tokenizer embedding alignment."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from nabla_jax.text.vocab import (
    DEFAULT_SAMPLES,
    OutOfVocabularyError,
    TokenizationMismatchError,
    VocabMismatchError,
    VocabSizeMismatchError,
    align_rm_embeddings,
    align_rm_vocab_indices,
    check_token_ids_in_range,
    check_vocab_compatibility,
)
from tests.tokenizer_utils import make_chatml_tokenizer

OTHER_TEXTS = (
    "Colorless green ideas sleep furiously.",
    "Integrals: the integral of x dx is x^2 / 2 + C.",
    "Mixed-case WORDS and numbers 998877.",
)


@pytest.fixture(scope="module")
def tok_a():
    return make_chatml_tokenizer(vocab_size=300)


@pytest.fixture(scope="module")
def tok_a2():
    return make_chatml_tokenizer(vocab_size=300)  # built independently, same data


@pytest.fixture(scope="module")
def tok_b():
    return make_chatml_tokenizer(OTHER_TEXTS, vocab_size=300)


class _BareVocab:
    """Duck-typed tokenizer with a vocabulary but no pad / eos ids."""

    def __init__(self, vocab):
        self._vocab = dict(vocab)

    def get_vocab(self):
        return dict(self._vocab)


# ------------------------------------------------------------------ check_vocab_compatibility


def test_compatible_tokenizers_pass(tok_a, tok_a2):
    assert len(tok_a) == 300
    check_vocab_compatibility(tok_a, tok_a, 300, 300)
    check_vocab_compatibility(tok_a, tok_a2, 304, 304)  # padded embedding tables are fine
    check_vocab_compatibility(tok_a, tok_a2, 300, 300, rm_embed_rows=300, samples=["x y z"])


def test_error_hierarchy():
    for cls in (VocabSizeMismatchError, TokenizationMismatchError, OutOfVocabularyError):
        assert issubclass(cls, VocabMismatchError) and issubclass(cls, ValueError)
    assert len({VocabSizeMismatchError, TokenizationMismatchError, OutOfVocabularyError}) == 3


def test_size_mismatch(tok_a):
    with pytest.raises(
        VocabSizeMismatchError,
        match=r"300 != RM vocabulary size 301.*rm_embed=nabla_jax.text.vocab.align_rm_embeddings",
    ):
        check_vocab_compatibility(tok_a, tok_a, 300, 301)


def test_tokenization_mismatch_names_string_and_encodings(tok_a, tok_b):
    assert len(tok_a) == len(tok_b)
    sample = "The quick brown fox"
    with pytest.raises(TokenizationMismatchError) as err:
        check_vocab_compatibility(tok_a, tok_b, 300, 300, samples=[sample])
    msg = str(err.value)
    assert repr(sample) in msg and "same tokenizer" in msg
    # The advice names a parameter that exists: refine(..., rm_embed=align_rm_embeddings(...)).
    assert "align=True" not in msg and "rm_embed=nabla_jax.text.vocab.align_rm_embeddings(" in msg
    lm_ids = tok_a.encode(sample, add_special_tokens=False)
    rm_ids = tok_b.encode(sample, add_special_tokens=False)
    assert f"LM -> {lm_ids}" in msg and f"RM -> {rm_ids}" in msg


def test_default_samples_catch_mismatch(tok_a, tok_b):
    assert len(DEFAULT_SAMPLES) >= 5
    with pytest.raises(TokenizationMismatchError):
        check_vocab_compatibility(tok_a, tok_b, 300, 300)


def test_out_of_vocabulary_rm_rows(tok_a):
    with pytest.raises(OutOfVocabularyError, match=r"RM embedding table has only 280 rows"):
        check_vocab_compatibility(tok_a, tok_a, 300, 300, rm_embed_rows=280)


def test_out_of_vocabulary_lm_rows(tok_a):
    with pytest.raises(OutOfVocabularyError, match=r"LM embedding table has only 250 rows"):
        check_vocab_compatibility(tok_a, tok_a, 250, 250)


@pytest.mark.parametrize(
    "args, kwargs, exc, match",
    [
        ((None, "T", 10, 10), {}, ValueError, "lm_tokenizer is None"),
        (("T", None, 10, 10), {}, ValueError, "rm_tokenizer is None"),
        ((object(), "T", 10, 10), {}, TypeError, "lacks encode"),
        (("T", "T", 0, 10), {}, ValueError, "lm_vocab_size must be a positive int"),
        (("T", "T", 10, 2.5), {}, ValueError, "rm_vocab_size must be a positive int"),
        (("T", "T", 10, 10), {"rm_embed_rows": -3}, ValueError, "rm_embed_rows"),
        (("T", "T", 10, 10), {"samples": "one string"}, TypeError, "sequence of strings"),
    ],
)
def test_bad_arguments(tok_a, args, kwargs, exc, match):
    args = tuple(tok_a if a == "T" else a for a in args)
    with pytest.raises(exc, match=match):
        check_vocab_compatibility(*args, **kwargs)


# ------------------------------------------------------------------- check_token_ids_in_range


def test_ids_in_range_ok():
    check_token_ids_in_range([0, 5, 9], 10, "ids")
    check_token_ids_in_range(np.zeros((2, 3), np.int64), 1, "ids")
    check_token_ids_in_range(jnp.array([[1, 2]], jnp.int32), 3, "ids")
    check_token_ids_in_range([], 3, "ids")


@pytest.mark.parametrize("ids", [[0, 10, 3], [-1, 2], np.array([[4, 12], [11, 0]])])
def test_ids_out_of_range(ids):
    with pytest.raises(OutOfVocabularyError, match=r"prefix ids contain .* outside \[0, 10\)"):
        check_token_ids_in_range(ids, 10, "prefix ids")


def test_ids_check_bad_inputs():
    with pytest.raises(TypeError, match="integer token ids"):
        check_token_ids_in_range(np.array([1.0, 2.0]), 10, "ids")
    with pytest.raises(ValueError, match="num_rows must be a positive int"):
        check_token_ids_in_range([1], 0, "ids")
    with pytest.raises(TypeError, match="outside jax.jit"):
        jax.jit(lambda x: check_token_ids_in_range(x, 10, "ids"))(jnp.array([1]))


# ------------------------------------------------------------------------------- alignment


def _naive_indices(lm_tok, rm_tok, lm_vocab_size, fallback):
    """Per-id reference: E_rm[rm_vocab.get(lm_token_string(v), fallback)]."""
    rm_vocab = rm_tok.get_vocab()
    out, matched = [], []
    for v in range(lm_vocab_size):
        s = lm_tok.convert_ids_to_tokens(v) if v < len(lm_tok) else None
        out.append(rm_vocab.get(s, fallback))
        matched.append(s in rm_vocab)
    return np.array(out), np.array(matched)


def test_align_same_tokenizer_is_identity_plus_padding(tok_a, tok_a2):
    idx, matched = align_rm_vocab_indices(tok_a, tok_a2, 304)
    assert idx.dtype == np.int32 and idx.shape == (304,) and matched.dtype == bool
    np.testing.assert_array_equal(idx[:300], np.arange(300))
    assert matched[:300].all() and not matched[300:].any()
    np.testing.assert_array_equal(idx[300:], tok_a2.pad_token_id)


def test_align_cross_tokenizer_matches_naive(tok_a, tok_b):
    idx, matched = align_rm_vocab_indices(tok_a, tok_b, 302, fallback_id=7)
    want_idx, want_matched = _naive_indices(tok_a, tok_b, 302, 7)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(matched, want_matched)
    assert matched[:259].all()  # specials + byte alphabet are shared
    assert 0 < matched.sum() < 300  # some merges differ


def test_align_embeddings_parity_with_torch(tok_a, tok_b):
    rm_embed = np.random.default_rng(0).standard_normal((310, 6)).astype(np.float32)
    got = align_rm_embeddings(tok_a, tok_b, jnp.asarray(rm_embed), 304)
    assert got.shape == (304, 6) and got.dtype == jnp.float32
    idx, _ = _naive_indices(tok_a, tok_b, 304, tok_b.pad_token_id)
    want = torch.index_select(torch.from_numpy(rm_embed), 0, torch.from_numpy(idx)).numpy()
    np.testing.assert_array_equal(np.asarray(got), want)  # a gather: exact


def test_fallback_order_pad_eos_zero(tok_a):
    vocab = {"a": 0, "b": 1, "c": 2}
    bare = _BareVocab(vocab)
    idx, _ = align_rm_vocab_indices(_BareVocab({"zz": 0}), bare, 2)
    np.testing.assert_array_equal(idx, [0, 0])
    bare.eos_token_id = 2
    idx, _ = align_rm_vocab_indices(_BareVocab({"zz": 0}), bare, 2)
    np.testing.assert_array_equal(idx, [2, 2])
    bare.pad_token_id = 1
    idx, matched = align_rm_vocab_indices(_BareVocab({"zz": 0, "c": 1}), bare, 2)
    np.testing.assert_array_equal(idx, [1, 2])
    np.testing.assert_array_equal(matched, [False, True])


def test_align_errors(tok_a, tok_b):
    rm_embed = jnp.zeros((300, 4))
    with pytest.raises(ValueError, match=r"rm_embed must be the \[V_rm, D\]"):
        align_rm_embeddings(tok_a, tok_b, jnp.zeros((300,)), 300)
    with pytest.raises(OutOfVocabularyError, match="fallback_id"):
        align_rm_embeddings(tok_a, tok_b, rm_embed, 304, fallback_id=300)
    with pytest.raises(OutOfVocabularyError, match="aligned RM ids"):
        align_rm_embeddings(tok_a, tok_b, jnp.zeros((100, 4)), 300)
    with pytest.raises(ValueError, match="non-negative"):
        align_rm_vocab_indices(tok_a, tok_b, 300, fallback_id=-1)
    with pytest.raises(TypeError, match="fallback_id must be an int"):
        align_rm_vocab_indices(tok_a, tok_b, 300, fallback_id=True)
    with pytest.raises(OutOfVocabularyError, match="lm_vocab_size 200"):
        align_rm_vocab_indices(tok_a, tok_b, 200)
    with pytest.raises(ValueError, match="rm_tokenizer is None"):
        align_rm_vocab_indices(tok_a, None, 300)
    with pytest.raises(TypeError, match="lacks get_vocab"):
        align_rm_vocab_indices(object(), tok_b, 300)
