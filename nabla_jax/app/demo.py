"""``nabla-jax demo``: greedy vs ∇-Reasoner on a few bundled problems, what ∇ changed in each
response, then the committed 200-problem benchmark (so the few demo problems are not the whole
story).

The benchmark summary ships with the package (``assets/benchmark/accuracy_seed0.summary.json``,
a copy of ``benchmarks/results/accuracy_seed0.summary.json``), so an installed package can show it,
and so do the ids of the problems where ∇ changed greedy's grade in that run
(``accuracy_seed0.changed.json``): the demo decodes two of them too, marked as selected.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from nabla_jax.app.bundled import ASSETS

__all__ = [
    "BENCHMARK_SUMMARY",
    "CHANGED",
    "METHOD_LABELS",
    "benchmark_table",
    "changed_problems",
    "gradient_line",
    "load_benchmark_summary",
    "method_label",
    "run_demo",
]

BENCHMARK_SUMMARY = ASSETS / "benchmark" / "accuracy_seed0.summary.json"
#: Problem ids of that run where ∇'s grade differed from greedy's (see :func:`changed_problems`).
CHANGED = ASSETS / "benchmark" / "accuracy_seed0.changed.json"

#: Display names of the benchmark's methods.
METHOD_LABELS = {
    "greedy": "greedy CoT",
    "cot": "sampled CoT",
    "nabla": "∇-Reasoner",
    "nabla-norej": "∇-Reasoner, no rejection sampling",
    "nabla-nodto": "∇-Reasoner, resampling without DTO",
    "nabla-nocache": "∇-Reasoner, no gradient caching",
}


def method_label(method: str) -> str:
    """``bon:8`` → ``Best-of-8``, ``sc:4`` → ``self-consistency-4``, else :data:`METHOD_LABELS`."""
    base, _, n = method.partition(":")
    if base == "bon":
        return f"Best-of-{n}"
    if base == "sc":
        return f"self-consistency-{n}"
    return METHOD_LABELS.get(method, method)


def load_benchmark_summary(path: str | Path = BENCHMARK_SUMMARY) -> dict:
    """The committed ``{method: {accuracy, mean_model_calls, wall_seconds, n}}`` summary."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark summary {path} is missing; reinstall nabla-jax")
    return json.loads(path.read_text())


