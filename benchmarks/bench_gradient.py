"""Does the gradient matter? DTO settings on the bundled task, each against the same loop
without DTO, with the bundled RM and with the exact oracle in the acceptance test.

Every run goes through :func:`nabla_jax.app.evaluation.run_benchmark` with the oracle's
next-token diagnostics on (one resumable JSONL per variant and acceptance scorer under
``--out``). ``summary`` writes one JSON and a Markdown table: accuracy with a 95% bootstrap
interval, mean model calls, and — against ``nodto`` with the same acceptance — the paired
counts (fixed / broken) with a paired 95% interval of the difference; and what DTO did at the
refinements (mean KL of the resample distribution, the right token's probability before →
after, the share of refinements where it rose among those where it was not already the top-1).

``ceiling`` is the same loop with a perfect refinement: wherever the oracle names a right next
token that differs from the current one, that token is proposed (``oracle_proposals``). Its
distance from ``nodto`` bounds what any gradient could add at this selection, budget and
acceptance test.

Choose on validation, report on test (never the other way round)::

    python benchmarks/bench_gradient.py run --split validation --num-problems 80 \\
        --variants nodto,bundled,lr0.1,lr0.3,lr1 --out benchmarks/results/gradient
    python benchmarks/bench_gradient.py summary --split validation --out benchmarks/results/gradient
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

#: Overrides of each variant: ``DecodeConfig`` fields, ``dto`` a dict of ``DTOConfig`` fields
#: and ``resample`` one of ``SamplingConfig`` fields, applied to the bundled settings.
VARIANTS = {
    "nodto": {"use_dto": False},
    "bundled": {},
    "lr0.1": {"dto": {"learning_rate": 0.1}},
    "lr0.3": {"dto": {"learning_rate": 0.3}},
    "lr1": {"dto": {"learning_rate": 1.0}},
    "gap1": {"dto_lr_gap": 1.0},
    "gap2": {"dto_lr_gap": 2.0},
    "lr0.3-const": {"dto": {"learning_rate": 0.3, "schedule": "constant"}},
    "lr0.3-nocache": {"dto": {"learning_rate": 0.3, "grad_caching": False}},
    "latents": {"dto": {"mode": "latents"}},
    "latents-lr0.1": {"dto": {"mode": "latents", "learning_rate": 0.1}},
    "latents-lr1": {"dto": {"mode": "latents", "learning_rate": 1.0}},
    # A soft straight-through estimator: the RM reads the softmax mixture, not the one-hot.
    "soft-lr0.3": {"dto": {"hard": False, "learning_rate": 0.3}},
    # A sharper resample without DTO: how much of the ceiling needs no gradient at all.
    "nodto-tau0.1": {"use_dto": False, "resample": {"temperature": 0.1}},
    # The ceiling of any DTO: the oracle's right token proposed wherever it names one that
    # differs from the current token (no DTO step run: the draw it would refine is replaced).
    "ceiling": {"use_dto": False, "oracle_proposals": True},
    # ... with a smaller acceptance margin (the bundled 4 guards against the RM's errors).
    "ceiling-margin0": {"use_dto": False, "oracle_proposals": True, "accept_margin": None},
    "ceiling-margin2": {"use_dto": False, "oracle_proposals": True, "accept_margin": 2.0},
}


def variant_config(name: str):
    """The bundled ``DecodeConfig`` with ``VARIANTS[name]`` applied."""
    from nabla_jax.app.bundled import bundled_decode_config

    overrides = dict(VARIANTS[name])
    nested = {k: overrides.pop(k) for k in ("dto", "resample") if k in overrides}
    cfg = bundled_decode_config(**overrides)
    for field, values in nested.items():
        inner = dataclasses.replace(getattr(cfg, field), **values)
        cfg = dataclasses.replace(cfg, **{field: inner})
    return cfg


def cmd_run(args) -> None:
    from nabla_jax.app import evaluation
    from nabla_jax.app.bundled import load_bundled
    from nabla_jax.tasks import get_task
    from nabla_jax.tasks.arithmetic import generate

    lm, rm = load_bundled()
    if args.rm:  # a candidate verifier, before it is shipped
        from nabla_jax.models import load_reward_model

        rm = load_reward_model(args.rm)
    if args.rm_steps:  # the RM read at every line's end: DTO follows the aggregated step scores
        from nabla_jax.app.bundled import BUNDLED_RM
        from nabla_jax.functional.step_reward import step_reward
        from nabla_jax.models import load_process_reward_model

        prm = load_process_reward_model(args.rm or str(BUNDLED_RM))
        rm = step_reward(prm, args.rm_steps, step_end="\n")
    task = get_task()
    problems = generate(args.split, args.num_problems, args.seed)
    os.makedirs(args.out, exist_ok=True)
    for acc in args.acceptance.split(","):
        for name in args.variants.split(","):
            cfg = variant_config(name)
            path = os.path.join(args.out, f"{args.split}_{name}_{acc}.jsonl")
            reading = f" per step, {args.rm_steps}" if args.rm_steps else ""
            prov = evaluation.provenance(
                seed=args.seed, methods=["nabla"], cfg=cfg, lm="bundled",
                rm=(args.rm or "bundled") + reading,
                dtype="float32", problems=[p.id for p in problems],
            )  # fmt: skip
            prov["acceptance"] = acc
            t0 = time.perf_counter()
            evaluation.run_benchmark(
                lm, rm, problems, ["nabla"], cfg, seed=args.seed, results_path=path, task=task,
                provenance=prov, acceptance=acc, oracle_diagnostics=True, progress=False,
            )  # fmt: skip
            print(f"{path}: {time.perf_counter() - t0:.0f} s", flush=True)


def summarize(out: str, split: str) -> dict:
    """``{variant_acceptance: {accuracy, ci95, mean_model_calls, wall_seconds, n[, vs_nodto,
    difference, difference_ci95][, dto]}}``."""
    from nabla_jax.app.gradient_report import method_diagnostics
    from nabla_jax.app.results_file import runs_in_directory
    from nabla_jax.app.stats import bootstrap_ci, paired_comparison, paired_difference_ci

    runs = runs_in_directory(out, split)
    summary = {}
    for name, rows in runs.items():
        acc = name.rsplit("_", 1)[1]
        correct = {i: r["correct"] for i, r in rows.items()}
        n = len(correct)
        entry = {
            "accuracy": sum(correct.values()) / n,
            "ci95": bootstrap_ci(list(correct.values())),
            "mean_model_calls": sum(r["model_calls"] for r in rows.values()) / n,
            "wall_seconds": sum(r["wall_seconds"] for r in rows.values()),
            "n": n,
        }
        base = runs.get(f"nodto_{acc}")
        if base is not None and name != f"nodto_{acc}":
            b = {i: r["correct"] for i, r in base.items()}
            entry["vs_nodto"] = paired_comparison(b, correct)
            shared = set(b) & set(correct)
            gained = sum(correct[i] for i in shared) - sum(b[i] for i in shared)
            entry["difference"] = gained / len(shared)
            entry["difference_ci95"] = paired_difference_ci(b, correct)
        dto = method_diagnostics(list(rows.values()))
        if dto is not None:
            entry["dto"] = dto
        summary[name] = entry
    return summary


def table(summary: dict) -> str:
    lines = [
        "| variant | acceptance | accuracy (95% CI) | calls | vs nodto: fixed / broken | "
        "difference (paired 95% CI) | KL | p(right) before → after | p(right) up | "
        "at a wrong token: right already top-1, mean p(right) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        variant, acc = name.rsplit("_", 1)
        lo, hi = s["ci95"]
        vs, d = s.get("vs_nodto"), s.get("dto") or {}
        pair = f"{vs['fixed']} / {vs['broken']}" if vs else ""
        diff = ""
        if vs:
            dlo, dhi = s["difference_ci95"]
            diff = f"{100 * s['difference']:+.1f} ({100 * dlo:+.1f}..{100 * dhi:+.1f})"
        kl = f"{d['kl']:.3f}" if "kl" in d else ""
        pr = (f"{d['p_right_before']:.3f} → {d['p_right_after']:.3f}"
              if "p_right_before" in d else "")  # fmt: skip
        up = (f"{100 * d['p_right_up']:.0f}% of {d['right_not_top1']}"
              if d.get("right_not_top1") else "")  # fmt: skip
        room = (f"{100 * d['right_was_top1']:.0f}% of {d['at_wrong_token']}, "
                f"{d['p_right_at_wrong']:.2f}" if d.get("at_wrong_token") else "")  # fmt: skip
        lines.append(f"| {variant} | {acc} | {100 * s['accuracy']:.1f}% ({100 * lo:.1f}–"
                     f"{100 * hi:.1f}) | {s['mean_model_calls']:.0f} | {pair} | {diff} | {kl} | "
                     f"{pr} | {up} | {room} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def cmd_summary(args) -> None:
    summary = summarize(args.out, args.split)
    body = {"split": args.split, "variants": {k: VARIANTS[k.rsplit("_", 1)[0]] for k in summary},
            "runs": summary}  # fmt: skip
    with open(os.path.join(args.out, f"{args.split}.summary.json"), "w") as f:
        json.dump(body, f, indent=1)
    text = table(summary)
    with open(os.path.join(args.out, f"{args.split}.table.md"), "w") as f:
        f.write(text)
    print(text)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run")
    run.add_argument("--split", choices=("validation", "test"), required=True)
    run.add_argument("--num-problems", type=int, required=True)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--variants", default="nodto,bundled")
    run.add_argument("--acceptance", default="rm,oracle")
    run.add_argument("--out", required=True)
    run.add_argument("--rm", default=None, help="a reward-model directory (default: bundled)")
    run.add_argument(
        "--rm-steps",
        default=None,
        choices=("last", "min", "product", "mean"),
        help="read the RM at every line's end, aggregated so (a PRM reading)",
    )
    summ = sub.add_parser("summary")
    summ.add_argument("--split", default="test")
    summ.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    {"run": cmd_run, "summary": cmd_summary}[args.cmd](args)


if __name__ == "__main__":
    main()
