"""Exploration variants of ∇-Reasoner on the bundled arithmetic task: choose on validation,
report on test, each variant with the reward model and with the exact oracle in the acceptance
test, next to greedy, Best-of-N and self-consistency.

Every run goes through :func:`nabla_jax.app.evaluation.run_benchmark` (one resumable JSONL per
method / variant / acceptance scorer under ``--out``); ``summary`` then writes one JSON with
accuracy, 95% bootstrap intervals over problems, mean model calls and the paired comparison
with greedy (fixed / broken / unchanged) for every file, and draws accuracy against calls.

Examples (the README's accuracy section; wall times on 2 shared CPU cores in the report)::

    python benchmarks/bench_explore.py run --split validation --num-problems 80 \\
        --variants paper,excl,excl-passes,excl-topk,excl-gap,excl-multi --out results/explore
    python benchmarks/bench_explore.py run --split test --num-problems 400 \\
        --baselines greedy,bon:2,bon:4,bon:8,bon:16,sc:4,sc:8 --variants paper,CHOSEN \\
        --out results/explore
    python benchmarks/bench_explore.py summary --out results/explore \\
        --json results/explore_summary.json --plot results/explore.png
"""

from __future__ import annotations

import argparse
import json
import os
import time

#: The paper's loop on the bundled task: the bundled settings without their two exploration
#: options (the default since this sweep chose them); every variant starts from it.
PAPER_LOOP = {"resample_excludes_current": False, "accept_margin": None}

#: DecodeConfig overrides of each variant, applied to the bundled settings after PAPER_LOOP.
VARIANTS = {
    "paper": {},
    "excl": {"resample_excludes_current": True},
    "excl-passes": {"resample_excludes_current": True, "refine_passes": 8},
    "excl-topk": {"resample_excludes_current": True, "grad_top_k": 1, "confidence_threshold": None},
    "excl-quantile": {"resample_excludes_current": True, "grad_quantile": 0.9},
    "excl-gap": {"resample_excludes_current": True, "dto_lr_gap": 1.0},
    "excl-multi": {"resample_excludes_current": True, "positions_per_iteration": 2},
    "excl-passes-gap": {"resample_excludes_current": True, "refine_passes": 8, "dto_lr_gap": 1.0},
    "excl-margin1": {"resample_excludes_current": True, "accept_margin": 1.0},
    "excl-margin2": {"resample_excludes_current": True, "accept_margin": 2.0},
    "excl-margin4": {"resample_excludes_current": True, "accept_margin": 4.0},
    "excl-margin3": {"resample_excludes_current": True, "accept_margin": 3.0},
    "excl-passes-margin2": {
        "resample_excludes_current": True,
        "refine_passes": 8,
        "accept_margin": 2.0,
    },
    "excl-passes-margin3": {
        "resample_excludes_current": True,
        "refine_passes": 8,
        "accept_margin": 3.0,
    },
    "paper-margin1": {"accept_margin": 1.0},
    "excl-passes-16": {
        "resample_excludes_current": True,
        "refine_passes": 8,
        "max_n_generations": 16,
    },
}


def _problems(split: str, n: int, seed: int):
    from nabla_jax.tasks.arithmetic import generate

    return generate(split, n, seed)


def cmd_run(args) -> None:
    from nabla_jax.app import evaluation
    from nabla_jax.app.bundled import bundled_baseline_sampling, bundled_decode_config, load_bundled
    from nabla_jax.tasks import get_task

    lm, rm = load_bundled()
    task = get_task()
    problems = _problems(args.split, args.num_problems, args.seed)
    sampling = bundled_baseline_sampling()
    os.makedirs(args.out, exist_ok=True)
    jobs = []
    for acc in args.acceptance.split(","):
        for m in [m for m in args.baselines.split(",") if m]:
            if acc == "oracle" and not m.startswith("bon"):
                continue  # only Best-of-N and ∇ consult an acceptance scorer
            jobs.append((m, m.replace(":", ""), {}, acc))
        for v in [v for v in args.variants.split(",") if v]:
            jobs.append(("nabla", f"nabla-{v}", VARIANTS[v], acc))
    for method, label, overrides, acc in jobs:
        cfg = bundled_decode_config(**{**PAPER_LOOP, **overrides})
        path = os.path.join(args.out, f"{args.split}_{label}_{acc}.jsonl")
        prov = evaluation.provenance(
            seed=args.seed, methods=[method], cfg=cfg, baseline_sampling=sampling,
            lm="bundled", rm="bundled", dtype="float32", problems=[p.id for p in problems],
        )  # fmt: skip
        prov["acceptance"] = acc
        t0 = time.perf_counter()
        evaluation.run_benchmark(
            lm, rm, problems, [method], cfg, seed=args.seed, results_path=path,
            baseline_sampling=sampling, task=task, provenance=prov, acceptance=acc,
            progress=False,
        )  # fmt: skip
        print(f"{path}: {time.perf_counter() - t0:.0f} s", flush=True)


