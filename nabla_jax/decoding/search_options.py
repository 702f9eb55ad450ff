"""The tree searches' settings beyond their counts: what ``mcts:BxD`` and ``beam:NxM`` leave open.

A spec names a search's shape (``mcts:4x5``: 4 children per expansion, depth 5); the rest is
here, so that a run config (``search:``), the CLI (``--mcts-simulations``, ``--uct-c``, ...) and
the Python API (:func:`nabla_jax.decoding.registry.method_runner`) set it the same way::

    search:
      mcts: {simulations: 10, uct_c: 1.0, answer: best, value: rollout}
      beam: {max_depth: 8}

Every field's default is the function's own (:func:`~nabla_jax.decoding.mcts_search.mcts`,
:func:`~nabla_jax.decoding.beam.beam_search`), so an absent ``search:`` changes nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from nabla_jax.decoding.mcts_search import ANSWERS, VALUES

__all__ = ["BeamOptions", "MCTSOptions", "SearchOptions"]


def _count_or_none(value: Any, name: str, what: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1 ({what}) or null, got {value!r}")


@dataclasses.dataclass(frozen=True)
class MCTSOptions:
    """Settings of ``mcts:BxD``.

    Attributes:
      simulations: selection-expansion-evaluation-backup rounds; None = ``D`` (``B·D``
        evaluated children: ``mcts:4x5`` evaluates 20). The tree holds ``1 + simulations·B``
        nodes, so this is a compile-time size.
      uct_c: the UCT exploration constant (>= 0; a run-time number, no recompile per value).
      answer: ``"best"`` (the best-scored completed rollout) or ``"visits"`` (the rollout at
        the end of the most-visited path).
      value: ``"rollout"`` (a child's value is the score of a completed rollout from it) or
        ``"partial"`` (the score of its partial response, read at the step's end).
    """

    simulations: int | None = None
    uct_c: float = 1.0
    answer: str = "best"
    value: str = "rollout"

    def __post_init__(self):
        _count_or_none(self.simulations, "mcts.simulations", "rounds of the search")
        c = self.uct_c
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not c >= 0:
            raise ValueError(f"mcts.uct_c must be a number >= 0, got {c!r}")
        if self.answer not in ANSWERS:
            raise ValueError(
                f"mcts.answer must be one of {', '.join(ANSWERS)}, got {self.answer!r}"
            )
        if self.value not in VALUES:
            raise ValueError(f"mcts.value must be one of {', '.join(VALUES)}, got {self.value!r}")


@dataclasses.dataclass(frozen=True)
class BeamOptions:
    """Settings of ``beam:NxM``.

    Attributes:
      max_depth: most steps before the beams stop; None = no cut before the length limit.
    """

    max_depth: int | None = None

    def __post_init__(self):
        _count_or_none(self.max_depth, "beam.max_depth", "most steps")


@dataclasses.dataclass(frozen=True)
class SearchOptions:
    """The tree searches' settings: ``mcts`` and ``beam`` (see the module doc)."""

    mcts: MCTSOptions = MCTSOptions()
    beam: BeamOptions = BeamOptions()

    def __post_init__(self):
        for name, cls in (("mcts", MCTSOptions), ("beam", BeamOptions)):
            if not isinstance(getattr(self, name), cls):
                raise TypeError(f"search.{name} must be a {cls.__name__}")

    def keywords(self, method: str) -> dict[str, Any]:
        """The keyword arguments this method's function takes from here (``method`` a registry
        name: ``"mcts"``, ``"beam"``; others take none)."""
        if method == "mcts":
            return dataclasses.asdict(self.mcts)
        if method == "beam" and self.beam.max_depth is not None:
            return {"max_depth": self.beam.max_depth}
        return {}

    def replace(self, *, mcts: dict | None = None, beam: dict | None = None) -> SearchOptions:
        """A copy with some fields replaced (``None`` values in the dicts are left as they are)."""

        def merged(old, new):
            new = {k: v for k, v in (new or {}).items() if v is not None}
            return dataclasses.replace(old, **new)

        return SearchOptions(mcts=merged(self.mcts, mcts), beam=merged(self.beam, beam))

    def is_default(self) -> bool:
        """Every field at the functions' defaults."""
        return self == SearchOptions()
