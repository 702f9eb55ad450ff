"""Decoded responses on the host: ``DecodeResult`` and its assembly from the loop's report."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from nabla_jax.decoding.state import REFINEMENT_ENDS, Counters
from nabla_jax.decoding.stopping import trim_text

__all__ = ["COUNTERS", "DecodeResult", "empty_stats", "row_result"]

# Per-prompt counters of every method (the decoder's and the baselines'), in report order.
COUNTERS = (
    "generations",
    "rejections",
    "model_calls",
    "rollout_calls",
    "dto_calls",
    "probe_calls",
    "score_calls",
    "generated_tokens",
    "optimized_tokens",
    "rewarded_tokens",
    "iterations",
    "refinements",
    "probes",
)
CALL_PARTS = ("rollout_calls", "dto_calls", "probe_calls", "score_calls")


@dataclasses.dataclass
class DecodeResult:
    """One decoded response.

    Attributes:
      prompt: the prompt as given.
      text: the response, trimmed before the first stop string / EOS.
      token_ids: the committed response ids (untrimmed: a final EOS or stop string included).
      stats: counters — generations (rollouts, the initial one included), rejections,
        model_calls (= rollout_calls + dto_calls + probe_calls + score_calls), generated_tokens,
        optimized_tokens (window length × DTO steps, summed), rewarded_tokens (RM input tokens
        of acceptance tests), iterations, refinements, probes, stop_reason ("eos" |
        "stop_string" | "length"), refinement_end ("converged": no uncertain position left;
        "max_generations"; "stopped": the response ended first).
      trace: one dict per refinement: position (index in the response), old_token, new_token,
        proposed, accepted (None without a proposal), score_current, score_proposed (None
        when not scored); what DTO did to the resample distribution there
        (:mod:`nabla_jax.decoding.diagnostics`): kl (KL(refined ‖ original), nats), dlogp (the
        proposed token's change in log-probability), p_new_before, p_new_after (its
        probability under the resample distribution before and after DTO), top1_changed,
        topk_changed, and with a next-token oracle right_token, p_right_before, p_right_after,
        right_top1_before (whether it was already the resample's top-1; None without one); with
        ``fidelity_top_k``, fidelity (Spearman of the RM gradient's linear estimates against
        re-scored swaps, :mod:`nabla_jax.decoding.fidelity`; None when not measured).
    """

    prompt: Any
    text: str
    token_ids: list[int]
    stats: dict
    trace: list


def empty_stats() -> dict:
    """Every counter at 0."""
    return dict.fromkeys(COUNTERS, 0)


def response_text(tokenizer, ids: list[int], eos: set, stop_strings: Sequence[str]):
    """``(text, stop_reason)`` of a committed response: cut at the first EOS, decoded, trimmed
    before the first stop string."""
    reason = "length"
    body = ids
    for i, t in enumerate(ids):
        if t in eos:
            body, reason = ids[:i], "eos"
            break
    text, cut = trim_text(tokenizer.decode(body), stop_strings)
    return text, ("stop_string" if cut else reason)


def row_result(prompt, report, b: int, tokenizer, eos: set, stop_strings) -> DecodeResult:
    """The :class:`DecodeResult` of slot ``b`` of a host copy of the loop's report."""
    ids = report.tokens[b, : int(report.committed[b])].tolist()
    text, reason = response_text(tokenizer, ids, eos, stop_strings)
    stats = empty_stats()
    for name in Counters._fields:
        if name in stats:
            stats[name] = int(getattr(report.counters, name)[b])
    stats["model_calls"] = sum(stats[p] for p in CALL_PARTS)
    stats["stop_reason"] = reason
    stats["refinement_end"] = REFINEMENT_ENDS[int(report.refinement_end[b])]
    ev = report.events
    trace = []
    for i in range(int(ev.count[b])):
        proposed = bool(ev.proposed[b, i])
        scored = bool(ev.scored[b, i])
        trace.append(
            {
                "position": int(ev.position[b, i]),
                "old_token": int(ev.old_token[b, i]),
                "new_token": int(ev.new_token[b, i]),
                "proposed": proposed,
                "accepted": bool(ev.accepted[b, i]) if proposed else None,
                "score_current": float(ev.score_current[b, i]) if scored else None,
                "score_proposed": float(ev.score_proposed[b, i]) if scored else None,
                "kl": float(ev.kl[b, i]),
                "dlogp": float(ev.dlogp[b, i]),
                "p_new_before": float(ev.p_new_before[b, i]),
                "p_new_after": float(ev.p_new_after[b, i]),
                "top1_changed": bool(ev.top1_changed[b, i]),
                "topk_changed": bool(ev.topk_changed[b, i]),
                "right_token": right if (right := int(ev.right_token[b, i])) >= 0 else None,
                "p_right_before": float(ev.p_right_before[b, i]) if right >= 0 else None,
                "p_right_after": float(ev.p_right_after[b, i]) if right >= 0 else None,
                "right_top1_before": bool(ev.right_top1_before[b, i]) if right >= 0 else None,
                "fidelity": None if math.isnan(rho := float(ev.fidelity[b, i])) else rho,
            }
        )
    return DecodeResult(prompt, text, ids, stats, trace)
