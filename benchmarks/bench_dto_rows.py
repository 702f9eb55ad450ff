"""DTO on the selected rows only: ∇-Reasoner's wall time and DTO's share of it, with the whole
batch in every DTO call (``dto_rows`` None) against sub-batches of the selected rows.

On ``--num-problems`` fresh test problems (``--seed``), the bundled pair and settings at
``--batch-size``: for each variant a decoder is built, run once (compiles; the cold seconds),
then run again on the same problems (warm; the figure compared). DTO's share of a variant is
``(its warm seconds − the warm seconds without DTO) / its warm seconds``. Tokens and counters of
every ``dto_rows`` variant are checked equal to the whole-batch run's.

    python benchmarks/bench_dto_rows.py --num-problems 80 --output benchmarks/results/dto_rows.json
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-problems", type=int, default=80)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rows", default="4,2", help="dto_rows values to compare with None")
    p.add_argument("--output", default="benchmarks/results/dto_rows.json")
    args = p.parse_args()

    import jax

    import nabla_jax as nj
    from nabla_jax.app.bundled import bundled_decode_config, load_bundled
    from nabla_jax.tasks import format_prompt, fresh_test_problems

    lm, rm = load_bundled()
    prompts = [format_prompt(q) for q in fresh_test_problems(args.num_problems, args.seed)]
    variants = {"no DTO": {"use_dto": False}, "whole batch": {}}
    variants |= {f"dto_rows={r}": {"dto_rows": int(r)} for r in args.rows.split(",")}
    rows, reference = {}, None
    for name, kw in variants.items():
        cfg = bundled_decode_config(batch_size=args.batch_size, **kw)
        decoder = nj.NablaDecoder(lm, rm, cfg)
        t0 = time.perf_counter()
        decoder.generate(prompts, jax.random.key(0))
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        results = decoder.generate(prompts, jax.random.key(0))
        warm = time.perf_counter() - t0
        out = [(r.token_ids, r.stats) for r in results]
        if name == "whole batch":
            reference = out
        same = None if reference is None or not name.startswith("dto_rows") else out == reference
        rows[name] = {"cold_s": cold, "warm_s": warm, "same_as_whole_batch": same,
                      "dto_calls": sum(r.stats["dto_calls"] for r in results),
                      "refinements": sum(r.stats["refinements"] for r in results)}  # fmt: skip
        print(name, {k: round(v, 2) if isinstance(v, float) else v for k, v in rows[name].items()})
    base = rows["no DTO"]["warm_s"]
    for name, r in rows.items():
        if name != "no DTO":
            r["dto_share"] = (r["warm_s"] - base) / r["warm_s"]
    report = {
        "command": f"python benchmarks/bench_dto_rows.py --num-problems {args.num_problems} "
        f"--seed {args.seed} --batch-size {args.batch_size} --rows {args.rows}",
        "jax": jax.__version__, "devices": str(jax.devices()), "variants": rows,
    }  # fmt: skip
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
    for name, r in rows.items():
        share = f", DTO {100 * r['dto_share']:.0f}% of it" if "dto_share" in r else ""
        print(f"{name:>14}: warm {r['warm_s']:.1f} s{share}")


if __name__ == "__main__":
    main()