def benchmark_table(summary: dict, title: str | None = None):
    """A ``rich.table.Table`` of accuracy against mean model calls, ∇-Reasoner in bold."""
    from rich.table import Table

    table = Table(title=title, header_style="bold")
    for col in ("method", "accuracy", "mean model calls", "n"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for m, s in summary.items():
        table.add_row(
            method_label(m),
            f"{100 * s['accuracy']:.1f}%",
            f"{s['mean_model_calls']:.1f}",
            str(s["n"]),
            style="bold" if m == "nabla" else None,
        )
    return table


def gradient_line(summary: dict) -> str | None:
    """What the gradient adds on the committed benchmark, as one line: ∇-Reasoner against the
    same loop resampling the rollout's own logits (``nabla-nodto``), from ``summary`` (None when
    it lacks either)."""
    if "nabla" not in summary or "nabla-nodto" not in summary:
        return None
    a, b = summary["nabla"], summary["nabla-nodto"]
    diff = 100 * (a["accuracy"] - b["accuracy"])
    return (
        f"What the gradient adds (committed benchmark, {a['n']} test problems): ∇-Reasoner "
        f"{100 * a['accuracy']:.1f}% against {100 * b['accuracy']:.1f}% for the same loop "
        f"without DTO, drawing the same random numbers ({diff:+.1f} points; "
        f"{a['mean_model_calls']:.0f} against "
        f"{b['mean_model_calls']:.0f} model calls per problem)."
    )


def changed_problems(results_path: str | Path) -> dict:
    """From a benchmark JSONL: the problem ids where ∇-Reasoner's grade differed from greedy's,
    ``{"fixed": [...], "broken": [...]}`` in file order (what ``assets/benchmark/
    accuracy_seed0.changed.json`` holds for the committed run; a test keeps them equal)."""
    by: dict[str, dict[str, bool]] = {"greedy": {}, "nabla": {}}
    with open(results_path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                if row.get("method") in by:  # (the provenance line has no method)
                    by[row["method"]][row["problem_id"]] = bool(row["correct"])
    g, n = by["greedy"], by["nabla"]
    both = [pid for pid in n if pid in g]
    return {
        "fixed": [pid for pid in both if n[pid] and not g[pid]],
        "broken": [pid for pid in both if g[pid] and not n[pid]],
    }


def _selected_problems(k: int, exclude=()) -> list[tuple[object, str]]:
    """Up to ``k`` problems of the committed run (200 test problems, seed 0) where ∇ changed
    greedy's grade, alternating fixed and broken ones, each with its label; ids in ``exclude``
    are skipped."""
    from nabla_jax.tasks import fresh_test_problems

    if k <= 0:
        return []
    changed = json.loads(CHANGED.read_text())
    n_bench = max(s["n"] for s in load_benchmark_summary().values())
    pool = {p.id: p for p in fresh_test_problems(n_bench, 0)}
    order = []
    for pair in zip(changed["fixed"], changed["broken"]):
        order.extend(zip(pair, ("fixed", "broken")))
    order.extend((pid, "fixed") for pid in changed["fixed"][len(changed["broken"]) :])
    chosen = [(pool[pid], label) for pid, label in order if pid in pool and pid not in exclude]
    return chosen[:k]


def run_demo(
    num_problems: int = 4,
    seed: int = 0,
    show_text: bool = False,
    changed: int = 2,
    console=None,
    max_length: int | None = None,
) -> int:
    """Run the demo on the bundled pair and print it to ``console`` (a ``rich`` Console).

    ``num_problems`` fresh test problems (``seed``), then ``changed`` problems of the committed
    benchmark run on which ∇'s answer was graded differently from greedy's (alternately one it
    fixed and one it broke while there are both — selected, so not typical; the table at the end
    is the whole story).
    ``max_length``: response tokens per problem (default: the bundled config's).
    """
    from rich.console import Console

    from nabla_jax.app.bundled import bundled_decode_config, load_bundled
    from nabla_jax.app.evaluation import method_key
    from nabla_jax.app.revisions import (
        STYLE_ACCEPTED,
        STYLE_REJECTED,
        STYLE_REPLACED,
        print_revisions,
        revision_events,
    )
    from nabla_jax.decoding.baselines import greedy_cot
    from nabla_jax.decoding.nabla import NablaDecoder
    from nabla_jax.tasks import extract_answer, format_prompt, fresh_test_problems, grade

    console = Console(highlight=False, soft_wrap=True) if console is None else console
    summary = load_benchmark_summary()  # before any compute: a broken install fails fast
    fresh = fresh_test_problems(num_problems, seed)
    selected = _selected_problems(changed, exclude={p.id for p in fresh})
    t0 = time.perf_counter()
    console.print("Loading the bundled LM and reward model …")
    lm, rm = load_bundled()
    problems = fresh + [p for p, _ in selected]
    labels = [""] * len(fresh) + [f"*{label}" for _, label in selected]
    prompts = [format_prompt(p) for p in problems]
    cfg = bundled_decode_config()
    if max_length is not None:
        cfg = dataclasses.replace(cfg, max_length=max_length)
    console.print(
        f"Greedy chain of thought on {len(fresh)} fresh test problems (seed {seed})"
        + (f" and {len(selected)} problems of the committed run marked *" if selected else "")
        + " …"
    )
    greedy = greedy_cot(lm, prompts, max_length=cfg.max_length)
    console.print("∇-Reasoner (DTO + resampling + rejection) on the same problems …")
    decoder = NablaDecoder(lm, rm, cfg)
    # Each problem with the key `bench accuracy --seed S` gives ∇ (a prompt's random numbers
    # follow its content, not its batch): the selected ones with the committed run's seed 0, so
    # that its outcome can be reproduced. With seed 0 (the default) that is one call, one batch.
    if seed == 0:
        nabla = decoder.generate(prompts, method_key(0, "nabla"), progress=True)
    else:
        nabla = decoder.generate(prompts[: len(fresh)], method_key(seed, "nabla"), progress=True)
        if selected:
            nabla += decoder.generate(prompts[len(fresh) :], method_key(0, "nabla"), progress=True)

    console.print()
    header = f"{'problem':<30} {'answer':>6} | {'greedy':>7} {'ok':<3} {'calls':>5} | "
    header += f"{'∇-Reasoner':>10} {'ok':<3} {'calls':>5} {'gens':>4}"
    console.print(header)
    console.print("-" * len(header))
    tally = [0, 0, 0, 0]
    for i, (p, g, n) in enumerate(zip(problems, greedy, nabla)):
        g_ok, n_ok = grade(g.text, p.answer), grade(n.text, p.answer)
        g_calls, n_calls = int(g.stats["model_calls"]), int(n.stats["model_calls"])
        if i < len(fresh):
            tally = [tally[0] + g_ok, tally[1] + n_ok, tally[2] + g_calls, tally[3] + n_calls]
        name = p.question if not labels[i] else f"{p.question} *"
        console.print(
            f"{name:<30} {p.answer:>6} | {str(extract_answer(g.text)):>7} "
            f"{'✓' if g_ok else '✗':<3} {g_calls:>5} | {str(extract_answer(n.text)):>10} "
            f"{'✓' if n_ok else '✗':<3} {n_calls:>5} {int(n.stats['generations']):>4}"
        )
    k = max(len(fresh), 1)
    console.print("-" * len(header))
    console.print(
        f"fresh problems: greedy {tally[0]}/{len(fresh)} correct, {tally[2] / k:.0f} "
        f"calls/problem; ∇-Reasoner {tally[1]}/{len(fresh)} correct, {tally[3] / k:.0f} "
        f"calls/problem ({time.perf_counter() - t0:.0f} s, compilation included)"
    )
    if selected:
        console.print(
            "* chosen from the committed run because ∇'s answer was graded differently from "
            "greedy's there (fixed or broken): selected, not typical. Decoded "
            "again now with that run's key, so a different outcome means the decoder changed."
        )

    console.print("\n[bold]What ∇-Reasoner changed[/bold] — ", end="")
    console.print("replaced", style=STYLE_REPLACED, end=" → ")
    console.print("accepted revision", style=STYLE_ACCEPTED, end=", ")
    console.print("rejected proposal (token kept)", style=STYLE_REJECTED, end=", ")
    console.print("refined, same token", style="underline")
    console.print(
        "At each uncertain position ∇-Reasoner optimizes the logits ahead by gradient descent on "
        "the reward, resamples the token, and keeps a change only if the reward model prefers "
        "the whole new response.",
        style="dim",
    )
    for i, (p, g, n) in enumerate(zip(problems, greedy, nabla)):
        events = revision_events(n, lm.tokenizer)
        accepted = sum(e.verdict == "accepted" for e in events)
        verdict = "✓" if grade(n.text, p.answer) else "✗"
        same = "same as greedy" if n.text == g.text else "differs from greedy"
        note = f"; committed run: {labels[i][1:]}" if labels[i] else ""
        title = (
            f"{p.question} = {p.answer}: ∇ {verdict}, {len(events)} refinements, "
            f"{accepted} accepted ({same}{note})"
        )
        print_revisions(n, lm.tokenizer, console=console, title=title)
    if show_text and nabla:
        console.print("\nFirst ∇-Reasoner response:\n" + nabla[0].text, markup=False)

    n_bench = max(s["n"] for s in summary.values())
    console.print()
    console.print(
        benchmark_table(
            summary,
            title=f"The committed benchmark: {n_bench} test problems, seed 0 (README, "
            "'Accuracy versus model calls')",
        )
    )
    line = gradient_line(summary)
    if line:
        console.print(line, markup=False)
    console.print(
        "Reproduce: nabla-jax bench accuracy --methods "
        + ",".join(summary)
        + " --num-problems 200 --seed 0",
        markup=False,
        soft_wrap=True,
    )
    return 0
