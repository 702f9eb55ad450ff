"""Scale-out benchmark: ``refine_batch`` over device meshes, and the communication each mesh costs.

For every mesh (data, model) over N virtual CPU devices it loads the same random Qwen2 LM + RM
straight into the sharded layout, runs ``refine_batch`` on the same problems, and reads the
compiled DTO program to count the collectives (all-reduce, all-gather, reduce-scatter,
collective-permute, all-to-all) and the bytes they move: those inside the step loop run once
per DTO step (the ones inside the full-step branch only on steps that run the models), the others
once per call.

Virtual CPU devices share this machine's cores, so wall time says little about real scaling:
the communication counts carry the argument. On a machine with real accelerators the same script
measures real throughput (``--devices`` = the number available; no XLA_FLAGS then).

    python benchmarks/bench_scale.py --output results/bench_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
_DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1, "s8": 1, "u8": 1,
                "f64": 8, "s64": 8, "u64": 8}  # fmt: skip


def _shape_bytes(text: str) -> int:
    """Bytes of every array shape in an HLO result type such as ``(f32[8,32]{1,0}, s32[])``."""
    total = 0
    for dt, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", text):
        if dt not in _DTYPE_BYTES:
            continue
        n = 1
        for d in dims.split(","):
            if d:
                n *= int(d)
        total += n * _DTYPE_BYTES[dt]
    return total


def analyse_hlo(hlo: str) -> dict:
    """Collectives per computation of an HLO module, classified by where they execute."""
    comps: dict[str, list[str]] = {}
    current = None
    for line in hlo.splitlines():
        m = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if m and not line.startswith(" "):
            current = m.group(1)
            comps[current] = []
            if line.startswith("ENTRY"):
                comps["__entry__"] = comps[current]
            continue
        if current is not None:
            comps[current].append(line)
    calls = {name: set() for name in comps}
    for name, lines in comps.items():
        for line in lines:
            for ref in re.findall(
                r"(?:body|condition|to_apply|calls|true_computation|false_computation)=%?([\w.\-]+)",
                line,
            ):
                calls[name].add(ref)
            for group in re.findall(r"branch_computations=\{([^}]*)\}", line):
                calls[name].update(x.strip().lstrip("%") for x in group.split(","))

    def reach(roots):
        seen, stack = set(), list(roots)
        while stack:
            c = stack.pop()
            if c in seen or c not in comps:
                continue
            seen.add(c)
            stack.extend(calls[c])
        return seen

    loop_bodies = {
        ref for lines in comps.values() for line in lines
        for ref in re.findall(r"\bbody=%?([\w.\-]+)", line)
    }  # fmt: skip
    in_loop = reach(loop_bodies)
    branches = set()
    for name in in_loop:
        for line in comps[name]:
            for group in re.findall(r"branch_computations=\{([^}]*)\}", line):
                branches.update(x.strip().lstrip("%") for x in group.split(","))
            for ref in re.findall(r"(?:true|false)_computation=%?([\w.\-]+)", line):
                branches.add(ref)
    in_branch = reach(branches)

    out = {
        "per_step_always": {"count": 0, "bytes": 0},
        "per_full_step_only": {"count": 0, "bytes": 0},
        "once_per_call": {"count": 0, "bytes": 0},
        "by_kind": {},
    }
    for name, lines in comps.items():
        if name == "__entry__":
            continue
        for line in lines:
            m = re.search(r"=\s*(.*?)\s(" + "|".join(COLLECTIVES) + r")(?:-start)?\(", line)
            if not m:
                continue
            nbytes = _shape_bytes(m.group(1))
            kind = m.group(2)
            where = (
                "per_full_step_only" if name in in_branch
                else "per_step_always" if name in in_loop
                else "once_per_call"
            )  # fmt: skip
            out[where]["count"] += 1
            out[where]["bytes"] += nbytes
            k = out["by_kind"].setdefault(kind, {"count": 0, "bytes": 0})
            k["count"] += 1
            k["bytes"] += nbytes
    out["per_full_step"] = {
        "count": out["per_step_always"]["count"] + out["per_full_step_only"]["count"],
        "bytes": out["per_step_always"]["bytes"] + out["per_full_step_only"]["bytes"],
    }
    return out


def child(args) -> dict:
    """Runs inside a process with ``args.devices`` devices: every mesh of that size."""
    import jax
    import numpy as np

    import nabla_jax as nj
    from nabla_jax import sharding
    from nabla_jax.functional.checks import rm_embedding_table
    from nabla_jax.functional.packing import pad_problems
    from nabla_jax.functional.program import refine_rows_jit

    n = jax.device_count()
    meshes = [(n // m, m) for m in (1, 2, 4, 8) if n % m == 0 and m <= n]
    lm0 = nj.load_causal_lm(args.model_dir + "/lm")
    rng = np.random.RandomState(0)
    v = lm0.config.vocab_size
    problems = [
        nj.RefineProblem(
            rng.randint(3, v, int(rng.randint(args.prefix // 2, args.prefix))).tolist(),
            rng.randint(3, v, int(rng.randint(args.prefix // 2, args.prefix))).tolist(),
            rng.randint(3, v, 6).tolist(),
            rng.randn(args.window, v).astype(np.float32),
        )
        for _ in range(args.batch)
    ]
    cfg = nj.DTOConfig(num_steps=args.steps, learning_rate=0.01, grad_caching=False)
    rows = []
    for data, model in meshes:
        mesh = sharding.make_mesh({"data": data, "model": model})
        lm = nj.load_causal_lm(args.model_dir + "/lm", mesh=mesh)
        rm = nj.load_reward_model(args.model_dir + "/rm", mesh=mesh)
        key = jax.random.key(0)
        t0 = time.perf_counter()
        res = nj.refine_batch(lm, rm, problems, cfg, key, batch_size=args.batch, mesh=mesh)
        first = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            res = nj.refine_batch(lm, rm, problems, cfg, key, batch_size=args.batch, mesh=mesh)
            jax.block_until_ready(res[-1].logits)
            times.append(time.perf_counter() - t0)
        # The compiled program that ran: lower it with the same sharded arguments.
        slm, srm, _ = sharding.shard_refine_models(lm, rm, None, mesh)
        table = rm_embedding_table(slm, srm, None)
        _, _, table = sharding.shard_refine_models(None, None, table, mesh)
        batch = pad_problems(slm, problems, cfg, args.batch)
        keys = jax.numpy.stack([key] * args.batch)
        batch, keys = sharding.shard_batch((batch, keys), mesh)
        hlo = (
            refine_rows_jit.lower(slm, srm, table, batch, keys, cfg.hyper(), cfg=cfg.program())
            .compile()
            .as_text()
        )
        comm = analyse_hlo(hlo)
        med = sorted(times)[len(times) // 2]
        rows.append({
            "devices": n, "data": data, "model": model,
            "first_call_s": first, "median_s": med,
            "steps_per_s": args.steps * args.batch / med,
            "collectives": comm,
            "tokens": [np.asarray(r.tokens).tolist() for r in res],
        })  # fmt: skip
        print(f"devices={n} data={data} model={model}: {med:.2f} s/call, "
              f"{comm['per_full_step']['count']} collectives "
              f"({comm['per_full_step']['bytes'] / 1e6:.2f} MB) per DTO step, "
              f"{comm['once_per_call']['count']} once per call", flush=True)  # fmt: skip
    return {"rows": rows}


def save_models(path, args):
    import torch
    import transformers as tr

    torch.manual_seed(0)
    common = dict(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                  num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512,
                  pad_token_id=0)  # fmt: skip
    tr.Qwen2ForCausalLM(tr.Qwen2Config(num_hidden_layers=args.layers, **common)).save_pretrained(
        f"{path}/lm"
    )
    tr.Qwen2ForSequenceClassification(
        tr.Qwen2Config(num_hidden_layers=max(1, args.layers // 2), num_labels=1, **common)
    ).save_pretrained(f"{path}/rm")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", default="1,2,4,8", help="virtual device counts to try")
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--prefix", type=int, default=64)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--output", default="results/bench_scale.json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return
    tmp = tempfile.mkdtemp()
    save_models(tmp, args)
    all_rows = []
    for n in [int(x) for x in args.devices.split(",")]:
        env = dict(os.environ, JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")  # fmt: skip
        cmd = [sys.executable, __file__, "--child", "--model-dir", tmp] + [
            a for a in sys.argv[1:] if a != "--child"
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        lines = [ln for ln in proc.stdout.splitlines() if not ln.startswith("RESULT")]
        sys.stdout.write("".join(ln + "\n" for ln in lines))
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-3000:])
            raise SystemExit(f"child with {n} devices failed")
        result = json.loads(proc.stdout.split("RESULT ", 1)[1])
        all_rows += result["rows"]
    ref = all_rows[0]["tokens"]
    for r in all_rows:
        r["tokens_equal_single_device"] = r.pop("tokens") == ref
    print(
        "\n| devices | data | model | s/call | steps·rows/s | collectives/step | MB/step "
        "| once/call | same tokens |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in all_rows:
        c = r["collectives"]
        print(f"| {r['devices']} | {r['data']} | {r['model']} | {r['median_s']:.2f} | "
              f"{r['steps_per_s']:.1f} | {c['per_full_step']['count']} | "
              f"{c['per_full_step']['bytes'] / 1e6:.3f} | {c['once_per_call']['count']} | "
              f"{r['tokens_equal_single_device']} |")  # fmt: skip
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        note = (
            "virtual CPU devices share the machine's cores: wall time does not measure "
            "scaling; the collective counts and bytes do"
        )
        json.dump(
            {"args": vars(args), "rows": all_rows, "cores": os.cpu_count(), "note": note},
            f,
            indent=2,
        )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
