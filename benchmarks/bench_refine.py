"""DTO refinement: ``nj.refine`` / ``nj.refine_batch`` vs the PyTorch twin ``paper_dto``.

One random HF ``Qwen2ForCausalLM`` (the LM) and ``Qwen2ForSequenceClassification`` (the RM, same
vocabulary) are saved with ``save_pretrained`` and loaded back with ``nj.load_*``, so both
frameworks hold the same weights and refine the same problems, on this CPU:

1. batch 1: steps/s of ``nj.refine`` (compiled program warmed up; compile time separate) vs
   ``tests.reference.torch_dto.paper_dto``, gradient caching OFF (every step is a full step) and ON.
2. ``nj.refine_batch`` of ``--batch`` problems (different prefix lengths, one bucket) vs that many
   sequential twin calls: total wall time and ratio (also JAX one problem at a time, for context).
3. prefix caching: the models' kept prefix keys/values vs the same models wrapped as functions
   of embeddings (``nj.functional.EmbeddingLM`` / ``EmbeddingReward``, which re-run the prefix
   with the window at every step) at a long prefix, 20 full steps (JAX only).
4. gradient caching at the paper's defaults (lr 0.01, 20 steps): share of steps that skipped the
   models (``trace.full_step``) and the per-call ``batch_full_steps``.
5. memory: the compiled program's ``memory_analysis()`` and the sampled process-RSS peak during a
   call (JAX); the peak of the profiler's net allocated bytes during a call and the sampled RSS
   peak (PyTorch). RSS peaks are measured in fresh child processes (see ``_memory_child``).

Timings run round-robin (one call of each per round) and report medians. JAX and torch results
are compared (tokens equal, loss-trace relative error, same full steps). Example::

    python benchmarks/bench_refine.py --output results/bench_refine.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # tests.reference.torch_dto and an uninstalled nabla_jax
    sys.path.insert(0, ROOT)


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--intermediate", type=int, default=None, help="default 4 * hidden")
    p.add_argument("--lm-layers", type=int, default=4)
    p.add_argument("--rm-layers", type=int, default=2)
    p.add_argument("--prefix", type=int, default=128, help="LM (and RM) prefix length, batch 1")
    p.add_argument("--window", type=int, default=32, help="ahead window K")
    p.add_argument("--suffix", type=int, default=8, help="RM suffix length")
    p.add_argument("--long-prefix", type=int, default=256, help="prefix for the prefix-cache test")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--init-scale", type=float, default=1.0, help="init logits = scale * N(0, 1)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--cache-problems", type=int, default=16, help="problems for section 4")
    p.add_argument("--repeats", type=int, default=3, help="rounds for the batch-1 timings")
    p.add_argument("--batch-repeats", type=int, default=1, help="rounds for the batched timings")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch and XLA CPU threads (0 = all cores). Default 1: on a shared, oversubscribed "
        "machine torch's OpenMP pool with >1 thread slows down several-fold",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the RSS child processes")
    p.add_argument("--no-step-profile", action="store_true", help="skip the full/cached step split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="results/bench_refine.json")
    p.add_argument("--_memory-child", dest="memory_child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_model-dir", dest="model_dir", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _set_threads(threads: int, cores: int):
    """XLA's CPU thread pool must be sized before jax is imported."""
    if threads < cores and "intra_op_parallelism_threads" not in os.environ.get("XLA_FLAGS", ""):
        flags = f"intra_op_parallelism_threads={threads}"
        if threads == 1:
            flags = "--xla_cpu_multi_thread_eigen=false " + flags
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()


def _time_interleaved(fns: dict, repeats: int, last: dict | None = None) -> dict:
    """Median / min seconds of each ``fns[name]()`` (blocking), run round-robin.

    The last round's return values are stored in ``last`` (so the timed calls double as the
    agreement check and the slow torch runs are not repeated for it).
    """
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            out = fn()
            times[name].append(time.perf_counter() - t0)
            if last is not None:
                last[name] = out
    return {
        name: {"median_s": statistics.median(ts), "min_s": min(ts), "times_s": ts}
        for name, ts in times.items()
    }


