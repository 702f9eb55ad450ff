"""The seed's comparison on the bundled task: ∇-Reasoner against tree search (MCTS, step-level
beam search), weighted Best-of-N, Best-of-N and self-consistency, with the bundled reward model
and with the exact oracle in every method's verifier.

``run`` calls ``nabla-jax bench accuracy`` once per verifier (one resumable JSONL each, under
``--out``); ``report`` turns them into one JSON and a Markdown table — accuracy with a 95%
bootstrap interval over problems, the paired comparison with greedy (fixed / broken), mean model
calls, mean FLOPs (``stats["flops"]``: analytic, at the compiled shapes), and wall time relative
to greedy — and plots accuracy against calls, FLOPs and wall time.

Example (the README's "Against tree search" section)::

    python benchmarks/bench_search.py run --num-problems 400 --out benchmarks/results/search
    python benchmarks/bench_search.py report --out benchmarks/results/search

Wall times include each method's first compile in the run (a persistent-cache hit when the
programs were compiled before), as a user's first run pays them.
"""

from __future__ import annotations

import argparse
import json
import os

#: The issue's method list (the article's MCTS settings, b=2/d=3 and b=4/d=5).
METHODS = "greedy,cot,mcts:2x3,mcts:4x5,beam:4x4,wbon:8,bon:4,bon:8,bon:16,sc:8,nabla,nabla-nodto"
VERIFIERS = ("rm", "oracle")


def run(args) -> None:
    from nabla_jax.app import cli

    os.makedirs(args.out, exist_ok=True)
    for acceptance in args.verifiers.split(","):
        argv = [
            "bench", "accuracy", "--num-problems", str(args.num_problems), "--methods",
            args.methods, "--seed", str(args.seed), "--no-progress", "--acceptance", acceptance,
            "--output", os.path.join(args.out, f"{acceptance}.jsonl"),
        ]  # fmt: skip
        code = cli.main(argv)
        if code:
            raise SystemExit(code)


def table(path: str) -> dict:
    """Per method: accuracy, interval, fixed/broken vs greedy, calls, FLOPs, wall vs greedy."""
    from nabla_jax.app.results_file import dedupe, read_results
    from nabla_jax.app.stats import bootstrap_ci, paired_comparison

    _, rows = read_results(path)
    by: dict[str, list[dict]] = {}
    for row in dedupe(rows):
        by.setdefault(row["method"], []).append(row)
    greedy = {r["problem_id"]: r["correct"] for r in by.get("greedy", [])}
    greedy_wall = sum(r["wall_seconds"] for r in by.get("greedy", [])) or float("nan")
    out = {}
    for method, rs in by.items():
        correct = [r["correct"] for r in rs]
        flops = [r["flops"] for r in rs if "flops" in r]
        wall = sum(r["wall_seconds"] for r in rs)
        lo, hi = bootstrap_ci(correct)
        pair = paired_comparison(greedy, {r["problem_id"]: r["correct"] for r in rs})
        out[method] = {
            "n": len(rs),
            "accuracy": sum(correct) / len(rs),
            "ci95": [lo, hi],
            "fixed_vs_greedy": pair["fixed"],
            "broken_vs_greedy": pair["broken"],
            "mean_model_calls": sum(r["model_calls"] for r in rs) / len(rs),
            "mean_flops": sum(flops) / len(flops) if len(flops) == len(rs) else None,
            "wall_seconds": wall,
            "wall_vs_greedy": wall / greedy_wall,
        }
    return out


def markdown(results: dict) -> str:
    lines = []
    for verifier, rows in results.items():
        lines += [
            f"**{verifier}** ({next(iter(rows.values()))['n']} problems)", "",
            "| method | accuracy (95% CI) | fixed / broken vs greedy | calls | GFLOPs "
            "| wall vs greedy |",
            "|---|---|---|---|---|---|",
        ]  # fmt: skip
        for m, r in rows.items():
            lo, hi = r["ci95"]
            fl = "" if r["mean_flops"] is None else f"{r['mean_flops'] / 1e9:.2f}"
            lines.append(
                f"| {m} | {100 * r['accuracy']:.1f}% ({100 * lo:.1f}–{100 * hi:.1f}) | "
                f"{r['fixed_vs_greedy']} / {r['broken_vs_greedy']} | "
                f"{r['mean_model_calls']:.0f} | {fl} | {r['wall_vs_greedy']:.1f}× |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_of = (("mean_model_calls", "model calls / problem"), ("mean_flops", "FLOPs / problem"),
               ("wall_vs_greedy", "wall time vs greedy"))  # fmt: skip
    fig, axes = plt.subplots(len(results), 3, figsize=(15, 4.5 * len(results)), squeeze=False)
    for row, (verifier, rows) in zip(axes, results.items(), strict=True):
        for ax, (key, label) in zip(row, axes_of, strict=True):
            for m, r in rows.items():
                if r[key] is None:
                    continue
                lo, hi = r["ci95"]
                y = 100 * r["accuracy"]
                ax.errorbar(r[key], y, yerr=[[y - 100 * lo], [100 * hi - y]], fmt="o",
                            capsize=3)  # fmt: skip
                ax.annotate(m, (r[key], y), textcoords="offset points", xytext=(4, 4), fontsize=8)
            ax.set_xscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel(f"accuracy (%), {verifier} verifier")
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(args) -> None:
    results = {}
    for v in VERIFIERS:
        path = os.path.join(args.out, f"{v}.jsonl")
        if os.path.exists(path):
            results[v] = table(path)
    if not results:
        raise SystemExit(f"no results under {args.out}: run first")
    with open(os.path.join(args.out, "table.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(markdown(results))
    plot(results, os.path.join(args.out, "search.png"))
    print(markdown(results))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--num-problems", type=int, default=400)
    r.add_argument("--methods", default=METHODS)
    r.add_argument("--verifiers", default=",".join(VERIFIERS))
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", required=True)
    r.set_defaults(func=run)
    s = sub.add_parser("report")
    s.add_argument("--out", required=True)
    s.set_defaults(func=report)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
