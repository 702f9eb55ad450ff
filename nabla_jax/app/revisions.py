"""What ∇-Reasoner changed in a response: revision events with token text, and a terminal view.

``DecodeResult.trace`` holds one dict per refinement, with token ids: ``position`` (index in the
committed response), ``old_token`` (the rollout's token there), ``new_token`` (the token resampled
from the refined logits), ``proposed`` (the token changed, so a new rollout was made),
``accepted`` (the reward model preferred the proposal; ``None`` without a proposal),
``score_current`` / ``score_proposed`` (the RM scores of the two full responses). This module adds
the text of the tokens (:func:`revision_events`, what ``nabla-jax decode --trace`` writes) and
renders a response with its revisions highlighted (:func:`render_response`, with ``rich``).

Each refinement commits exactly one token, at ``position``: the new token when accepted, the old
one otherwise — so every committed position has at most one event.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

__all__ = [
    "Revision",
    "print_revisions",
    "render_response",
    "revision_events",
    "revision_table",
    "token_pieces",
]

TRACE_KEYS = (
    "position",
    "old_token",
    "new_token",
    "proposed",
    "accepted",
    "score_current",
    "score_proposed",
)

#: Optional keys: what DTO did (``nabla_jax.decoding.diagnostics``, ``decoding.fidelity``).
DIAGNOSTIC_KEYS = (
    "kl",
    "dlogp",
    "p_new_before",
    "p_new_after",
    "top1_changed",
    "topk_changed",
    "p_right_before",
    "p_right_after",
    "right_top1_before",
    "fidelity",
)

#: Styles of the terminal view.
STYLE_ACCEPTED = "bold green"
STYLE_REPLACED = "red strike"
STYLE_REJECTED = "yellow underline"
STYLE_KEPT = "underline"


@dataclasses.dataclass(frozen=True)
class Revision:
    """One refinement, with token text (ids as in ``DecodeResult.trace``)."""

    position: int
    old_token: int
    new_token: int
    old_text: str
    new_text: str
    proposed: bool
    accepted: bool | None
    score_current: float | None
    score_proposed: float | None
    # What DTO did to the resample distribution (nabla_jax.decoding.diagnostics); None in
    # traces that predate the diagnostics.
    kl: float | None = None
    dlogp: float | None = None
    p_new_before: float | None = None
    p_new_after: float | None = None
    top1_changed: bool | None = None
    topk_changed: bool | None = None
    p_right_before: float | None = None
    p_right_after: float | None = None
    right_top1_before: bool | None = None
    fidelity: float | None = None

    @property
    def verdict(self) -> str:
        """One of "accepted", "rejected", "unchanged" (the resampled token was the old one)."""
        if not self.proposed:
            return "unchanged"
        return "accepted" if self.accepted else "rejected"

    def to_dict(self) -> dict:
        """JSON-ready dict (what ``decode --trace`` writes), with the verdict."""
        return {**dataclasses.asdict(self), "verdict": self.verdict}


def _token_text(tokenizer, token: int) -> str:
    return tokenizer.decode([int(token)], skip_special_tokens=False)


def revision_events(result, tokenizer) -> list[Revision]:
    """The revisions of a ``DecodeResult`` (its ``trace``) with the old and new tokens' text.

    Args:
      result: a ``DecodeResult`` (anything with ``trace``: a list of dicts with the keys
        ``position, old_token, new_token, proposed, accepted, score_current, score_proposed``).
      tokenizer: the LM's tokenizer (``lm.tokenizer``).
    Returns:
      one :class:`Revision` per refinement, in order. A trace entry missing a key is a
      ``ValueError`` naming it.
    """
    out = []
    for i, event in enumerate(result.trace or ()):
        missing = [k for k in TRACE_KEYS if k not in event]
        if missing:
            raise ValueError(f"trace entry {i} lacks {missing}; expected keys {TRACE_KEYS}")

        def num(v):
            return None if v is None else float(v)

        out.append(
            Revision(
                position=int(event["position"]),
                old_token=int(event["old_token"]),
                new_token=int(event["new_token"]),
                old_text=_token_text(tokenizer, event["old_token"]),
                new_text=_token_text(tokenizer, event["new_token"]),
                proposed=bool(event["proposed"]),
                accepted=None if event["accepted"] is None else bool(event["accepted"]),
                score_current=num(event["score_current"]),
                score_proposed=num(event["score_proposed"]),
                **{k: event.get(k) for k in DIAGNOSTIC_KEYS},
            )
        )
    return out


def token_pieces(tokenizer, ids: Sequence[int]) -> list[str]:
    """The text each token adds to the decoded response, in context (byte-level tokens that
    split a character give ``""`` until the character completes; special tokens give ``""``).
    ``"".join(pieces)`` is the response decoded without special tokens. O(len(ids)²) decoding,
    fine for responses of a few thousand tokens."""
    pieces, prev = [], ""
    for i in range(len(ids)):
        cur = tokenizer.decode(list(ids[: i + 1]), skip_special_tokens=True)
        if cur.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the rest
            pieces.append("")
            continue
        pieces.append(cur[len(prev) :] if cur.startswith(prev) else cur)
        prev = cur
    return pieces


def render_response(result, tokenizer, events: Sequence[Revision] | None = None):
    """A ``rich.text.Text`` of the response with its revisions highlighted.

    Accepted revisions show the replaced token struck through in red, then the new one in bold
    green; rejected proposals underline the kept token in yellow; refinements whose resampled
    token was unchanged are underlined.
    """
    from rich.text import Text

    events = revision_events(result, tokenizer) if events is None else events
    at = {e.position: e for e in events}
    text = Text()
    for pos, piece in enumerate(token_pieces(tokenizer, result.token_ids)):
        e = at.get(pos)
        if e is None:
            text.append(piece)
        elif e.verdict == "accepted":
            text.append(e.old_text, style=STYLE_REPLACED)
            text.append(piece, style=STYLE_ACCEPTED)
        elif e.verdict == "rejected":
            text.append(piece, style=STYLE_REJECTED)
        else:
            text.append(piece, style=STYLE_KEPT)
    return text


def _score(v: float | None) -> str:
    return "" if v is None else f"{v:+.3f}"


def _moved(e: Revision) -> str:
    """The new token's probability before → after DTO (Δlog p in traces without them)."""
    if e.p_new_before is not None and e.p_new_after is not None:
        return f"{e.p_new_before:.3f} → {e.p_new_after:.3f}"
    return "" if e.dlogp is None else f"Δlog p {e.dlogp:+.3f}"


