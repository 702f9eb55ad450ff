"""Where a ∇ decode's start-up time goes: seconds of tracing, lowering and XLA compilation per
program, in a fresh process with an empty persistent cache (cold) and in a second process that
finds the programs in that cache (cached).

Each run decodes the demo's workload — the bundled pair and settings on ``--num-problems`` fresh
test problems, in one ``generate`` call — inside ``nabla_jax.runtime.profiling.track()``, whose
``seconds_by_program`` splits the time by program (``run_chunk`` is the ∇ loop with its window
shapes and rollouts inlined; the others are the small host-called programs: state set-up, key
derivation, padding; ``call`` is the loop read back from its serialized copy,
``nabla_jax.runtime.exported``, whose body a cached run neither traces nor lowers).
``serialized_loop`` says per chunk whether the loop was exported, loaded or in memory. Writes
``benchmarks/results/compile.json``.

    python benchmarks/bench_compile.py --num-problems 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import jax
from nabla_jax.app.bundled import bundled_decode_config, load_bundled
from nabla_jax.decoding import NablaDecoder
from nabla_jax.runtime import compilation_cache, profiling
from nabla_jax.tasks import arithmetic
compilation_cache.use_default()
lm, rm = load_bundled()
problems = arithmetic.fresh_test_problems(int(sys.argv[1]), seed=1)
prompts = [arithmetic.format_prompt(p) for p in problems]
t1 = time.perf_counter()
with profiling.track() as t:
    dec = NablaDecoder(lm, rm, bundled_decode_config())
    dec.generate(prompts, jax.random.key(0))
t2 = time.perf_counter()
store = [how for _, how in dec.programs.log] if dec.programs is not None else None
with profiling.track() as w:
    NablaDecoder(lm, rm, bundled_decode_config()).generate(prompts, jax.random.key(0))
t3 = time.perf_counter()
print(json.dumps({"import_and_load_s": t1 - t0, "first_decode_s": t2 - t1, "warm_decode_s": t3 - t2,
                  "compiles": t.compiles, "cache_hits": t.cache_hits, "lowered": t.lowered,
                  "compile_s": t.compile_seconds, "programs": t.seconds_by_program,
                  "warm_compiles": w.compiles, "serialized_loop": store}))
"""


def run_child(cache_dir: str, n: int) -> dict:
    env = {**os.environ, "NABLA_JAX_CACHE_DIR": cache_dir}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, str(n)], env=env, capture_output=True,
                         text=True, check=True)  # fmt: skip
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["process_s"] = time.perf_counter() - t0
    top = sorted(res["programs"].items(), key=lambda kv: -sum(kv[1].values()))
    res["programs"] = {k: {p: round(s, 3) for p, s in v.items()} for k, v in top}
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-problems", type=int, default=4)
    p.add_argument("--output", default="benchmarks/results/compile.json")
    args = p.parse_args()
    import jax

    with tempfile.TemporaryDirectory() as tmp:  # the XLA cache and, beside it, the loop's copy
        cache = os.path.join(tmp, "xla")
        cold = run_child(cache, args.num_problems)
        cached = run_child(cache, args.num_problems)
    out = {"num_problems": args.num_problems, "jax": jax.__version__, "cold": cold,
           "cached": cached, "command": f"python benchmarks/bench_compile.py --num-problems "
           f"{args.num_problems}"}  # fmt: skip
    with open(args.output, "w") as f:
        json.dump(out, f, indent=2)
    for name, r in (("cold", cold), ("cached", cached)):
        print(f"{name}: process {r['process_s']:.1f} s, first decode {r['first_decode_s']:.1f} s,"
              f" warm {r['warm_decode_s']:.1f} s, {r['compiles']} compiles "
              f"({r['compile_s']:.1f} s), {r['cache_hits']} cache hits")  # fmt: skip
        for prog, t in list(r["programs"].items())[:6]:
            print(f"    {prog}: {t}")


if __name__ == "__main__":
    main()