def summarize_dir(out: str, split: str) -> dict:
    """``{label_acceptance: {accuracy, ci95, mean_model_calls, generations, n, vs_greedy}}``."""
    from nabla_jax.app.results_file import runs_in_directory
    from nabla_jax.app.stats import bootstrap_ci, paired_comparison

    runs = runs_in_directory(out, split)
    greedy = {i: r["correct"] for i, r in runs.get("greedy_rm", {}).items()}
    summary = {}
    for name, rows in runs.items():
        correct = [r["correct"] for r in rows.values()]
        n = len(correct)
        entry = {
            "accuracy": sum(correct) / n,
            "ci95": bootstrap_ci(correct),
            "mean_model_calls": sum(r["model_calls"] for r in rows.values()) / n,
            "mean_generations": sum(r["generations"] for r in rows.values()) / n,
            "n": n,
        }
        if greedy and name != "greedy_rm":
            entry["vs_greedy"] = paired_comparison(
                greedy, {i: r["correct"] for i, r in rows.items()}
            )
        summary[name] = entry
    return summary


def plot(summary: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for acc, style in (("_rm", "-"), ("_oracle", "--")):
        bon = sorted(
            (s["mean_model_calls"], 100 * s["accuracy"])
            for k, s in summary.items()
            if k.startswith("bon") and k.endswith(acc)
        )
        if bon:
            ax.plot(*zip(*bon), style, color="tab:blue", alpha=0.5, zorder=2)
    for name, s in summary.items():
        oracle = name.endswith("_oracle")
        color = "tab:red" if name.startswith("nabla") else "tab:blue"
        if name.startswith("sc"):
            color = "tab:green"
        x, y = s["mean_model_calls"], 100 * s["accuracy"]
        lo, hi = (100 * v for v in s["ci95"])
        ax.errorbar(x, y, yerr=[[y - lo], [hi - y]], fmt="s" if oracle else "o", color=color,
                    mfc="none" if oracle else color, capsize=3, zorder=3)  # fmt: skip
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("mean model calls per problem (log scale)")
    ax.set_ylabel("accuracy (%), 95% bootstrap interval")
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_summary(args) -> None:
    summary = summarize_dir(args.out, args.split)
    with open(args.json, "w") as f:
        json.dump({"split": args.split, "runs": summary}, f, indent=1)
    print(
        "| run | accuracy [95% CI] | mean calls | mean generations | fixed/broken vs greedy | n |"
    )
    print("|---|---|---|---|---|---|")
    for name, s in summary.items():
        lo, hi = s["ci95"]
        vs = s.get("vs_greedy", {})
        print(
            f"| {name} | {100 * s['accuracy']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] | "
            f"{s['mean_model_calls']:.1f} | {s['mean_generations']:.2f} | "
            f"{vs.get('fixed', '')}/{vs.get('broken', '')} | {s['n']} |"
        )
    if args.plot:
        n = max(s["n"] for s in summary.values())
        plot(summary, args.plot, f"bundled arithmetic, {args.split} split, {n} problems "
             "(squares: oracle acceptance)")  # fmt: skip


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run")
    run.add_argument("--split", choices=("validation", "test"), required=True)
    run.add_argument("--num-problems", type=int, required=True)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--baselines", default="")
    run.add_argument("--variants", default="")
    run.add_argument("--acceptance", default="rm,oracle")
    run.add_argument("--out", required=True)
    summ = sub.add_parser("summary")
    summ.add_argument("--split", default="test")
    summ.add_argument("--out", required=True)
    summ.add_argument("--json", required=True)
    summ.add_argument("--plot", default=None)
    args = ap.parse_args(argv)
    {"run": cmd_run, "summary": cmd_summary}[args.cmd](args)


if __name__ == "__main__":
    main()
