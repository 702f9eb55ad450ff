"""Vocabulary checks between an LM and a reward model, and cross-tokenizer embedding alignment.

∇-Reasoner feeds the LM's relaxed one-hot tokens ``y [K, V_lm]`` straight into the reward model as
``y @ E_rm``. That is only meaningful when LM token id ``v`` *means* the same text as RM token id
``v``. :func:`check_vocab_compatibility` verifies that (sizes, tokenization of sample strings, ids
in range) before any compute is spent; when the tokenizers differ, :func:`align_rm_embeddings`
builds an RM embedding table indexed by LM ids
(docs/algorithm.md#vocabularies-and-cross-tokenizer-alignment):

    E_rm_aligned[v] = E_rm[rm_vocab.get(lm_token_string(v), fallback_id)]

Tokenizers are duck-typed Hugging Face tokenizers: they need ``encode(text,
add_special_tokens=False)``, ``get_vocab()`` and ``len()``; ``pad_token_id`` / ``eos_token_id``
are read when present.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "DEFAULT_SAMPLES",
    "OutOfVocabularyError",
    "TokenizationMismatchError",
    "VocabMismatchError",
    "VocabSizeMismatchError",
    "align_rm_embeddings",
    "align_rm_vocab_indices",
    "check_token_ids_in_range",
    "check_vocab_compatibility",
]

_WHAT_TO_DO = (
    "Use the same tokenizer (and vocabulary) for the LM and the reward model, or align them: "
    "pass rm_embed=nabla_jax.text.vocab.align_rm_embeddings(lm_tok, rm_tok, rm.embed_matrix(), "
    "lm_vocab_size) to nabla_jax.functional.refine (cross-tokenizer alignment; Python API only)."
)

#: Strings whose encodings must agree between LM and RM tokenizers: prose, math, digits, code,
#: whitespace runs, and non-ASCII text (where byte-level vocabularies most often diverge).
DEFAULT_SAMPLES: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "Let's think step by step. First, 12 * 34 = 408, so the answer is \\boxed{408}.",
    "Solve $x^2 - 5x + 6 = 0$: the roots are $x = 2$ and $x = 3$.",
    "def f(x):\n    return x ** 2  # square\n",
    "  leading spaces,\ttabs,\n\nand blank lines  ",
    "1234567890 3.14159 -42 1e-8 100,000",
    "Ünïcödé: naïve café, 数学题, ∑_{i=1}^{n} i, 🙂",
)


class VocabMismatchError(ValueError):
    """Base class: the LM and RM vocabularies cannot be used together as they are."""


class VocabSizeMismatchError(VocabMismatchError):
    """The LM and RM vocabulary sizes (embedding rows) differ."""


class TokenizationMismatchError(VocabMismatchError):
    """The LM and RM tokenizers encode some sample string differently."""


class OutOfVocabularyError(VocabMismatchError):
    """Some token id falls outside an embedding table."""


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive int (a vocabulary size), got {value!r}.")
    return int(value)


def _check_tokenizer(tokenizer: Any, name: str, *needs: str) -> None:
    if tokenizer is None:
        raise ValueError(
            f"{name} is None: pass a Hugging Face tokenizer (e.g. AutoTokenizer.from_pretrained)."
        )
    missing = [attr for attr in needs if not hasattr(tokenizer, attr)]
    if missing:
        raise TypeError(
            f"{name} ({type(tokenizer).__name__}) lacks {', '.join(missing)}: pass a Hugging Face "
            "tokenizer (e.g. transformers.PreTrainedTokenizerFast)."
        )


def _encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens, as a plain list of ints."""
    return [int(i) for i in tokenizer.encode(text, add_special_tokens=False)]


