"""What DTO did, condensed for bench rows and summaries (nabla_jax.app.gradient_report), and
shown in the revision view and `bench accuracy --oracle-diagnostics`."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from nabla_jax.app import cli
from nabla_jax.app.bundled import load_bundled
from nabla_jax.app.gradient_report import method_diagnostics, row_diagnostics
from nabla_jax.app.revisions import revision_events, revision_table


def _event(kl, dlogp, top1, topk, before=None, after=None, rho=None):
    return dict(position=0, old_token=5, new_token=6, proposed=True, accepted=False,
                score_current=0.1, score_proposed=0.0, kl=kl, dlogp=dlogp, top1_changed=top1,
                topk_changed=topk, p_right_before=before, p_right_after=after,
                fidelity=rho)  # fmt: skip


def test_row_and_method_means_are_over_refinements():
    a = [_event(0.2, 1.0, True, True, 0.1, 0.3), _event(0.4, -1.0, False, True)]
    b = [_event(1.0, 2.0, False, False, 0.5, 0.4, rho=0.5)]
    ra, rb = row_diagnostics(a), row_diagnostics(b)
    assert ra == pytest.approx(dict(refinements=2, kl=0.3, dlogp=0.0, top1_changed=0.5,
                                    topk_changed=1.0, oracle_refinements=1,
                                    p_right_before=0.1, p_right_after=0.3))  # fmt: skip
    pooled = method_diagnostics([{"dto": ra}, {"dto": rb}, {"method": "greedy"}])
    assert pooled["refinements"] == 3
    assert pooled["kl"] == pytest.approx((0.2 + 0.4 + 1.0) / 3)
    assert pooled["top1_changed"] == pytest.approx(1 / 3)
    assert pooled["oracle_refinements"] == 2
    assert pooled["p_right_after"] == pytest.approx((0.3 + 0.4) / 2)
    assert pooled["fidelity_refinements"] == 1 and pooled["fidelity"] == pytest.approx(0.5)
    assert row_diagnostics([]) is None and method_diagnostics([{"x": 1}]) is None
    old = {k: v for k, v in a[0].items() if k in ("position", "old_token", "new_token")}
    assert row_diagnostics([old]) is None  # a trace from before the diagnostics


def test_p_right_up_counts_only_refinements_dto_could_help():
    def ev(before, after, right=7, top1=False):
        return {**_event(0.1, 0.0, False, False, before, after), "right_token": right,
                "right_top1_before": top1}  # fmt: skip

    trace = [
        ev(0.1, 0.3),  # raised
        ev(0.2, 0.1),  # lowered
        ev(0.6, 0.7, top1=True),  # already the top-1: left out
        ev(0.0, 0.0, right=5),  # the right token is the current one (old_token 5): left out
        ev(0.1, 0.1),  # unchanged: not raised
    ]
    row = row_diagnostics(trace)
    assert row["right_not_top1"] == 3 and row["p_right_up"] == pytest.approx(1 / 3)
    other = row_diagnostics([ev(0.1, 0.2)])
    pooled = method_diagnostics([{"dto": row}, {"dto": other}])
    assert pooled["right_not_top1"] == 4 and pooled["p_right_up"] == pytest.approx(2 / 4)
    assert "p_right_up" not in row_diagnostics([ev(0.6, 0.7, top1=True)])
    # At a wrong token (4 of the 5; the 4th has the right token in place): how much room
    # the resample left, before DTO.
    assert row["at_wrong_token"] == 4
    assert row["right_was_top1"] == pytest.approx(1 / 4)
    assert row["p_right_at_wrong"] == pytest.approx((0.1 + 0.2 + 0.6 + 0.1) / 4)
    assert pooled["at_wrong_token"] == 5
    assert pooled["p_right_at_wrong"] == pytest.approx((0.1 + 0.2 + 0.6 + 0.1 + 0.1) / 5)


def test_revision_view_shows_what_dto_did():
    lm, _ = load_bundled()
    result = SimpleNamespace(trace=[_event(0.25, 1.5, True, True, 0.1, 0.3)])
    (e,) = revision_events(result, lm.tokenizer)
    assert e.kl == 0.25 and e.p_right_after == 0.3 and e.to_dict()["dlogp"] == 1.5
    from rich.console import Console

    console = Console(width=160, record=True)
    console.print(revision_table([e]))
    text = console.export_text()
    assert "KL" in text and "+0.250" in text and "0.100 → 0.300" in text and "moved" in text
    old = SimpleNamespace(trace=[{k: v for k, v in _event(0, 0, 0, 0).items() if k not in (
        "kl", "dlogp", "top1_changed", "topk_changed", "p_right_before", "p_right_after",
        "fidelity")}])  # fmt: skip
    assert revision_events(old, lm.tokenizer)[0].kl is None  # older traces still read


@pytest.mark.slow
def test_bench_summary_reports_what_dto_did(tmp_path):
    out = tmp_path / "acc.jsonl"
    argv = ["bench", "accuracy", "--num-problems", "2", "--methods", "greedy,nabla", "--seed",
            "0", "--no-progress", "--oracle-diagnostics", "--output", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    summary = json.loads((tmp_path / "acc.summary.json").read_text())
    assert "dto" not in summary["greedy"]
    dto = summary["nabla"]["dto"]
    assert dto["refinements"] > 0 and dto["kl"] >= 0
    assert 0 <= dto["top1_changed"] <= 1 and 0 <= dto["topk_changed"] <= 1
    assert dto.get("oracle_refinements", 0) > 0 and 0 <= dto["p_right_before"] <= 1