def _rel(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-8))


class _RssSampler:
    """Peak resident set size (bytes) of this process, sampled every ``interval`` s."""

    def __init__(self, interval=0.002):
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE")

    def rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self.page

    def __enter__(self):
        self.base = self.peak = self.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())
        self.delta = self.peak - self.base


# ------------------------------------------------------------------------------------------------
# models and problems
# ------------------------------------------------------------------------------------------------


def _hf_configs(args):
    import transformers as tr

    common = dict(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate or 4 * args.hidden,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=max(1024, 2 * (args.long_prefix + args.window + args.suffix)),
        pad_token_id=0,
        eos_token_id=2,
    )
    lm_cfg = tr.Qwen2Config(num_hidden_layers=args.lm_layers, tie_word_embeddings=False, **common)
    rm_cfg = tr.Qwen2Config(num_hidden_layers=args.rm_layers, num_labels=1, **common)
    return lm_cfg, rm_cfg


def _save_models(args, directory):
    import torch
    import transformers as tr

    lm_cfg, rm_cfg = _hf_configs(args)
    torch.manual_seed(args.seed)
    lm_t = tr.Qwen2ForCausalLM(lm_cfg).eval()
    torch.manual_seed(args.seed + 1)
    rm_t = tr.Qwen2ForSequenceClassification(rm_cfg).eval()
    lm_t.save_pretrained(os.path.join(directory, "lm"))
    rm_t.save_pretrained(os.path.join(directory, "rm"))
    return lm_t, rm_t


def _load_jax(directory):
    import nabla_jax as nj

    lm = nj.load_causal_lm(os.path.join(directory, "lm"), dtype="float32", tokenizer=False)
    rm = nj.load_reward_model(os.path.join(directory, "rm"), dtype="float32", tokenizer=False)
    return lm, rm


def _load_torch(directory):
    import transformers as tr

    lm_t = tr.Qwen2ForCausalLM.from_pretrained(os.path.join(directory, "lm")).eval()
    rm_t = tr.Qwen2ForSequenceClassification.from_pretrained(os.path.join(directory, "rm")).eval()
    return lm_t, rm_t


def _problem(args, seed, p, q=None):
    import numpy as np

    from nabla_jax.functional.refine import RefineProblem

    rng = np.random.RandomState(seed)
    v = args.vocab
    return RefineProblem(
        lm_prefix_ids=rng.randint(3, v, p).tolist(),
        rm_prefix_ids=rng.randint(3, v, p if q is None else q).tolist(),
        rm_suffix_ids=rng.randint(3, v, args.suffix).tolist(),
        init=(args.init_scale * rng.randn(args.window, v)).astype(np.float32),
    )


