"""Cross-vocabulary reward models: an LM-id → RM-id table matched by token string.

A policy and its reward model often share a byte-level BPE but not a vocabulary table: the
policy pads its embedding rows (Qwen2.5-7B-Instruct: 152064 rows for 151665 tokens) and the RM's
tokenizer adds tokens (Skywork-Reward-V2-Qwen3-4B adds ``<think>``, ``</think>``, …). Feeding LM
ids to such an RM needs a table, built once, that says which RM row each LM id means:

    table[v] = rm_vocab[lm_token_string(v)]   if the RM vocabulary has that string
             = fallback_id                    otherwise (LM rows without a token included)

:func:`build_vocab_map` builds it (vocabularies with their added tokens, as ``get_vocab()``
returns them), reports the coverage (:class:`VocabCoverage`), and refuses a pair whose
tokenizers are unrelated: sample strings encoded by the LM and mapped through the table must
equal the RM's own encoding, else string matching would feed the RM different text.
:func:`resolve_rm_vocab` picks the mode (``shared`` or ``by_string``) a run uses.
:func:`unmatched_ids` says which ids of a prompt or response have no RM match.

The JAX side (RM embedding rows gathered by the table for the straight-through path, and the
mapped ids the RM scores) is :mod:`nabla_jax.functional.vocab_map`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from nabla_jax.text.vocab import (
    DEFAULT_SAMPLES,
    OutOfVocabularyError,
    TokenizationMismatchError,
    VocabMismatchError,
    check_vocab_compatibility,
)

__all__ = [
    "RM_VOCAB_MODES",
    "VocabCoverage",
    "VocabMap",
    "build_vocab_map",
    "check_string_mapping",
    "resolve_rm_vocab",
    "rm_fallback_id",
    "unmatched_ids",
]

#: The values of the ``rm_vocab`` setting: ``shared`` feeds LM ids to the RM unchanged (the
#: vocabularies must be identical); ``by_string`` maps them through a :class:`VocabMap`.
RM_VOCAB_MODES: tuple[str, ...] = ("shared", "by_string")

#: Unmatched token strings a coverage report lists (the count is always complete).
_EXAMPLES = 8


@dataclasses.dataclass(frozen=True)
class VocabCoverage:
    """How well the LM vocabulary maps onto the RM's.

    Attributes:
      lm_rows: ``V_lm``, rows of the LM embedding table (the table's length).
      lm_tokens: tokens of the LM tokenizer (added tokens included).
      rm_rows: ``V_rm``, rows of the RM embedding table.
      unmatched_tokens: LM tokens whose string is not in the RM vocabulary.
      padded_rows: LM rows that no LM token uses (``lm_rows`` minus the ids in use).
      fallback_id: the RM id every unmatched LM id maps to.
      examples: up to 8 unmatched LM token strings, lowest id first.
    """

    lm_rows: int
    lm_tokens: int
    rm_rows: int
    unmatched_tokens: int
    padded_rows: int
    fallback_id: int
    examples: tuple[str, ...] = ()

    @property
    def unmatched_rows(self) -> int:
        """LM ids mapped to the fallback: unmatched tokens plus rows without a token."""
        return self.unmatched_tokens + self.padded_rows

    def summary(self) -> str:
        """One line for logs and run reports."""
        shown = f" (e.g. {', '.join(repr(s) for s in self.examples)})" if self.examples else ""
        return (
            f"rm_vocab by_string: {self.lm_tokens - self.unmatched_tokens}/{self.lm_tokens} LM "
            f"tokens matched in the RM vocabulary ({self.rm_rows} rows); "
            f"{self.unmatched_tokens} unmatched{shown} and {self.padded_rows} LM rows without a "
            f"token map to RM id {self.fallback_id}"
        )


@dataclasses.dataclass(frozen=True, eq=False)
class VocabMap:
    """An LM-id → RM-id table and its coverage.

    Attributes:
      table: ``[V_lm]`` int32 NumPy array; ``table[v]`` is the RM id of LM id ``v``.
      matched: ``[V_lm]`` bool; False where ``table[v]`` is the fallback.
      coverage: the :class:`VocabCoverage` report.
    """

    table: np.ndarray
    matched: np.ndarray
    coverage: VocabCoverage


def _int_id(value) -> int | None:
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if value is None or isinstance(value, bool):
        return None
    return int(value)


def rm_fallback_id(rm_tokenizer: Any, rm_rows: int) -> int:
    """The RM id unmatched LM ids map to: the RM tokenizer's pad id, else unk, else eos.

    Raises:
      ValueError: the RM tokenizer has none of the three, or the id is not below ``rm_rows``.
    """
    for attr in ("pad_token_id", "unk_token_id", "eos_token_id"):
        value = _int_id(getattr(rm_tokenizer, attr, None))
        if value is not None:
            if not 0 <= value < rm_rows:
                raise ValueError(
                    f"the RM tokenizer's {attr} {value} is outside the RM's {rm_rows} embedding "
                    "rows; pass fallback_id= an RM token id below that"
                )
            return value
    raise ValueError(
        "the RM tokenizer has no pad, unk or eos token to map unmatched LM tokens to; pass "
        "fallback_id= an RM token id"
    )


def _vocab(tokenizer: Any, name: str) -> dict[str, int]:
    if tokenizer is None or not hasattr(tokenizer, "get_vocab"):
        raise TypeError(
            f"{name} must be a Hugging Face tokenizer with get_vocab(), got "
            f"{type(tokenizer).__name__}"
        )
    return {str(k): int(v) for k, v in tokenizer.get_vocab().items()}


def _encode(tokenizer: Any, text: str) -> list[int]:
    return [int(i) for i in tokenizer.encode(text, add_special_tokens=False)]


def check_string_mapping(
    lm_tokenizer: Any, rm_tokenizer: Any, table: np.ndarray, samples: Sequence[str]
) -> None:
    """Refuse a table under which LM-encoded text is not the RM's encoding of the same text.

    For each sample string ``s``: ``table[lm.encode(s)]`` must equal ``rm.encode(s)`` (both
    without special tokens).

    Raises:
      TokenizationMismatchError: one line naming the first sample that differs.
    """
    if isinstance(samples, str) or not all(isinstance(s, str) for s in samples):
        raise TypeError("samples must be a sequence of strings (not a single string)")
    for text in samples:
        lm_ids = _encode(lm_tokenizer, text)
        bad = [i for i in lm_ids if not 0 <= i < table.shape[0]]
        if bad:
            raise OutOfVocabularyError(
                f"the LM tokenizer encodes {text!r} with ids {bad[:4]} outside the LM's "
                f"{table.shape[0]} embedding rows; pass the LM's config.vocab_size"
            )
        mapped = [int(table[i]) for i in lm_ids]
        rm_ids = _encode(rm_tokenizer, text)
        if mapped != rm_ids:
            raise TokenizationMismatchError(
                f"the LM and RM tokenizers are unrelated: {text!r} encodes to RM ids {rm_ids[:8]} "
                f"but the LM's encoding maps by token string to {mapped[:8]}, so string matching "
                "would feed the RM different text; use an RM trained on the LM's tokenizer"
            )


def build_vocab_map(
    lm_tokenizer: Any,
    rm_tokenizer: Any,
    lm_rows: int,
    rm_rows: int,
    *,
    fallback_id: int | None = None,
    samples: Sequence[str] = DEFAULT_SAMPLES,
) -> VocabMap:
    """The LM-id → RM-id table of two tokenizers, matched by token string, checked on samples.

    Args:
      lm_tokenizer, rm_tokenizer: Hugging Face tokenizers (``get_vocab()`` with added tokens,
        ``encode``; the RM's pad / unk / eos ids for the fallback).
      lm_rows: ``V_lm``, the LM's embedding rows (``config.vocab_size``; may exceed its
        tokenizer: the padded rows map to the fallback).
      rm_rows: ``V_rm``, the RM's embedding rows.
      fallback_id: RM id of unmatched LM ids (default :func:`rm_fallback_id`).
      samples: strings whose LM encoding, mapped, must equal the RM encoding.

    Returns:
      A :class:`VocabMap` with ``table [V_lm]`` int32, every entry in ``[0, V_rm)``.

    Raises:
      ValueError: a size is not a positive int, or the fallback is outside the RM table.
      OutOfVocabularyError: an LM token id is ``>= lm_rows`` or an RM token id ``>= rm_rows``.
      TokenizationMismatchError: the tokenizers are unrelated (see :func:`check_string_mapping`).
    """
    for name, value in (("lm_rows", lm_rows), ("rm_rows", rm_rows)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{name} must be a positive int (embedding rows), got {value!r}")
    lm_vocab = _vocab(lm_tokenizer, "lm_tokenizer")
    rm_vocab = _vocab(rm_tokenizer, "rm_tokenizer")
    for who, vocab, rows in (("LM", lm_vocab, lm_rows), ("RM", rm_vocab, rm_rows)):
        top = max(vocab.values(), default=-1)
        if top >= rows:
            raise OutOfVocabularyError(
                f"the {who} tokenizer has token id {top} but the {who} embedding table has "
                f"{rows} rows; pass the {who}'s config.vocab_size"
            )
    if fallback_id is None:
        fallback_id = rm_fallback_id(rm_tokenizer, rm_rows)
    elif isinstance(fallback_id, bool) or not isinstance(fallback_id, (int, np.integer)):
        raise TypeError(f"fallback_id must be an int RM token id, got {fallback_id!r}")
    elif not 0 <= fallback_id < rm_rows:
        raise ValueError(f"fallback_id {fallback_id} is outside the RM's {rm_rows} rows")

    table = np.full((lm_rows,), int(fallback_id), np.int32)
    matched = np.zeros((lm_rows,), bool)
    used = np.zeros((lm_rows,), bool)
    unmatched: list[tuple[int, str]] = []
    for token, lm_id in lm_vocab.items():
        used[lm_id] = True
        rm_id = rm_vocab.get(token)
        if rm_id is None:
            unmatched.append((lm_id, token))
        else:
            table[lm_id], matched[lm_id] = rm_id, True
    check_string_mapping(lm_tokenizer, rm_tokenizer, table, samples)
    unmatched.sort()
    coverage = VocabCoverage(
        lm_rows=int(lm_rows),
        lm_tokens=len(lm_vocab),
        rm_rows=int(rm_rows),
        unmatched_tokens=len(unmatched),
        padded_rows=int(lm_rows - used.sum()),
        fallback_id=int(fallback_id),
        examples=tuple(t for _, t in unmatched[:_EXAMPLES]),
    )
    table.setflags(write=False)
    matched.setflags(write=False)
    return VocabMap(table=table, matched=matched, coverage=coverage)


def unmatched_ids(vocab_map: VocabMap, ids: Any) -> tuple[int, ...]:
    """The distinct LM ids of ``ids`` that have no RM match (mapped to the fallback).

    Args:
      vocab_map: from :func:`build_vocab_map`.
      ids: concrete integer LM token ids of any shape (a prompt, a response, a batch);
        padding ids count too, so pass only the real tokens.

    Returns:
      Sorted tuple of ids; empty when every id has its own RM token.
    """
    arr = np.asarray(ids)
    if arr.size == 0:
        return ()
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"ids must be integer LM token ids, got dtype {arr.dtype}")
    n = vocab_map.table.shape[0]
    if arr.min() < 0 or arr.max() >= n:
        raise OutOfVocabularyError(
            f"ids hold values in [{int(arr.min())}, {int(arr.max())}] outside the LM's {n} rows"
        )
    uniq = np.unique(arr)
    return tuple(int(i) for i in uniq[~vocab_map.matched[uniq]])


def _base(tokenizer: Any) -> dict[str, int]:
    added = getattr(tokenizer, "get_added_vocab", dict)()
    return {k: v for k, v in _vocab(tokenizer, "tokenizer").items() if k not in added}


def _differ_only_in_added_rows(lm_tokenizer: Any, rm_tokenizer: Any) -> bool:
    """Same base vocabulary (ids included), and tokens both have at the same ids."""
    if _base(lm_tokenizer) != _base(rm_tokenizer):
        return False
    lm, rm = _vocab(lm_tokenizer, "lm_tokenizer"), _vocab(rm_tokenizer, "rm_tokenizer")
    return all(rm[t] == i for t, i in lm.items() if t in rm)


def resolve_rm_vocab(
    mode: str | None, lm_tokenizer: Any, rm_tokenizer: Any, lm_rows: int, rm_rows: int
) -> str:
    """The ``rm_vocab`` mode of a run: ``mode`` checked, or the default when it is None.

    The default is ``shared`` when the two vocabularies and embedding sizes are identical (or
    the RM has no tokenizer of its own and the sizes agree), ``by_string`` when they differ only
    in added tokens or padded rows. Vocabularies that differ in their base tokens have no
    default: name ``by_string`` explicitly (its sample check still applies).

    Raises:
      ValueError: ``mode`` is not one of :data:`RM_VOCAB_MODES`; ``by_string`` without an RM
        tokenizer; no default applies.
      VocabMismatchError: ``shared`` for vocabularies that differ (from
        :func:`~nabla_jax.text.vocab.check_vocab_compatibility`).
    """
    if mode is not None and mode not in RM_VOCAB_MODES:
        raise ValueError(
            f"rm_vocab must be one of {', '.join(RM_VOCAB_MODES)} (or unset for the default), "
            f"got {mode!r}"
        )
    if rm_tokenizer is None:
        if mode == "by_string":
            raise ValueError(
                "rm_vocab 'by_string' needs the RM's own tokenizer; this RM has none (save its "
                "tokenizer beside the checkpoint) — use rm_vocab 'shared' if it is the LM's"
            )
        if lm_rows != rm_rows:
            raise VocabMismatchError(
                f"LM vocabulary size {lm_rows} != RM vocabulary size {rm_rows} and the RM has no "
                "tokenizer to match tokens by string; save the RM's tokenizer beside it"
            )
        return "shared"
    if mode == "shared":
        check_vocab_compatibility(lm_tokenizer, rm_tokenizer, lm_rows, rm_rows)
        return mode
    if mode == "by_string":
        return mode
    identical = lm_rows == rm_rows and _vocab(lm_tokenizer, "lm") == _vocab(rm_tokenizer, "rm")
    if identical:
        return "shared"
    if _differ_only_in_added_rows(lm_tokenizer, rm_tokenizer):
        return "by_string"
    raise ValueError(
        "the LM and RM vocabularies differ beyond added tokens and padded rows, so rm_vocab has "
        "no default; set rm_vocab 'by_string' to match tokens by string (checked on sample text)"
    )
