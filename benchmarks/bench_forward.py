"""Forward + backward (w.r.t. inputs_embeds) of one Qwen2 model: nabla-jax vs Hugging Face PyTorch.

One random HF ``Qwen2ForCausalLM`` is saved with ``save_pretrained`` and loaded back with
``nj.load_causal_lm``, so both frameworks hold the same weights. Timed, on the same machine:

* JAX: ``jax.jit(jax.value_and_grad(f))`` with the model (its params) as an argument, where
  ``f(embeds) = sum(logits(embeds) * w)``; warmed up, compile time reported separately;
  also the forward alone.
* PyTorch eager (and ``torch.compile`` with ``--torch-compile``): the same scalar and
  ``.backward()``; also the forward alone under ``no_grad``.

The two gradients are compared (max relative error) so the timings are known to compute the same
thing. Example::

    python benchmarks/bench_forward.py --layers 4 --hidden 256 --seq 256 --batch 1 \
        --vocab 4096 --repeats 20 --output results/bench_forward.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--intermediate", type=int, default=None, help="default 4 * hidden")
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    p.add_argument("--torch-compile", action="store_true", help="also time torch.compile")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="results/bench_forward.json")
    return p.parse_args(argv)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _time_interleaved(fns: dict, repeats: int, warmup: int) -> dict:
    """Median / min / mean seconds of each ``fns[name]()`` (which must block until done).

    The functions run round-robin (one call of each per round), so a change of machine load
    during the run (a shared machine) hits all of them alike rather than whichever ran then.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {
        name: {
            "median_s": statistics.median(ts),
            "min_s": min(ts),
            "mean_s": statistics.fmean(ts),
            "repeats": repeats,
        }
        for name, ts in times.items()
    }