def _batch_problems(args, n, seed0):
    """``n`` problems whose LM / RM prefix lengths differ but share one bucket."""
    import numpy as np

    from nabla_jax.runtime.buckets import bucket_length

    top = bucket_length(args.prefix)
    low = max(bucket_length(args.prefix) // 2 + 1, 1) if top <= 128 else top - 127
    rng = np.random.RandomState(seed0)
    lens = rng.randint(low, top + 1, size=(n, 2))
    lens[0] = top  # the longest fills the bucket
    return [_problem(args, seed0 + i, int(a), int(b)) for i, (a, b) in enumerate(lens)]


def _prefix_cache_pair(lm, rm, prob, cfg):
    """Two jitted one-problem refinements returning ``(logits, trace)``: the models with their
    prefix keys/values kept, and the same models as functions of embeddings (recomputed)."""
    import jax

    from nabla_jax import functional as F

    lm_fn = F.EmbeddingLM(
        lambda e, m: lm.logits(inputs_embeds=e, attention_mask=m), lm.embed_matrix()
    )
    rm_fn = F.EmbeddingReward(
        lambda e, m: rm.score(inputs_embeds=e, attention_mask=m), rm.embed_matrix()
    )
    row = jax.tree.map(lambda x: x[0], F.pack(lm, [prob], cfg))
    key = jax.random.key(0)
    kept = jax.jit(F.make_refine(lm, rm, cfg))
    recomputed = jax.jit(F.make_refine(lm_fn, rm_fn, cfg))
    return (
        lambda: jax.block_until_ready(kept(row, key)),
        lambda: jax.block_until_ready(recomputed(row, key)),
    )


def _dto(cfg_kwargs, args, **over):
    from nabla_jax.functional.dto_config import DTOConfig

    kw = dict(num_steps=args.steps, learning_rate=args.lr, **cfg_kwargs)
    kw.update(over)
    return DTOConfig(**kw)


def _torch_run(lm_t, rm_t, prob, cfg):
    import numpy as np
    import torch

    from tests.reference import torch_dto as td

    return td.paper_dto(
        lm_t,
        rm_t,
        list(prob.lm_prefix_ids),
        list(prob.rm_prefix_ids),
        list(prob.rm_suffix_ids),
        torch.from_numpy(np.asarray(prob.init)),
        mode=cfg.mode,
        num_steps=cfg.num_steps,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        optimizer=cfg.optimizer,
        schedule=cfg.schedule,
        warmup_steps=cfg.num_warmup,
        min_lr_ratio=cfg.min_lr_ratio,
        reward_coeff=cfg.reward_coeff,
        nll_coeff=cfg.nll_coeff,
        tau=cfg.tau,
        update_postfix=cfg.update_postfix,
        grad_caching=cfg.grad_caching,
    )


def _jax_refine(lm, rm, prob, cfg):
    import jax

    import nabla_jax as nj

    res = nj.refine(lm, rm, prob, cfg, jax.random.key(0))
    jax.block_until_ready((res.logits, res.tokens))
    return res


def _jax_refine_batch(lm, rm, probs, cfg, batch_size):
    import jax

    import nabla_jax as nj

    res = nj.refine_batch(lm, rm, probs, cfg, jax.random.key(0), batch_size=batch_size)
    jax.block_until_ready([(r.logits, r.tokens) for r in res])
    return res


def _agreement(jres, tres) -> dict:
    import numpy as np

    return {
        "tokens_equal": bool(np.array_equal(np.asarray(jres.tokens), tres["tokens"].numpy())),
        "loss_trace_rel_err": _rel(jres.trace.loss, tres["losses"]),
        "logits_rel_err": _rel(jres.logits, tres["logits"].numpy()),
        "full_steps_equal": bool(np.array_equal(jres.trace.full_step, tres["full_steps"])),
        "jax_full_steps": int(jres.full_steps),
        "torch_full_steps": int(sum(tres["full_steps"])),
    }


def _compiled(lm, rm, probs, cfg, batch_size):
    """AOT-compile ``refine_rows_jit`` for these problems: (compiled, seconds, args)."""
    import jax
    import jax.numpy as jnp

    from nabla_jax.functional.checks import rm_embedding_table
    from nabla_jax.functional.packing import pad_problems
    from nabla_jax.functional.program import refine_rows_jit

    batch = pad_problems(lm, probs, cfg, batch_size)
    keys = jnp.stack([jax.random.key(0)] * batch_size)
    table = rm_embedding_table(lm, rm, None)
    t0 = time.perf_counter()
    compiled = refine_rows_jit.lower(
        lm, rm, table, batch, keys, cfg.hyper(), cfg=cfg.program()
    ).compile()
    return compiled, time.perf_counter() - t0, (lm, rm, table, batch, keys)


def _memory_analysis(compiled) -> dict:
    try:
        m = compiled.memory_analysis()
    except Exception as e:  # noqa: BLE001 - backend may not provide it
        return {"error": f"{type(e).__name__}: {e}"[:300]}
    if m is None:
        return {"error": "memory_analysis() returned None"}
    out = {}
    for name in (
        "temp_size_in_bytes",
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "alias_size_in_bytes",
        "generated_code_size_in_bytes",
    ):
        out[name] = int(getattr(m, name, -1))
    out["temp_plus_arg_plus_out_bytes"] = (
        out["temp_size_in_bytes"] + out["argument_size_in_bytes"] + out["output_size_in_bytes"]
    )
    return out


def _hlo_dots(compiled, vocab: int) -> dict:
    """Dots of the optimized HLO that touch the vocabulary axis (operand shapes resolved).

    Expected per full step: ``[K,D]x[V,D]`` (two embedding backward passes, LM and RM), the
    head ``[K-1,D]x[D,V]`` and its backward ``[K-1,V]x[D,V]``; a forward ``[K,V]x[V,D]``
    (a dense one-hot embedding) would show up here as an operand of shape ``[K, V]`` with the
    result ``[K, D]``.
    """
    try:
        text = compiled.as_text()
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}"[:300]}
    return _hlo_dot_summary(text, vocab)


