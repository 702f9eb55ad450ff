"""The bundled RM read per step as every method's reward, against reading it once per response.

``run`` calls ``nabla-jax bench accuracy`` once per reading of the bundled RM, each a resumable
JSONL under ``--out``: ``orm`` (one score at the response's end, the bundled default), and the
``sequence`` PRM layout at every line's end aggregated by ``min`` and by ``last``
(``models.rm_steps`` added to the bundled run config, written beside the results). ``report``
gives each method's accuracy with a 95% bootstrap interval over problems and, against the same
method with the ``orm`` reading, the paired counts (fixed / broken) and a paired bootstrap
interval of the difference.

    python benchmarks/bench_prm_reward.py run --num-problems 400 --out benchmarks/results/prm_reward
    python benchmarks/bench_prm_reward.py report --out benchmarks/results/prm_reward
"""

from __future__ import annotations

import argparse
import json
import os

METHODS = "greedy,nabla,nabla-nodto,bon:8"
#: ``models.rm_steps`` of each reading (None: the RM's one score, the bundled default).
READINGS = {
    "orm": None,
    "prm_min": {"layout": "sequence", "aggregate": "min", "temperature": 1.0},
    "prm_last": {"layout": "sequence", "aggregate": "last"},
}


def _config(out: str, name: str, steps: dict) -> str:
    """The bundled run config with ``models.rm_steps`` set, written to ``out/name.yaml``."""
    import yaml

    from nabla_jax.app.bundled import ASSETS

    run = yaml.safe_load((ASSETS / "arithmetic.yaml").read_text())
    run.setdefault("models", {})["rm_steps"] = steps
    path = os.path.join(out, f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(run, f, sort_keys=False)
    return path


def run(args) -> None:
    from nabla_jax.app import cli

    os.makedirs(args.out, exist_ok=True)
    for name in args.readings.split(","):
        argv = ["bench", "accuracy", "--num-problems", str(args.num_problems), "--methods",
                args.methods, "--seed", str(args.seed), "--no-progress",
                "--output", os.path.join(args.out, f"{name}.jsonl")]  # fmt: skip
        if READINGS[name] is not None:
            argv += ["--config", _config(args.out, name, READINGS[name])]
        code = cli.main(argv)
        if code:
            raise SystemExit(code)


def _correct(path: str) -> dict[str, dict[str, bool]]:
    from nabla_jax.app.results_file import dedupe, read_results

    by: dict[str, dict[str, bool]] = {}
    for row in dedupe(read_results(path)[1]):
        by.setdefault(row["method"], {})[row["problem_id"]] = bool(row["correct"])
    return by


def report(args) -> None:
    from nabla_jax.app.stats import bootstrap_ci, paired_comparison, paired_difference_ci

    runs = {n: _correct(os.path.join(args.out, f"{n}.jsonl")) for n in READINGS
            if os.path.exists(os.path.join(args.out, f"{n}.jsonl"))}  # fmt: skip
    if "orm" not in runs:
        raise SystemExit(f"no orm.jsonl under {args.out}: run first")
    table, lines = {}, ["| method | reading | accuracy (95% CI) | vs orm: fixed / broken | "
                        "difference (paired 95% CI) |", "|---|---|---|---|---|"]  # fmt: skip
    for method in runs["orm"]:
        for name, by in runs.items():
            got = by.get(method)
            if not got:
                continue
            acc = sum(got.values()) / len(got)
            lo, hi = bootstrap_ci(list(got.values()))
            row = {"n": len(got), "accuracy": acc, "ci95": [lo, hi]}
            cell = ""
            if name != "orm":
                pair = paired_comparison(runs["orm"][method], got)
                dlo, dhi = paired_difference_ci(runs["orm"][method], got)
                diff = acc - sum(runs["orm"][method].values()) / len(runs["orm"][method])
                row.update(fixed=pair["fixed"], broken=pair["broken"], difference=diff,
                           difference_ci95=[dlo, dhi])  # fmt: skip
                cell = (f"{pair['fixed']} / {pair['broken']} | {100 * diff:+.1f} "
                        f"({100 * dlo:+.1f}..{100 * dhi:+.1f})")  # fmt: skip
            else:
                cell = " | "
            table.setdefault(method, {})[name] = row
            lines.append(f"| {method} | {name} | {100 * acc:.1f}% ({100 * lo:.1f}–{100 * hi:.1f})"
                         f" | {cell} |")  # fmt: skip
    with open(os.path.join(args.out, "table.json"), "w") as f:
        json.dump({"readings": READINGS, "methods": table}, f, indent=2)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--num-problems", type=int, default=400)
    r.add_argument("--methods", default=METHODS)
    r.add_argument("--readings", default=",".join(READINGS))
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
