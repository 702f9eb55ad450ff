"""What DTO did over a benchmark: per-row and per-method means of the refinement diagnostics.

A ∇-Reasoner result's trace has one entry per refinement with ``kl``, ``dlogp``,
``top1_changed``, ``topk_changed`` and, with a next-token oracle, ``p_right_before`` /
``p_right_after`` (and ``right_top1_before``), and with ``fidelity_top_k`` a ``fidelity``
(``nabla_jax.decoding``'s ``diagnostics`` and ``fidelity`` modules). :func:`row_diagnostics`
condenses one result's trace into a bench row's ``dto`` entry; :func:`method_diagnostics` pools
rows into a method's summary, weighting each row by its refinements (so the figures are means
over refinements).

``p_right_up`` is the share of the refinements where DTO could help — the oracle names a right
token that is neither the current token nor already the resample's top-1 (``right_not_top1``
of them) — in which DTO raised that token's probability.

``at_wrong_token`` counts the refinements at a wrong token (the oracle names a different right
one); among them ``right_was_top1`` is the share where the right token was already the
resample's most probable one before DTO, and ``p_right_at_wrong`` its mean probability there:
how much room the resample left a gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["method_diagnostics", "row_diagnostics"]

_MEANS = ("kl", "dlogp", "top1_changed", "topk_changed")
_ORACLE = ("p_right_before", "p_right_after")


def row_diagnostics(trace: Sequence[dict]) -> dict | None:
    """``{refinements, kl, dlogp, top1_changed, topk_changed[, oracle_refinements,
    p_right_before, p_right_after][, at_wrong_token, right_was_top1, p_right_at_wrong]
    [, right_not_top1, p_right_up][, fidelity_refinements,
    fidelity]}`` — means over the
    refinements of one result (shares for the booleans), or None without diagnostics."""
    events = [t for t in trace if "kl" in t]
    if not events:
        return None
    n = len(events)
    out: dict = {"refinements": n}
    for k in _MEANS:
        out[k] = sum(float(t[k]) for t in events) / n
    known = [t for t in events if t.get("p_right_before") is not None]
    if known:
        out["oracle_refinements"] = len(known)
        for k in _ORACLE:
            out[k] = sum(float(t[k]) for t in known) / len(known)
    wrong = [t for t in known if "right_top1_before" in t and t["right_token"] != t["old_token"]]
    if wrong:
        out["at_wrong_token"] = len(wrong)
        out["right_was_top1"] = sum(bool(t["right_top1_before"]) for t in wrong) / len(wrong)
        out["p_right_at_wrong"] = sum(float(t["p_right_before"]) for t in wrong) / len(wrong)
    open_ = [t for t in wrong if t["right_top1_before"] is False]
    if open_:
        out["right_not_top1"] = len(open_)
        raised = sum(t["p_right_after"] > t["p_right_before"] for t in open_)
        out["p_right_up"] = raised / len(open_)
    rho = [float(t["fidelity"]) for t in events if t.get("fidelity") is not None]
    if rho:
        out["fidelity_refinements"] = len(rho)
        out["fidelity"] = sum(rho) / len(rho)
    return out


def method_diagnostics(rows: Sequence[dict]) -> dict | None:
    """The rows' ``dto`` entries pooled: each mean weighted by the refinements behind it."""
    parts = [r["dto"] for r in rows if r.get("dto")]
    if not parts:
        return None
    n = sum(p["refinements"] for p in parts)
    out: dict = {"refinements": n}
    for k in _MEANS:
        out[k] = sum(p[k] * p["refinements"] for p in parts) / n
    for count, keys in (
        ("oracle_refinements", _ORACLE),
        ("at_wrong_token", ("right_was_top1", "p_right_at_wrong")),
        ("right_not_top1", ("p_right_up",)),
        ("fidelity_refinements", ("fidelity",)),
    ):
        have = [p for p in parts if p.get(count)]
        if have:
            m = sum(p[count] for p in have)
            out[count] = m
            for k in keys:
                out[k] = sum(p[k] * p[count] for p in have) / m
    return out