def _hlo_dot_summary(text: str, vocab: int) -> dict:
    import re

    shape = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\w+\[[0-9,]*\])", text, re.M)
    }
    dots, vocab_dots = 0, []
    for line in text.splitlines():
        m = re.search(r"%?[\w.\-]+ = (\w+\[[0-9,]*\])\S* dot\(([^)]*)\)(.*)", line)
        if not m:
            continue
        dots += 1
        ops = [o.strip().split(" ")[-1].lstrip("%") for o in m.group(2).split(",")]
        ops = [shape.get(o, "?") for o in ops]
        contract = " ".join(re.findall(r"\w+_contracting_dims=\{[0-9,]*\}", m.group(3)))
        shapes = ops + [m.group(1)]
        if any(str(vocab) in re.findall(r"[0-9]+", s) for s in shapes):
            vocab_dots.append(f"{' x '.join(ops)} -> {m.group(1)} ({contract})")
    return {"dots": dots, "dots_with_vocab_axis": vocab_dots}


def _torch_alloc_peak(fn) -> int:
    """Peak of torch's net allocated CPU bytes during ``fn()`` (profiler allocation events)."""
    import torch._C._profiler as P
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    allocs = []

    def walk(nodes):
        for n in nodes:
            if n.tag == P._EventType.Allocation:
                allocs.append((n.start_time_ns, n.extra_fields.alloc_size))
            walk(n.children)

    walk(prof.profiler.kineto_results.experimental_event_tree())
    cur = peak = 0
    for _, size in sorted(allocs):
        cur += size
        peak = max(peak, cur)
    return peak


# ------------------------------------------------------------------------------------------------
# memory child: a fresh process per framework, so allocator reuse does not hide the peak
# ------------------------------------------------------------------------------------------------


def _memory_child(args):
    import gc

    import torch

    torch.set_num_threads(args.threads)
    cfg = _dto({"grad_caching": False}, args)
    prob = _problem(args, args.seed + 100, args.prefix)
    out = {}
    if args.memory_child == "jax":
        lm, rm = _load_jax(args.model_dir)
        compiled, _, call_args = _compiled(lm, rm, [prob], cfg, 1)
        import jax

        gc.collect()
        for name in ("first_call", "second_call"):
            with _RssSampler() as s:
                jax.block_until_ready(compiled(*call_args))
            out[name] = {"rss_base_bytes": s.base, "rss_peak_delta_bytes": s.delta}
    else:
        lm_t, rm_t = _load_torch(args.model_dir)
        gc.collect()
        for name in ("first_call", "second_call"):
            with _RssSampler() as s:
                _torch_run(lm_t, rm_t, prob, cfg)
            out[name] = {"rss_base_bytes": s.base, "rss_peak_delta_bytes": s.delta}
    print("MEMJSON" + json.dumps(out))


def _run_memory_child(args, which, model_dir):
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--_memory-child",
        which,
        "--_model-dir",
        model_dir,
        "--threads",
        str(args.threads),
    ]
    keep = ("vocab", "hidden", "heads", "kv_heads", "intermediate", "prefix", "window", "suffix")
    keep += ("steps", "lr", "init_scale", "seed", "lm_layers", "rm_layers", "long_prefix")
    for k in keep:
        val = getattr(args, k)
        if val is not None:
            cmd += [f"--{k.replace('_', '-')}", str(val)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
        for line in proc.stdout.splitlines():
            if line.startswith("MEMJSON"):
                return json.loads(line[len("MEMJSON") :])
        return {"error": (proc.stderr or proc.stdout)[-500:]}
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}"[:300]}


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------


