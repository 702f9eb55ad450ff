"""Checkpoint key tables: Hugging Face tensor names ↔ nabla-jax parameter paths, one row each.

A family writes its map as a :class:`KeyTable` of explicit :class:`KeyRow` s, for example::

    KeyRow("model.layers.{layer}.self_attn.q_proj.weight", "layers/self_attn/q_proj/kernel",
           transpose=True)

Both directions read the same rows: import matches a checkpoint name against the row's template
(``{layer}`` stands for the layer number) and export fills the template in. Nothing is inverted or
guessed. A row whose name holds ``{layer}`` is a leaf stacked over layers on axis 0 (``[L, …]``);
``transpose`` swaps the last two axes (torch Linear ``[out, in]`` ↔ kernel ``[in, out]``).
"""

from __future__ import annotations

import dataclasses
import functools
import re

import numpy as np

__all__ = ["LAYER", "KeyRow", "KeyTable", "apply_transpose"]

LAYER = "{layer}"


@functools.cache
def _template_regex(template: str) -> re.Pattern:
    """The regex of a name template: literal text, with ``{layer}`` matching a layer number."""
    literal = re.escape(template).replace(re.escape(LAYER), r"(\d+)")
    return re.compile(literal)


def apply_transpose(x, transpose: bool):
    """``x`` with its last two axes swapped when ``transpose`` (a view for numpy arrays)."""
    return np.swapaxes(x, -1, -2) if transpose else x


@dataclasses.dataclass(frozen=True)
class KeyRow:
    """One checkpoint tensor kind and the parameter leaf it fills.

    Attributes:
      hf: Hugging Face tensor name; ``{layer}`` (at most once) where the layer number goes.
      path: our parameter path, ``/``-separated (as ``convert.flatten_tree`` writes it).
      transpose: the checkpoint stores the last two axes the other way round.
    """

    hf: str
    path: str
    transpose: bool = False

    def __post_init__(self):
        if self.hf.count(LAYER) > 1:
            raise ValueError(f"key row {self.hf!r} names {LAYER} more than once")

    @property
    def stacked(self) -> bool:
        """The leaf holds every layer on axis 0 (its checkpoint name has a layer number)."""
        return LAYER in self.hf

    def match(self, name: str) -> tuple[bool, int | None]:
        """(matched, layer) of a checkpoint ``name`` against this row (layer None: unstacked)."""
        m = _template_regex(self.hf).fullmatch(name)
        if m is None:
            return False, None
        return True, (int(m.group(1)) if self.stacked else None)

    def hf_name(self, layer: int | None = None) -> str:
        """The checkpoint name of this row (of ``layer`` for a stacked row)."""
        if self.stacked:
            if layer is None:
                raise ValueError(f"{self.hf!r} is stacked over layers: give a layer number")
            return self.hf.replace(LAYER, str(layer))
        return self.hf


@dataclasses.dataclass(frozen=True)
class KeyTable:
    """A family's whole checkpoint map.

    Attributes:
      rows: one ``KeyRow`` per parameter leaf kind; paths and names are unique.
      tied: ``(alias, source)`` name pairs: with tied embeddings, ``alias`` (the LM head) may
        appear in a checkpoint as a copy of ``source`` and is checked, not loaded.
      ignored: name templates of checkpoint buffers that are not parameters (rotary tables,
        causal-mask buffers); they are skipped on import and never written on export.
    """

    rows: tuple[KeyRow, ...]
    tied: tuple[tuple[str, str], ...] = ()
    ignored: tuple[str, ...] = ()

    def __post_init__(self):
        for what, values in (
            ("parameter path", [r.path for r in self.rows]),
            ("checkpoint name", [r.hf for r in self.rows]),
        ):
            dup = sorted({v for v in values if values.count(v) > 1})
            if dup:
                raise ValueError(f"key table names the {what}s {dup} more than once")

    def route(self, name: str) -> tuple[KeyRow, int | None] | None:
        """(row, layer) of a checkpoint tensor ``name``; None when no row matches."""
        for row in self.rows:
            matched, layer = row.match(name)
            if matched:
                return row, layer
        return None

    def row_for(self, path: str) -> KeyRow | None:
        """The row that fills parameter ``path``; None when the table has none."""
        for row in self.rows:
            if row.path == path:
                return row
        return None

    def is_ignored(self, name: str) -> bool:
        return any(_template_regex(t).fullmatch(name) for t in self.ignored)

    def tied_source(self, name: str) -> str | None:
        """The tensor a tied alias copies (``lm_head.weight`` → the embedding), else None."""
        return dict(self.tied).get(name)

    def hf_names(self, path: str, num_layers: int) -> list[str]:
        """Every checkpoint name that parameter ``path`` is written as (one per layer)."""
        row = self.row_for(path)
        if row is None:
            raise KeyError(f"no key row for parameter {path!r}")
        if row.stacked:
            return [row.hf_name(i) for i in range(num_layers)]
        return [row.hf_name()]