def revision_table(events: Sequence[Revision], title: str | None = None):
    """A ``rich.table.Table``: one row per refinement (position, old → new, RM scores, what DTO
    did — KL, the new token's probability before → after DTO, whether the argmax moved, and
    with an oracle the right token's probability before → after — and the verdict)."""
    from rich.table import Table

    table = Table(title=title, show_edge=False, header_style="bold")
    oracle = any(e.p_right_before is not None for e in events)
    cols = ["pos", "old → new", "RM current", "RM proposed", "KL", "p(new) before → after",
            "top-1"]  # fmt: skip
    cols += ["p(right) before → after"] if oracle else []
    for col in cols + ["verdict"]:
        left = col in ("old → new", "verdict", "top-1")
        table.add_column(col, justify="left" if left else "right")
    style = {"accepted": STYLE_ACCEPTED, "rejected": "yellow", "unchanged": "dim"}
    for e in events:
        moved = "-" if e.top1_changed is None else ("moved" if e.top1_changed else "same")
        cells = [str(e.position), f"{e.old_text!r} → {e.new_text!r}", _score(e.score_current),
                 _score(e.score_proposed), _score(e.kl), _moved(e), moved]  # fmt: skip
        if oracle:
            cells.append(
                "-" if e.p_right_before is None
                else f"{e.p_right_before:.3f} → {e.p_right_after:.3f}"
            )  # fmt: skip
        table.add_row(*cells, e.verdict, style=style[e.verdict])
    return table


def print_revisions(result, tokenizer, console: Any = None, title: str | None = None) -> None:
    """Print a response with its revisions highlighted, then a table of its proposals (the
    refinements whose resampled token differed) and a count of the unchanged ones."""
    from rich.console import Console

    console = Console() if console is None else console
    events = revision_events(result, tokenizer)
    if title:
        console.print(f"── {title}", style="bold", markup=False)
    console.print(render_response(result, tokenizer, events))
    proposals = [e for e in events if e.proposed]
    if proposals:
        console.print(revision_table(proposals))
    unchanged = len(events) - len(proposals)
    if not events:
        console.print("(no refinement: every position was confident)", style="dim")
    elif unchanged:
        console.print(
            f"{unchanged} refinement(s) resampled the token already there (underlined)",
            style="dim",
        )
