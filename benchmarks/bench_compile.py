"""Where a ∇ decode's start-up time goes: seconds of tracing, lowering and XLA compilation per
program, in a fresh process with an empty persistent cache (cold) and in a second process that
finds the programs in that cache (cached).

Each run decodes the demo's workload — the bundled pair and settings on ``--num-problems`` fresh
test problems, in one ``generate`` call — inside ``nabla_jax.runtime.profiling.track()``, whose
``seconds_by_program`` splits the time by program (``run_chunk`` is the ∇ loop with its window
shapes and rollouts inlined; the others are the small host-called programs: state set-up, key
derivation, padding; ``call`` is the loop read back from its serialized copy,
``nabla_jax.runtime.exported``, whose body a cached run neither traces nor lowers).
``serialized_loop`` says per chunk whether the loop was exported, loaded or in memory.
``--window-shapes 1,3`` repeats the pair of processes for each ``dto_window_shapes`` (how many
window shapes the DTO step is compiled for), each in its own empty cache, and times a warm
decode of ``--warm-problems`` problems too, so the compile saved is set beside the warm cost.
Writes ``benchmarks/results/compile.json``.

    python benchmarks/bench_compile.py --num-problems 4 --window-shapes 1,3 --warm-problems 24
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
n, shapes, n_warm = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
cfg = bundled_decode_config(dto_window_shapes=shapes)
problems = arithmetic.fresh_test_problems(max(n, n_warm), seed=1)
prompts = [arithmetic.format_prompt(p) for p in problems]
t1 = time.perf_counter()
with profiling.track() as t:
    dec = NablaDecoder(lm, rm, cfg)
    dec.generate(prompts[:n], jax.random.key(0))
t2 = time.perf_counter()
store = [how for _, how in dec.programs.log] if dec.programs is not None else None
with profiling.track() as w:
    NablaDecoder(lm, rm, cfg).generate(prompts[:n], jax.random.key(0))
t3 = time.perf_counter()
warm_many = None
if n_warm:
    dec.generate(prompts[:n_warm], jax.random.key(1))  # any other program shape compiles here
    t4 = time.perf_counter()
    res = dec.generate(prompts[:n_warm], jax.random.key(1))
    warm_many = {"problems": n_warm, "s": time.perf_counter() - t4, "correct": sum(
        arithmetic.grade(r.text, p.answer) for r, p in zip(res, problems))}
print(json.dumps({"import_and_load_s": t1 - t0, "first_decode_s": t2 - t1, "warm_decode_s": t3 - t2,
                  "compiles": t.compiles, "cache_hits": t.cache_hits, "lowered": t.lowered,
                  "compile_s": t.compile_seconds, "programs": t.seconds_by_program,
                  "warm_compiles": w.compiles, "serialized_loop": store, "warm_many": warm_many}))
"""


def run_child(cache_dir: str, n: int, shapes: int, n_warm: int) -> dict:
    env = {**os.environ, "NABLA_JAX_CACHE_DIR": cache_dir}
    t0 = time.perf_counter()
    cmd = [sys.executable, "-c", CHILD, str(n), str(shapes), str(n_warm)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["process_s"] = time.perf_counter() - t0
    top = sorted(res["programs"].items(), key=lambda kv: -sum(kv[1].values()))
    res["programs"] = {k: {p: round(s, 3) for p, s in v.items()} for k, v in top}
    return res


def _print(name: str, r: dict) -> None:
    warm = r["warm_many"]
    extra = f", warm {warm['problems']} problems {warm['s']:.1f} s" if warm else ""
    print(f"{name}: process {r['process_s']:.1f} s, first decode {r['first_decode_s']:.1f} s,"
          f" warm {r['warm_decode_s']:.1f} s, {r['compiles']} compiles ({r['compile_s']:.1f} s),"
          f" {r['cache_hits']} cache hits{extra}")  # fmt: skip
    for prog, t in list(r["programs"].items())[:4]:
        print(f"    {prog}: {t}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-problems", type=int, default=4)
    p.add_argument("--window-shapes", default="1", help="dto_window_shapes values, e.g. 1,3")
    p.add_argument("--warm-problems", type=int, default=0,
                   help="also time a warm decode of this many problems (0: off)")  # fmt: skip
    p.add_argument("--output", default="benchmarks/results/compile.json")
    args = p.parse_args()
    import jax

    shapes = [int(v) for v in args.window_shapes.split(",")]
    runs = {}
    for n_shapes in shapes:
        with tempfile.TemporaryDirectory() as tmp:  # the XLA cache and, beside it, the loop's copy
            cache = os.path.join(tmp, "xla")
            a = (args.num_problems, n_shapes, args.warm_problems)
            runs[str(n_shapes)] = {"cold": run_child(cache, *a), "cached": run_child(cache, *a)}
        for name, r in runs[str(n_shapes)].items():
            _print(f"dto_window_shapes {n_shapes}, {name}", r)
    out = {"num_problems": args.num_problems, "warm_problems": args.warm_problems,
           "jax": jax.__version__, "cpu_count": os.cpu_count(), "dto_window_shapes": runs,
           "command": "python benchmarks/bench_compile.py " + " ".join(sys.argv[1:])}  # fmt: skip
    with open(args.output, "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
