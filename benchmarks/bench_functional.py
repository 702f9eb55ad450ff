"""Gradient caching under ``vmap``: ``jit(vmap(refine_one))`` against the batched ``refine_rows``.

``make_refine``'s one-prompt function skips the models with a ``lax.cond`` when the row's cached
gradient is valid. Under JAX's generic batching that ``cond`` becomes a ``select`` that runs both
branches, so the skip is lost (the results stay the same); ``refine_one``'s own batching rule
(``vmap_rule=True``, the default) runs the batched ``refine_rows`` instead — what
``refine_batch`` and the decoder run, with one un-vmapped ``cond`` per step for the whole batch.
This benchmark measures the combinations on random models of bench_refine's default shape
(vocab 4096, hidden 256, 4 LM layers, 2 RM layers, prefix ~128, window 32, 20 steps at lr 0.01 —
the paper's defaults), ``--batch`` problems in one bucket:

* ``rows_cache`` / ``rows_nocache``: ``refine_rows_jit`` with gradient caching on / off;
* ``vmap_cache`` / ``vmap_nocache``: ``jax.jit(jax.vmap(make_refine(...)))`` on / off;
* ``vmap_generic_cache`` / ``vmap_generic_nocache``: the same with ``vmap_rule=False``.

It reports cold (compile included) and warm (median of ``--repeats`` interleaved rounds) seconds,
optimizer steps per second (rows × steps / warm seconds), the share of steps whose models ran,
and checks that all four give the same logits. Example::

    python benchmarks/bench_functional.py --output benchmarks/results/bench_functional.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--lm-layers", type=int, default=4)
    p.add_argument("--rm-layers", type=int, default=2)
    p.add_argument("--prefix", type=int, default=128)
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--suffix", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="benchmarks/results/bench_functional.json")
    return p.parse_args(argv)


def _models(args):
    import jax
    import transformers as tr

    import nabla_jax as nj

    def config(layers):
        return tr.Qwen2Config(
            vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
            num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=2048, num_labels=1, pad_token_id=0,
        )  # fmt: skip

    lm = nj.init_causal_lm(config(args.lm_layers), jax.random.key(args.seed))
    rm = nj.init_reward_model(config(args.rm_layers), jax.random.key(args.seed + 1))
    return lm, rm


def _problems(args, lm):
    """``--batch`` problems, prefixes of different lengths in one bucket; windows drawn from the
    LM's own (peaked) next-token logits scale so some argmaxes stay put (caching has work)."""
    import numpy as np

    import nabla_jax as nj

    rng = np.random.RandomState(args.seed)
    out = []
    for i in range(args.batch):
        p = args.prefix - (i % 4) * 8
        out.append(
            nj.RefineProblem(
                lm_prefix_ids=rng.randint(3, args.vocab, p).tolist(),
                rm_prefix_ids=rng.randint(3, args.vocab, p).tolist(),
                rm_suffix_ids=rng.randint(3, args.vocab, args.suffix).tolist(),
                init=(rng.randn(args.window, args.vocab) * 3.0).astype(np.float32),
            )
        )
    return out


def run(args) -> dict:
    import dataclasses

    import jax
    import jax.numpy as jnp
    import numpy as np

    import nabla_jax as nj
    import nabla_jax.functional as F

    lm, rm = _models(args)
    problems = _problems(args, lm)
    base = nj.DTOConfig(num_steps=args.steps, learning_rate=args.lr)
    packed = F.pack(lm, problems, base)
    keys = jnp.stack([jax.random.key(0)] * args.batch)
    table = F.rm_embedding_table(lm, rm)

    fns = {}
    for caching in (True, False):
        cfg = dataclasses.replace(base, grad_caching=caching)
        tag = "cache" if caching else "nocache"
        fns[f"rows_{tag}"] = (
            lambda cfg=cfg: F.refine_rows_jit(
                lm, rm, table, packed, keys, cfg.hyper(), cfg=cfg.program()
            )[::2]  # (logits, trace)
        )
        vm = jax.jit(jax.vmap(F.make_refine(lm, rm, cfg)))
        fns[f"vmap_{tag}"] = lambda vm=vm: vm(packed, keys)
        vg = jax.jit(jax.vmap(F.make_refine(lm, rm, cfg, vmap_rule=False)))
        fns[f"vmap_generic_{tag}"] = lambda vg=vg: vg(packed, keys)

    report = {"config": vars(args), "machine": platform.machine(), "devices": str(jax.devices())}
    cold, outs = {}, {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        outs[name] = jax.block_until_ready(fn())
        cold[name] = time.perf_counter() - t0
    warm = {name: [] for name in fns}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            warm[name].append(time.perf_counter() - t0)
    ref = np.asarray(outs["rows_nocache"][0])
    rows_steps = args.batch * args.steps
    for name in fns:
        logits, trace = outs[name]
        w = statistics.median(warm[name])
        report[name] = {
            "cold_s": round(cold[name], 3),
            "warm_s": round(w, 4),
            "steps_per_s": round(rows_steps / w, 1),
            "rows_needing_models_share": round(float(np.mean(np.asarray(trace.full_step))), 3),
            "max_abs_diff_vs_rows_nocache": float(np.max(np.abs(np.asarray(logits) - ref))),
        }
    for name in fns:
        report[name]["warm_time_over_rows_cache"] = round(
            report[name]["warm_s"] / report["rows_cache"]["warm_s"], 2
        )
    return report


def main(argv=None):
    args = _parse(argv)
    report = run(args)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
    for name in [k for k in report if k.startswith(("rows_", "vmap_"))]:
        r = report[name]
        print(
            f"{name:21s} ×{r['warm_time_over_rows_cache']:<5} "
            f"cold {r['cold_s']:7.2f} s  warm {r['warm_s']:7.3f} s  "
            f"{r['steps_per_s']:7.1f} steps/s  "
            f"rows needing models {r['rows_needing_models_share']:.0%}  "
            f"max|Δ| {r['max_abs_diff_vs_rows_nocache']:.1e}"
        )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