def _max_rel_err(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def main(argv=None):
    args = _parse(argv)
    cores = _cores()
    threads = args.threads or cores

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    import transformers as tr

    try:
        import nabla_jax as nj
    except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
        import sys

        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        import nabla_jax as nj

    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    cfg = tr.Qwen2Config(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate or 4 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=max(args.seq, 512),
        tie_word_embeddings=False,
    )
    tdtype = torch.float32 if args.dtype == "float32" else torch.bfloat16
    model = tr.Qwen2ForCausalLM(cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        lm = nj.load_causal_lm(tmp, dtype=args.dtype, tokenizer=False)
    model = model.to(tdtype)

    rng = np.random.default_rng(args.seed)
    b, t, d, v = args.batch, args.seq, args.hidden, args.vocab
    embeds_np = (0.02 * rng.standard_normal((b, t, d))).astype(np.float32)
    w_np = rng.standard_normal((b, t, v)).astype(np.float32)

    # -- JAX ---------------------------------------------------------------------------------
    def f(m, e, w):
        return jnp.sum(m.logits(inputs_embeds=e) * w)

    embeds_j = jnp.asarray(embeds_np, lm.dtype)
    w_j = jnp.asarray(w_np)
    t0 = time.perf_counter()
    vg = jax.jit(jax.value_and_grad(f, argnums=1)).lower(lm, embeds_j, w_j).compile()
    compile_vg = time.perf_counter() - t0
    t0 = time.perf_counter()
    fwd = jax.jit(lambda m, e: m.logits(inputs_embeds=e)).lower(lm, embeds_j).compile()
    compile_fwd = time.perf_counter() - t0
    val_j, grad_j = vg(lm, embeds_j, w_j)
    grad_j = np.asarray(jax.block_until_ready(grad_j), np.float32)

    fns = {
        "jax_fwd_bwd": lambda: jax.block_until_ready(vg(lm, embeds_j, w_j)),
        "jax_fwd": lambda: jax.block_until_ready(fwd(lm, embeds_j)),
    }

    # -- PyTorch -----------------------------------------------------------------------------
    w_t = torch.from_numpy(w_np)
    pos_t = torch.arange(t)[None].expand(b, t)

    def torch_vg(m):
        e = torch.from_numpy(embeds_np).to(tdtype).requires_grad_(True)
        logits = m(inputs_embeds=e, position_ids=pos_t, use_cache=False).logits
        val = (logits.float() * w_t).sum()
        val.backward()
        return val, e.grad

    def torch_fwd(m):
        with torch.no_grad():
            e = torch.from_numpy(embeds_np).to(tdtype)
            return m(inputs_embeds=e, position_ids=pos_t, use_cache=False).logits

    model.requires_grad_(False)  # gradients w.r.t. the input only, as in JAX
    val_t, grad_t = torch_vg(model)
    grad_errors = {"torch_eager": _max_rel_err(grad_j, grad_t.float().numpy())}
    value_rel = abs(float(val_j) - float(val_t.detach())) / max(abs(float(val_t.detach())), 1e-30)
    fns["torch_eager_fwd_bwd"] = lambda: torch_vg(model)
    fns["torch_eager_fwd"] = lambda: torch_fwd(model)
    compile_s = {"jax_fwd_bwd": compile_vg, "jax_fwd": compile_fwd}
    torch_compile_error = None

    if args.torch_compile:
        try:
            compiled = torch.compile(model)
            t0 = time.perf_counter()
            _, grad_c = torch_vg(compiled)
            torch_fwd(compiled)
            compile_t = time.perf_counter() - t0
            grad_errors["torch_compile"] = _max_rel_err(grad_j, grad_c.float().numpy())
            fns["torch_compile_fwd_bwd"] = lambda: torch_vg(compiled)
            fns["torch_compile_fwd"] = lambda: torch_fwd(compiled)
            compile_s["torch_compile_fwd_bwd"] = compile_t
        except Exception as e:  # noqa: BLE001 - optional comparison
            torch_compile_error = f"{type(e).__name__}: {e}"[:500]

    results = _time_interleaved(fns, args.repeats, args.warmup)
    for name, sec in compile_s.items():
        results[name]["compile_s"] = sec
    if torch_compile_error:
        results["torch_compile_error"] = torch_compile_error

    jax_med = results["jax_fwd_bwd"]["median_s"]
    ratios = {
        "torch_eager_over_jax_fwd_bwd": results["torch_eager_fwd_bwd"]["median_s"] / jax_med,
        "torch_eager_over_jax_fwd": results["torch_eager_fwd"]["median_s"]
        / results["jax_fwd"]["median_s"],
    }
    if "torch_compile_fwd_bwd" in results:
        ratios["torch_compile_over_jax_fwd_bwd"] = (
            results["torch_compile_fwd_bwd"]["median_s"] / jax_med
        )
        ratios["torch_compile_over_jax_fwd"] = (
            results["torch_compile_fwd"]["median_s"] / results["jax_fwd"]["median_s"]
        )

    report = {
        "shape": {
            "layers": args.layers,
            "hidden": d,
            "heads": args.heads,
            "kv_heads": args.kv_heads,
            "intermediate": cfg.intermediate_size,
            "seq": t,
            "batch": b,
            "vocab": v,
            "dtype": args.dtype,
            "params": int(sum(p.numel() for p in model.parameters())),
        },
        "env": {
            "cores": cores,
            "torch_threads": torch.get_num_threads(),
            "jax": jax.__version__,
            "torch": torch.__version__,
            "jax_backend": jax.default_backend(),
            "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
            "machine": platform.machine(),
            "processor": platform.processor(),
        },
        "results": results,
        "ratios": ratios,
        "grad_max_rel_err": grad_errors,
        "value_rel_err": value_rel,
    }

    rows = [(k, r) for k, r in results.items() if isinstance(r, dict)]
    print(
        f"Qwen2 L={args.layers} D={d} H={args.heads}/{args.kv_heads} F={cfg.intermediate_size} "
        f"T={t} B={b} V={v} {args.dtype}; {cores} cores, torch threads {torch.get_num_threads()}"
    )
    print(f"{'run':<24}{'median ms':>12}{'min ms':>10}{'compile s':>12}")
    for name, r in rows:
        comp = f"{r['compile_s']:.2f}" if "compile_s" in r else "-"
        print(f"{name:<24}{1e3 * r['median_s']:>12.2f}{1e3 * r['min_s']:>10.2f}{comp:>12}")
    if "torch_compile_error" in results:
        print("torch.compile failed:", results["torch_compile_error"])
    for k, r in ratios.items():
        print(f"{k}: {r:.2f}x")
    print("grad max rel err:", {k: f"{e:.2e}" for k, e in grad_errors.items()})
    print(f"value rel err: {value_rel:.2e}")

    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as fh:
            json.dump(report, fh, indent=2)
        print("wrote", args.output)
    return report


if __name__ == "__main__":
    main()
