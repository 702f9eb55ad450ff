"""When a response ends: EOS ids and stop strings as run-time tables, matched on device.

A row is done after an EOS id (kept in the tokens and counted), after its length budget, or after
a stop string. Stop strings are matched on device against their standalone tokenization (the
generated suffix must equal it); a stop string the model spells with other tokens is missed on
device — the row runs on — but the text is always trimmed at its first occurrence on the host
(:func:`trim_text`). The tables' sizes are rounded up so that different EOS sets and stop strings
share one compiled program.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "STOP_EOS",
    "STOP_LENGTH",
    "STOP_REASONS",
    "STOP_STRING",
    "StopTables",
    "default_eos_ids",
    "hits_eos",
    "hits_stop",
    "stop_tables",
    "trim_text",
]

STOP_LENGTH, STOP_EOS, STOP_STRING = 0, 1, 2
STOP_REASONS = ("length", "eos", "stop_string")

# Filler of the tables (token ids are >= 0; -1 marks "no token yet" in a match window).
_NEVER, _ANY = -3, -2


class StopTables(NamedTuple):
    """``eos [E]`` ids (filler ``-3``) and ``stop [S, M]`` right-aligned stop sequences (``-2``
    left of each sequence, an unused row all ``-3``); both int32 and run-time values."""

    eos: jax.Array
    stop: jax.Array

    @property
    def window(self) -> int:
        """``M``: how many trailing generated tokens a match looks at."""
        return self.stop.shape[1]


def _round_up(n: int, m: int) -> int:
    return max(m, -(-n // m) * m)


def stop_tables(eos_ids: Sequence[int], stop_ids: Sequence[Sequence[int]] = ()) -> StopTables:
    """Build the tables (E, S rounded up to multiples of 4, M to a multiple of 8)."""
    eos = sorted({int(e) for e in eos_ids})
    eos_table = np.full((_round_up(len(eos), 4),), _NEVER, np.int32)
    eos_table[: len(eos)] = eos
    seqs = [[int(t) for t in s] for s in stop_ids if len(s)]
    width = _round_up(max((len(s) for s in seqs), default=1), 8)
    stop_table = np.full((_round_up(len(seqs), 4), width), _NEVER, np.int32)
    for row, seq in enumerate(seqs):
        stop_table[row, :] = _ANY
        stop_table[row, width - len(seq) :] = seq
    return StopTables(eos_table, stop_table)


def hits_eos(tokens, tables: StopTables):
    """``tokens [...]`` → bool ``[...]``: the token is an EOS id."""
    return jnp.any(tokens[..., None] == tables.eos, axis=-1)


def hits_stop(window, tables: StopTables):
    """``window [B, M]`` (the last ``M`` generated tokens, -1 where none) → bool ``[B]``."""
    stop = tables.stop[None]
    match = (window[:, None, :] == stop) | (stop == _ANY)
    return jnp.any(jnp.all(match, axis=-1), axis=-1)


def default_eos_ids(lm, tokenizer=None) -> tuple[int, ...]:
    """The LM config's EOS ids plus the tokenizer's EOS id (sorted, unique)."""
    ids = set(lm.config.eos_token_ids)
    tokenizer = lm.tokenizer if tokenizer is None else tokenizer
    if tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return tuple(sorted(ids))


def trim_text(text: str, stop_strings: Sequence[str]) -> tuple[str, bool]:
    """``text`` cut before the first occurrence of any stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop_strings) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