def _preview(ids: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(str(int(i)) for i in ids[:limit])
    return f"[{shown}{', ...' if ids.size > limit else ''}]"


def check_token_ids_in_range(ids: Any, num_rows: int, what: str) -> None:
    """Raise :class:`OutOfVocabularyError` unless every id satisfies ``0 <= id < num_rows``.

    Args:
      ids: integer token ids of any shape ``[...]`` (list, NumPy or concrete JAX array).
        Must be concrete: call this outside ``jax.jit``.
      num_rows: number of rows of the embedding table the ids index.
      what: a short name for the ids used in the message (e.g. ``"RM prefix ids"``).
    """
    num_rows = _check_positive_int(num_rows, "num_rows")
    if isinstance(ids, jax.core.Tracer):
        raise TypeError(
            f"check_token_ids_in_range({what}) needs concrete ids, got a traced array: "
            "call it outside jax.jit / vmap."
        )
    arr = np.asarray(ids)
    if arr.size == 0:
        return
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{what} must be integer token ids, got dtype {arr.dtype}.")
    bad = np.unique(arr[(arr < 0) | (arr >= num_rows)])
    if bad.size:
        raise OutOfVocabularyError(
            f"{what} contain {bad.size} id(s) outside [0, {num_rows}) of the embedding table: "
            f"{_preview(bad)}. Make sure the ids come from the tokenizer that matches this model. "
            + _WHAT_TO_DO
        )


# --------------------------------------------------------------------------------------------
# Compatibility check
# --------------------------------------------------------------------------------------------


def check_vocab_compatibility(
    lm_tokenizer: Any,
    rm_tokenizer: Any,
    lm_vocab_size: int,
    rm_vocab_size: int,
    *,
    samples: Sequence[str] = DEFAULT_SAMPLES,
    rm_embed_rows: int | None = None,
) -> None:
    """Check that LM token ids can be fed to the RM unchanged; raise if not.

    Checks, in order (cheapest first):

    1. ``lm_vocab_size == rm_vocab_size`` (the models' embedding rows / ``config.vocab_size``),
       else :class:`VocabSizeMismatchError`.
    2. Every id the LM tokenizer can produce (``len(lm_tokenizer)``) indexes a row of the LM
       table and of the RM table (``rm_embed_rows``, default ``rm_vocab_size``), else
       :class:`OutOfVocabularyError`.
    3. ``lm_tokenizer.encode(s) == rm_tokenizer.encode(s)`` (without special tokens) for every
       sample string, else :class:`TokenizationMismatchError` naming the string and both
       encodings.

    All three are subclasses of :class:`VocabMismatchError` (a ``ValueError``).
    """
    _check_tokenizer(lm_tokenizer, "lm_tokenizer", "encode", "__len__")
    _check_tokenizer(rm_tokenizer, "rm_tokenizer", "encode", "__len__")
    lm_vocab_size = _check_positive_int(lm_vocab_size, "lm_vocab_size")
    rm_vocab_size = _check_positive_int(rm_vocab_size, "rm_vocab_size")
    rm_rows = (
        rm_vocab_size
        if rm_embed_rows is None
        else _check_positive_int(rm_embed_rows, "rm_embed_rows")
    )
    if isinstance(samples, str) or not all(isinstance(s, str) for s in samples):
        raise TypeError("samples must be a sequence of strings (not a single string).")

    if lm_vocab_size != rm_vocab_size:
        raise VocabSizeMismatchError(
            f"LM vocabulary size {lm_vocab_size} != RM vocabulary size {rm_vocab_size}. "
            + _WHAT_TO_DO
        )

    lm_len = len(lm_tokenizer)
    for rows, table in ((lm_vocab_size, "LM"), (rm_rows, "RM")):
        if lm_len > rows:
            raise OutOfVocabularyError(
                f"The LM tokenizer has {lm_len} tokens but the {table} embedding table has only "
                f"{rows} rows: LM token ids {rows}..{lm_len - 1} have no {table} embedding. "
                + _WHAT_TO_DO
            )

    for text in samples:
        lm_ids = _encode(lm_tokenizer, text)
        rm_ids = _encode(rm_tokenizer, text)
        if lm_ids != rm_ids:
            raise TokenizationMismatchError(
                f"The LM and RM tokenizers encode the sample {text!r} differently: "
                f"LM -> {lm_ids}, RM -> {rm_ids}. " + _WHAT_TO_DO
            )
        check_token_ids_in_range(lm_ids, rm_rows, f"LM ids of sample {text!r}")


# --------------------------------------------------------------------------------------------
# Cross-tokenizer alignment
# --------------------------------------------------------------------------------------------


def _default_fallback_id(rm_tokenizer: Any) -> int:
    """RM pad id, else eos id, else 0."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(rm_tokenizer, attr, None)
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return 0


def align_rm_vocab_indices(
    lm_tokenizer: Any,
    rm_tokenizer: Any,
    lm_vocab_size: int,
    *,
    fallback_id: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """RM row index for every LM token id, matched by token string.

    ``indices[v] = rm_vocab[s]`` when the LM token string ``s`` of id ``v`` is in the RM
    vocabulary, else ``fallback_id`` (default: RM pad id, then eos id, then 0). LM ids without a
    token (``v >= len(lm_tokenizer)``, the padding rows of an embedding table) get the fallback.

    Args:
      lm_tokenizer, rm_tokenizer: Hugging Face tokenizers (need ``get_vocab()``).
      lm_vocab_size: ``V_lm``, rows of the LM embedding table.
      fallback_id: RM id used for unmatched LM tokens.

    Returns:
      ``(indices [V_lm] int32, matched [V_lm] bool)`` as NumPy arrays; ``matched[v]`` is True
      where LM id ``v`` found an exact token-string match in the RM vocabulary.
    """
    _check_tokenizer(lm_tokenizer, "lm_tokenizer", "get_vocab")
    _check_tokenizer(rm_tokenizer, "rm_tokenizer", "get_vocab")
    lm_vocab_size = _check_positive_int(lm_vocab_size, "lm_vocab_size")
    if fallback_id is None:
        fallback_id = _default_fallback_id(rm_tokenizer)
    elif isinstance(fallback_id, bool) or not isinstance(fallback_id, (int, np.integer)):
        raise TypeError(f"fallback_id must be an int RM token id, got {fallback_id!r}.")
    if fallback_id < 0:
        raise ValueError(f"fallback_id must be a non-negative RM token id, got {fallback_id}.")

    lm_vocab = lm_tokenizer.get_vocab()
    rm_vocab = rm_tokenizer.get_vocab()
    too_big = sorted(i for i in lm_vocab.values() if i >= lm_vocab_size)
    if too_big:
        raise OutOfVocabularyError(
            f"The LM tokenizer has token ids {_preview(np.asarray(too_big))} >= lm_vocab_size "
            f"{lm_vocab_size}: pass the LM's embedding rows (config.vocab_size) as lm_vocab_size."
        )

    indices = np.full((lm_vocab_size,), fallback_id, dtype=np.int32)
    matched = np.zeros((lm_vocab_size,), dtype=bool)
    for token, lm_id in lm_vocab.items():
        rm_id = rm_vocab.get(token)
        if rm_id is not None:
            indices[lm_id] = rm_id
            matched[lm_id] = True
    return indices, matched


def align_rm_embeddings(
    lm_tokenizer: Any,
    rm_tokenizer: Any,
    rm_embed: jax.Array,
    lm_vocab_size: int,
    *,
    fallback_id: int | None = None,
) -> jax.Array:
    """RM input-embedding table re-indexed by LM token ids; pass it as ``rm_embed=``.

    Args:
      lm_tokenizer, rm_tokenizer: Hugging Face tokenizers.
      rm_embed: ``[V_rm, D]`` RM input embedding matrix.
      lm_vocab_size: ``V_lm``, rows of the LM embedding table.
      fallback_id: RM row for LM tokens with no exact string match (default: RM pad id, then
        eos id, then 0). See :func:`align_rm_vocab_indices` for the match mask.

    Returns:
      ``[V_lm, D]`` array, row ``v`` = ``rm_embed[indices[v]]``, same dtype as ``rm_embed``.
    """
    if getattr(rm_embed, "ndim", None) != 2:
        raise ValueError(
            f"rm_embed must be the [V_rm, D] RM embedding matrix, got shape "
            f"{getattr(rm_embed, 'shape', type(rm_embed).__name__)}."
        )
    indices, _ = align_rm_vocab_indices(
        lm_tokenizer, rm_tokenizer, lm_vocab_size, fallback_id=fallback_id
    )
    check_token_ids_in_range(indices, int(rm_embed.shape[0]), "aligned RM ids (incl. fallback_id)")
    return jnp.take(jnp.asarray(rm_embed), jnp.asarray(indices), axis=0)


def shared_rm_tokenizer(lm, rm, user: str = "the decoder"):
    """The tokenizer that frames responses for ``rm`` when LM token ids are fed to it directly.

    The RM's own tokenizer (checked against the LM's with :func:`check_vocab_compatibility`),
    or the LM's when the RM has none (then the vocabulary sizes must agree). It must carry a chat
    template. ``user`` names the caller in the error message.
    """
    from nabla_jax.text.templates import require_chat_template

    tok = rm.tokenizer if rm.tokenizer is not None else lm.tokenizer
    require_chat_template(tok, "RM")
    lm_v, rm_v = lm.config.vocab_size, rm.config.vocab_size
    if rm.tokenizer is not None:
        check_vocab_compatibility(lm.tokenizer, rm.tokenizer, lm_v, rm_v)
    elif lm_v != rm_v:
        raise VocabSizeMismatchError(
            f"LM vocabulary size {lm_v} != RM vocabulary size {rm_v}: {user} feeds LM token "
            "ids to the RM, so the models must share a tokenizer"
        )
    return tok