def main(argv=None):
    args = _parse(argv)
    cores = _cores()
    args.threads = args.threads or cores
    _set_threads(args.threads, cores)
    if args.memory_child:
        return _memory_child(args)

    t_start = time.perf_counter()
    load_start = os.getloadavg()
    import jax
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    mb = 1 / 2**20
    report: dict = {"args": {k: v for k, v in vars(args).items() if k not in ("memory_child",)}}
    tmp = tempfile.TemporaryDirectory()
    lm_t, rm_t = _save_models(args, tmp.name)
    lm, rm = _load_jax(tmp.name)
    off = {"grad_caching": False}
    on = {"grad_caching": True}
    cfg_off, cfg_on = _dto(off, args), _dto(on, args)

    # -- 1. batch 1 --------------------------------------------------------------------------
    prob = _problem(args, args.seed + 100, args.prefix)
    sec1: dict = {"compile": {}, "agreement": {}}
    for tag, cfg in (("cache_off", cfg_off), ("cache_on", cfg_on)):
        compiled, comp_s, call = _compiled(lm, rm, [prob], cfg, 1)
        t0 = time.perf_counter()
        _jax_refine(lm, rm, prob, cfg)
        first = time.perf_counter() - t0
        sec1["compile"][tag] = {"aot_lower_compile_s": comp_s, "first_refine_call_s": first}
        if tag == "cache_off":
            sec1["memory_analysis_b1"] = _memory_analysis(compiled)
            sec1["hlo_b1"] = _hlo_dots(compiled, args.vocab)
            compiled_off = (compiled, call)
    fns = {
        "jax_cache_off": lambda: _jax_refine(lm, rm, prob, cfg_off),
        "torch_cache_off": lambda: _torch_run(lm_t, rm_t, prob, cfg_off),
        "jax_cache_on": lambda: _jax_refine(lm, rm, prob, cfg_on),
        "torch_cache_on": lambda: _torch_run(lm_t, rm_t, prob, cfg_on),
    }
    last: dict = {}
    sec1["timing"] = _time_interleaved(fns, args.repeats, last)
    for tag in ("cache_off", "cache_on"):
        sec1["agreement"][tag] = _agreement(last[f"jax_{tag}"], last[f"torch_{tag}"])
    for r in sec1["timing"].values():
        r["steps_per_s"] = args.steps / r["median_s"]
    tm = sec1["timing"]
    sec1["speedup"] = {
        tag: tm[f"torch_{tag}"]["median_s"] / tm[f"jax_{tag}"]["median_s"]
        for tag in ("cache_off", "cache_on")
    }
    report["batch1"] = sec1
    print(f"[1] done at {time.perf_counter() - t_start:.0f}s", flush=True)

    # -- 2. batched --------------------------------------------------------------------------
    probs = _batch_problems(args, args.batch, args.seed + 200)
    sec2: dict = {
        "lm_prefix_lengths": [len(p.lm_prefix_ids) for p in probs],
        "rm_prefix_lengths": [len(p.rm_prefix_ids) for p in probs],
        "configs": {},
    }
    for tag, cfg in (("cache_off", cfg_off), ("cache_on", cfg_on)):
        compiled, comp_s, _ = _compiled(lm, rm, probs, cfg, args.batch)
        _jax_refine_batch(lm, rm, probs, cfg, args.batch)  # warm-up
        _jax_refine(lm, rm, probs[0], cfg)  # the batch-1 program of this bucket
        if tag == "cache_off":
            sec2["memory_analysis_b8"] = _memory_analysis(compiled)
        fns = {
            "jax_refine_batch": lambda cfg=cfg: _jax_refine_batch(lm, rm, probs, cfg, args.batch),
            "jax_sequential": lambda cfg=cfg: [_jax_refine(lm, rm, p, cfg) for p in probs],
            "torch_sequential": lambda cfg=cfg: [_torch_run(lm_t, rm_t, p, cfg) for p in probs],
        }
        last = {}
        timing = _time_interleaved(fns, args.batch_repeats, last)
        jb, tb = last["jax_refine_batch"], last["torch_sequential"]
        agree = [_agreement(j, t) for j, t in zip(jb, tb)]
        entry = {
            "aot_lower_compile_s": comp_s,
            "tokens_equal_all": all(a["tokens_equal"] for a in agree),
            "max_loss_trace_rel_err": max(a["loss_trace_rel_err"] for a in agree),
            "full_steps_equal_all": all(a["full_steps_equal"] for a in agree),
            "batch_full_steps": int(jb[0].batch_full_steps),
            "jax_full_steps": [int(r.full_steps) for r in jb],
            "torch_full_steps": [a["torch_full_steps"] for a in agree],
            "timing": timing,
        }
        t = entry["timing"]
        entry["speedup_torch_seq_over_jax_batch"] = (
            t["torch_sequential"]["median_s"] / t["jax_refine_batch"]["median_s"]
        )
        entry["speedup_jax_seq_over_jax_batch"] = (
            t["jax_sequential"]["median_s"] / t["jax_refine_batch"]["median_s"]
        )
        sec2["configs"][tag] = entry
        print(f"[2:{tag}] done at {time.perf_counter() - t_start:.0f}s", flush=True)
    report["batched"] = sec2

    # -- 3. prefix caching -------------------------------------------------------------------
    long_prob = _problem(args, args.seed + 300, args.long_prefix)
    cfg_pc = _dto(off, args)
    kept, recomputed = _prefix_cache_pair(lm, rm, long_prob, cfg_pc)
    a, b = kept(), recomputed()
    t = _time_interleaved({"prefix_cache_on": kept, "prefix_cache_off": recomputed}, args.repeats)
    for r in t.values():
        r["steps_per_s"] = args.steps / r["median_s"]
    report["prefix_cache"] = {
        "prefix": args.long_prefix,
        "grad_caching": False,
        "timing": t,
        "steps_per_s_ratio": t["prefix_cache_off"]["median_s"] / t["prefix_cache_on"]["median_s"],
        "tokens_equal": bool(np.array_equal(np.argmax(a[0], -1), np.argmax(b[0], -1))),
        "loss_trace_rel_err": _rel(a[1].loss, b[1].loss),
    }
    print(f"[3] done at {time.perf_counter() - t_start:.0f}s", flush=True)

    # -- 4. gradient caching at the defaults -------------------------------------------------
    cprobs = _batch_problems(args, args.cache_problems, args.seed + 400)
    cres = _jax_refine_batch(lm, rm, cprobs, cfg_on, args.batch)
    full = np.stack([np.asarray(r.trace.full_step) for r in cres])  # [N, steps]
    per_call = []
    for i in range(0, len(cres), args.batch):
        per_call.append(int(cres[i].batch_full_steps))
    report["grad_caching"] = {
        "config": {"learning_rate": args.lr, "num_steps": args.steps, "grad_caching": True},
        "problems": len(cprobs),
        "init_scale": args.init_scale,
        "full_steps_per_problem": full.sum(axis=1).tolist(),
        "share_steps_skipped": float(1.0 - full.mean()),
        "batch_full_steps_per_call": per_call,
        "share_batch_steps_skipped": float(1.0 - sum(per_call) / (len(per_call) * args.steps)),
        "batch1_problem_full_steps": sec1["agreement"]["cache_on"]["jax_full_steps"],
        "batched_problems_full_steps": sec2["configs"]["cache_on"]["jax_full_steps"],
        "batched_batch_full_steps": sec2["configs"]["cache_on"]["batch_full_steps"],
    }
    print(f"[4] done at {time.perf_counter() - t_start:.0f}s", flush=True)

    # -- 6. where a step's time goes (compiled program called directly, no Python wrapper) --
    if not args.no_step_profile:
        progs = {"off_all_steps": compiled_off}
        for name, cfg in (
            ("off_one_step", _dto(off, args, num_steps=1)),
            ("on_no_token_change", _dto(on, args, learning_rate=1e-7)),
        ):
            c, _, call = _compiled(lm, rm, [prob], cfg, 1)
            progs[name] = (c, call)
        fns = {
            name: (lambda c=c, call=call: jax.block_until_ready(c(*call)))
            for name, (c, call) in progs.items()
        }
        for fn in fns.values():
            fn()
        t = _time_interleaved(fns, max(5, args.repeats))
        c, call = progs["on_no_token_change"]
        full_calls = int(c(*call)[1].full_steps[0])
        m = {k: v["median_s"] for k, v in t.items()}
        n = args.steps - 1
        report["step_profile"] = {
            "timing": t,
            "on_no_token_change_full_steps": full_calls,
            "full_step_s": (m["off_all_steps"] - m["off_one_step"]) / n,
            "prefix_plus_first_step_s": m["off_one_step"],
            "cached_step_s": (m["on_no_token_change"] - m["off_one_step"]) / n,
        }
        print(f"[6] done at {time.perf_counter() - t_start:.0f}s", flush=True)

    # -- 5. memory ---------------------------------------------------------------------------
    mem: dict = {
        "jax_memory_analysis_b1": sec1["memory_analysis_b1"],
        "jax_memory_analysis_b8": sec2["memory_analysis_b8"],
    }
    mem["torch_alloc_peak_bytes_b1"] = _torch_alloc_peak(
        lambda: _torch_run(lm_t, rm_t, prob, cfg_off)
    )
    if not args.no_memory:
        mem["jax_rss_child"] = _run_memory_child(args, "jax", tmp.name)
        mem["torch_rss_child"] = _run_memory_child(args, "torch", tmp.name)
    report["memory"] = mem

    n_params = {
        "lm": int(sum(p.numel() for p in lm_t.parameters())),
        "rm": int(sum(p.numel() for p in rm_t.parameters())),
    }
    report["env"] = {
        "cores": cores,
        "threads": args.threads,
        "torch_threads": torch.get_num_threads(),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "jax": jax.__version__,
        "torch": torch.__version__,
        "jax_backend": jax.default_backend(),
        "machine": platform.machine(),
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "params": n_params,
        "total_runtime_s": time.perf_counter() - t_start,
    }
    tmp.cleanup()
    _print_report(args, report, mb)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as fh:
            json.dump(report, fh, indent=2)
        print("wrote", args.output)
    return report


