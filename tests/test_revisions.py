"""The revision view (nabla_jax.app.revisions) and the demo's committed benchmark table."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
from rich.console import Console

from nabla_jax.app import cli
from nabla_jax.app.bundled import BUNDLED_LM
from nabla_jax.app.demo import (
    BENCHMARK_SUMMARY,
    CHANGED,
    benchmark_table,
    changed_problems,
    gradient_line,
    load_benchmark_summary,
    method_label,
)
from nabla_jax.app.revisions import (
    STYLE_ACCEPTED,
    STYLE_REJECTED,
    STYLE_REPLACED,
    render_response,
    revision_events,
    revision_table,
    token_pieces,
)
from tests.tokenizer_utils import make_chatml_tokenizer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tok():
    return make_chatml_tokenizer()


def _event(position, old, new, proposed, accepted, cur=None, prop=None):
    return dict(position=position, old_token=old, new_token=new, proposed=proposed,
                accepted=accepted, score_current=cur, score_proposed=prop)  # fmt: skip


def _result(tok):
    """A response whose trace has an accepted, a rejected and an unchanged refinement."""
    ids = tok.encode("x = 5, so the answer is 4.")
    old_at_1 = tok.encode("?")[0]
    trace = [
        _event(1, old_at_1, ids[1], True, True, -0.25, 0.5),  # accepted: ids[1] replaced "?"
        _event(3, ids[3], ids[0], True, False, 0.5, -1.0),  # rejected: ids[3] kept
        _event(4, ids[4], ids[4], False, None),  # resampled the same token
    ]
    return types.SimpleNamespace(token_ids=ids + [tok.eos_token_id], trace=trace), ids


def test_revision_events_carry_token_text(tok):
    result, ids = _result(tok)
    events = revision_events(result, tok)
    assert [e.verdict for e in events] == ["accepted", "rejected", "unchanged"]
    assert events[0].old_text == "?" and events[0].new_text == tok.decode([ids[1]])
    assert events[0].score_current == -0.25 and events[0].score_proposed == 0.5
    assert events[2].accepted is None and events[2].score_current is None
    row = events[1].to_dict()
    assert row["verdict"] == "rejected" and row["old_token"] == ids[3]
    json.dumps([e.to_dict() for e in events])  # JSON-ready
    import nabla_jax as nj

    assert nj.revisions.revision_events is revision_events  # the README's spelling
    with pytest.raises(ValueError, match="lacks \\['accepted'"):
        bad = dict(result.trace[0])
        del bad["accepted"]
        revision_events(types.SimpleNamespace(trace=[bad], token_ids=[]), tok)


def test_token_pieces_rebuild_the_text(tok):
    ids = tok.encode("héllo wörld, ∇ works") + [tok.eos_token_id]
    pieces = token_pieces(tok, ids)
    assert len(pieces) == len(ids)
    assert "".join(pieces) == "héllo wörld, ∇ works"


def test_render_highlights_revisions(tok):
    result, ids = _result(tok)
    text = render_response(result, tok)
    pieces = token_pieces(tok, result.token_ids)
    # the replaced token is shown before the accepted one; otherwise the response as decoded
    assert text.plain == pieces[0] + "?" + "".join(pieces[1:])
    styled = {(str(s.style), text.plain[s.start : s.end]) for s in text.spans}
    assert (STYLE_REPLACED, "?") in styled
    assert (STYLE_ACCEPTED, pieces[1]) in styled
    assert (STYLE_REJECTED, pieces[3]) in styled
    console = Console(record=True, width=100, color_system=None)
    console.print(revision_table(revision_events(result, tok)))
    out = console.export_text()
    assert "accepted" in out and "rejected" in out and "+0.500" in out and "'?' →" in out


def test_packaged_benchmark_summary_is_the_committed_one():
    summary = load_benchmark_summary()
    committed = ROOT / "benchmarks" / "results" / "accuracy_seed0.summary.json"
    if committed.exists():  # a source checkout: the shipped copies must not drift
        assert summary == json.loads(committed.read_text())
        changed = changed_problems(committed.with_name("accuracy_seed0.jsonl"))
        shipped = json.loads(CHANGED.read_text())
        assert (shipped["fixed"], shipped["broken"]) == (changed["fixed"], changed["broken"])
        assert len(changed["fixed"]) == 12 and not changed["broken"]  # the README's 12 and 0
    assert BENCHMARK_SUMMARY.is_file() and {"greedy", "nabla", "bon:8"} <= set(summary)
    console = Console(record=True, width=120, color_system=None)
    console.print(benchmark_table(summary))
    out = console.export_text()
    assert "Best-of-8" in out and "∇-Reasoner" in out and "61.5%" in out
    assert method_label("sc:4") == "self-consistency-4" and method_label("odd") == "odd"
    line = gradient_line(summary)  # computed from the summary, not written in the code
    n, d = summary["nabla"]["accuracy"], summary["nabla-nodto"]["accuracy"]
    assert f"{100 * n:.1f}%" in line and f"{100 * d:.1f}%" in line
    assert f"{100 * (n - d):+.1f} points" in line
    assert gradient_line({"nabla": summary["nabla"]}) is None


@pytest.mark.slow
@pytest.mark.skipif(not (BUNDLED_LM / "config.json").exists(), reason="bundled models missing")
def test_demo_shows_revisions_and_the_benchmark(capsys):
    assert cli.main(["demo", "--num-problems", "1", "--changed", "2"]) == 0
    out = capsys.readouterr().out
    assert "What ∇-Reasoner changed" in out and "refinements" in out
    assert out.count("committed run: fixed") == 2  # the committed run broke no answer
    assert "The committed benchmark" in out and "Best-of-8" in out
    assert "Reproduce: nabla-jax bench accuracy --methods greedy,cot" in out
    assert "What the gradient adds" in out and "p(new)" in out