def _print_report(args, report, mb):
    env = report["env"]
    print(
        f"\nLM Qwen2 L={args.lm_layers} / RM L={args.rm_layers}, D={args.hidden} "
        f"V={args.vocab} ({env['params']['lm'] / 1e6:.1f}M + {env['params']['rm'] / 1e6:.1f}M "
        f"params); P=Q={args.prefix} K={args.window} S={args.suffix} steps={args.steps} "
        f"lr={args.lr}; {env['cores']} cores, threads {env['threads']} (torch "
        f"{env['torch_threads']}, XLA_FLAGS={env['XLA_FLAGS']!r}); load avg start "
        f"{env['loadavg_start'][0]:.2f} end {env['loadavg_end'][0]:.2f}; "
        f"total {env['total_runtime_s']:.0f}s"
    )
    s1 = report["batch1"]
    print("\n[1] batch 1 (one call = prefix + all steps; median over rounds)")
    print(f"{'run':<20}{'median s':>10}{'min s':>9}{'steps/s':>9}")
    for name, r in s1["timing"].items():
        print(f"{name:<20}{r['median_s']:>10.3f}{r['min_s']:>9.3f}{r['steps_per_s']:>9.1f}")
    for tag, sp in s1["speedup"].items():
        c, a = s1["compile"][tag], s1["agreement"][tag]
        print(
            f"  {tag}: torch/jax = {sp:.2f}x; compile {c['aot_lower_compile_s']:.1f}s (first "
            f"call {c['first_refine_call_s']:.1f}s); tokens_equal={a['tokens_equal']} loss rel "
            f"err {a['loss_trace_rel_err']:.1e}; full steps jax {a['jax_full_steps']} torch "
            f"{a['torch_full_steps']}"
        )
    s2 = report["batched"]
    print(f"\n[2] {args.batch} problems, LM prefixes {s2['lm_prefix_lengths']}")
    for tag, e in s2["configs"].items():
        t = e["timing"]
        print(
            f"  {tag}: jax refine_batch {t['jax_refine_batch']['median_s']:.2f}s | jax 1-by-1 "
            f"{t['jax_sequential']['median_s']:.2f}s | torch 1-by-1 "
            f"{t['torch_sequential']['median_s']:.2f}s -> torch/jax_batch "
            f"{e['speedup_torch_seq_over_jax_batch']:.2f}x (jax_seq/jax_batch "
            f"{e['speedup_jax_seq_over_jax_batch']:.2f}x); tokens_equal_all="
            f"{e['tokens_equal_all']} max loss rel err {e['max_loss_trace_rel_err']:.1e}; "
            f"batch_full_steps {e['batch_full_steps']}, per-row {e['jax_full_steps']}"
        )
    s3 = report["prefix_cache"]
    t = s3["timing"]
    print(
        f"\n[3] prefix cache, P=Q={s3['prefix']} (grad caching off): on "
        f"{t['prefix_cache_on']['steps_per_s']:.1f} steps/s, off "
        f"{t['prefix_cache_off']['steps_per_s']:.1f} steps/s -> {s3['steps_per_s_ratio']:.2f}x; "
        f"tokens_equal={s3['tokens_equal']} loss rel err {s3['loss_trace_rel_err']:.1e}"
    )
    s4 = report["grad_caching"]
    print(
        f"\n[4] grad caching (lr {args.lr}, {args.steps} steps, {s4['problems']} problems): "
        f"{100 * s4['share_steps_skipped']:.0f}% of per-problem steps skipped the models; "
        f"full steps per problem {s4['full_steps_per_problem']}; batch_full_steps per call "
        f"{s4['batch_full_steps_per_call']} ({100 * s4['share_batch_steps_skipped']:.0f}% of "
        f"batched steps skipped)"
    )
    if "step_profile" in report:
        sp = report["step_profile"]
        print(
            f"\n[6] batch-1 step split (compiled program, medians): full step "
            f"{1e3 * sp['full_step_s']:.1f} ms, prefix + first step "
            f"{1e3 * sp['prefix_plus_first_step_s']:.1f} ms, cached step "
            f"{1e3 * sp['cached_step_s']:.2f} ms"
        )
        for d in report["batch1"]["hlo_b1"].get("dots_with_vocab_axis", []):
            print(f"  HLO dot on the vocab axis: {d}")
    m = report["memory"]
    print("\n[5] memory (MiB)")
    for tag in ("b1", "b8"):
        ma = m[f"jax_memory_analysis_{tag}"]
        if "error" in ma:
            print(f"  jax memory_analysis {tag}: {ma['error']}")
            continue
        print(
            f"  jax compiled program {tag}: temp {ma['temp_size_in_bytes'] * mb:.1f} + args "
            f"{ma['argument_size_in_bytes'] * mb:.1f} + out {ma['output_size_in_bytes'] * mb:.1f}"
            f" = {ma['temp_plus_arg_plus_out_bytes'] * mb:.1f}"
        )
    print(f"  torch net allocated peak b1 (profiler): {m['torch_alloc_peak_bytes_b1'] * mb:.1f}")
    for k in ("jax_rss_child", "torch_rss_child"):
        if k in m:
            r = m[k]
            if "error" in r:
                print(f"  {k}: {r['error']}")
            else:
                print(
                    f"  {k}: RSS peak delta first call "
                    f"{r['first_call']['rss_peak_delta_bytes'] * mb:.1f}, second "
                    f"{r['second_call']['rss_peak_delta_bytes'] * mb:.1f} (base "
                    f"{r['first_call']['rss_base_bytes'] * mb:.0f})"
                )


if __name__ == "__main__":
    main()
