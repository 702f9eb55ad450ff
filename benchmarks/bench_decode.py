"""Decoding speed: ∇-Reasoner cold / cached / warm against its eager PyTorch twin, the baselines,
and greedy ``generate_padded`` against Hugging Face ``generate``.

Everything uses the bundled pair and the bundled settings (``configs/arithmetic.yaml``) on
``--num-problems`` fresh test problems drawn with ``--seed`` (default 2026; the accuracy benchmark
uses seed 0). Every measurement runs in its own subprocess (``--worker``), each with
``NABLA_JAX_CACHE_DIR`` pointing at a directory this run creates, so nothing from earlier runs or
from the user's cache is reused.

1. **∇-Reasoner** (``NablaDecoder(lm, rm, bundled_decode_config(batch_size=B)).generate(all
   problems)``), for each batch size ``B`` in ``--batch-sizes``:

   * *cold*: a fresh process with an empty persistent compilation cache (a new directory), first
     pass, compilation included;
   * *warm*: a second pass in that same process;
   * *cached*: another fresh process with the same, now filled, cache directory, first pass.

   Times are of the ``generate`` call (models loaded); the process's whole wall time (imports,
   loading) is reported too. Compilations are counted with ``jax.monitoring``: every
   ``/jax/core/compile/backend_compile_duration`` event is one backend compilation *request*
   (its seconds are XLA's compile time, or the cache read on a persistent-cache hit);
   ``/jax/compilation_cache/cache_hits`` counts the requests the persistent cache answered, so
   compiles = requests − hits. Tracing + lowering seconds ("trace s": Python tracing and MLIR
   lowering, paid again in a fresh process even when the persistent cache hits) are reported
   beside them. If ``nabla_jax`` configures no persistent cache, the worker points JAX's at
   ``NABLA_JAX_CACHE_DIR`` itself (min compile time 0) and says so in the JSON (``cache``).
2. **The eager PyTorch twin** (``tests/reference/torch_decode.py``: Hugging Face models and
   ``generate``, the DTO twin, RM scoring) over the same problems, one prompt at a time as the
   public ∇-Reasoner code runs, ``--torch-threads`` intra-op threads (default 2). Ratios are twin
   seconds / JAX seconds (> 1: JAX is faster). At τ 0.5 resampling the two sides draw different
   random numbers, so accuracy and model calls agree statistically, not problem by problem (the
   exact parity check is ``tests/test_torch_decode_reference.py``, at τ 0).
3. **Baselines**: greedy CoT and Best-of-``--bon-n`` (bundled baseline sampling) over the same
   problems, ``batch_size`` 8: first pass (compiles) and second pass.
4. **Greedy rollout vs HF generate** at batch 1 and 8: prefill and decode tokens/s of
   ``generate_padded`` and ``generate`` (EOS suppressed), greedy token agreement.

Examples::

    python benchmarks/bench_decode.py --output results/bench_decode.json     # full (~1 h, 2 cores)
    python benchmarks/bench_decode.py --num-problems 4 --batch-sizes 1,8     # smoke run
    python benchmarks/bench_decode.py --loop paper ...   # the paper's loop on both sides
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
LOWER_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"
HIT_EVENT = "/jax/compilation_cache/cache_hits"

#: DecodeConfig overrides of the bundled settings per ``--loop``: ``paper`` drops the two
#: exploration settings (the loop the public code runs; benchmarks/bench_explore.py's PAPER_LOOP).
LOOPS = {"bundled": {}, "paper": {"resample_excludes_current": False, "accept_margin": None}}


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-problems", type=int, default=40)
    p.add_argument("--seed", type=int, default=2026, help="problem seed (accuracy bench: 0)")
    p.add_argument("--batch-sizes", default="1,8,16,32")
    p.add_argument("--torch-threads", type=int, default=2, help="the twin's and HF's threads")
    p.add_argument("--bon-n", type=int, default=8)
    p.add_argument("--key", type=int, default=0, help="jax.random.key / twin seed")
    p.add_argument(
        "--loop",
        choices=tuple(LOOPS),
        default="bundled",
        help="bundled settings, or the paper's loop on them (both sides)",
    )
    p.add_argument("--skip-baselines", action="store_true")
    p.add_argument("--skip-generate", action="store_true")
    p.add_argument("--skip-twin", action="store_true")
    p.add_argument("--prompt-len", type=int, default=32, help="section 4 prompt tokens")
    p.add_argument("--new-tokens", type=int, default=64, help="section 4 generated tokens")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per section-4 case")
    p.add_argument("--output", default="results/bench_decode.json")
    # internal: run one measurement and write its JSON to --result
    p.add_argument("--worker", choices=("nabla", "twin", "baselines", "generate"))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--passes", type=int, default=1)
    p.add_argument("--result", default=None)
    return p.parse_args(argv)


# -------------------------------------------------------------------------------- helpers


class CompileCounter:
    """Counts compile requests, persistent-cache hits and seconds via ``jax.monitoring``."""

    def __init__(self):
        import jax

        self.requests = self.hits = 0
        self.compile_s = self.trace_s = self.lower_s = 0.0

        def on_duration(event, secs, **_):
            if event == COMPILE_EVENT:
                self.requests += 1
                self.compile_s += secs
            elif event == TRACE_EVENT:
                self.trace_s += secs
            elif event == LOWER_EVENT:
                self.lower_s += secs

        def on_event(event, **_):
            if event == HIT_EVENT:
                self.hits += 1

        jax.monitoring.register_event_duration_secs_listener(on_duration)
        jax.monitoring.register_event_listener(on_event)

    def snapshot(self) -> dict:
        return dict(
            compile_requests=self.requests,
            cache_hits=self.hits,
            compiles=self.requests - self.hits,
            compile_s=self.compile_s,
            trace_s=self.trace_s,
            lower_s=self.lower_s,
        )

    def since(self, before: dict) -> dict:
        now = self.snapshot()
        return {k: now[k] - before[k] for k in now}


def _ensure_cache() -> str:
    """Point JAX's persistent cache at ``NABLA_JAX_CACHE_DIR`` unless nabla_jax already did."""
    import jax

    want = os.environ.get("NABLA_JAX_CACHE_DIR")
    have = jax.config.jax_compilation_cache_dir
    if have:
        return f"nabla_jax ({have})"
    if want and want.lower() not in ("off", "none", "0"):
        jax.config.update("jax_compilation_cache_dir", want)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        return f"benchmark: nabla_jax set no cache ({want})"
    return "none"


def _problems(args):
    from nabla_jax.tasks import format_prompt, fresh_test_problems

    problems = fresh_test_problems(args.num_problems, seed=args.seed)
    return problems, [format_prompt(p) for p in problems]


def _summary(problems, results, seconds: float) -> dict:
    from nabla_jax.tasks import grade

    def mean(name):
        return statistics.mean(float(r.stats.get(name, 0)) for r in results)

    digest = hashlib.sha256(json.dumps([list(r.token_ids) for r in results]).encode()).hexdigest()
    return dict(
        seconds=seconds,
        problems_per_s=len(results) / seconds,
        accuracy=statistics.mean(grade(r.text, p.answer) for p, r in zip(problems, results)),
        mean_model_calls=mean("model_calls"),
        mean_generations=mean("generations"),
        mean_refinements=mean("refinements"),
        tokens_sha256=digest[:16],
    )


def _write(args, out: dict) -> None:
    with open(args.result, "w") as f:
        json.dump(out, f, indent=2, default=str)


# -------------------------------------------------------------------------------- workers


def worker_nabla(args) -> dict:
    counter = CompileCounter()
    import jax

    import nabla_jax as nj
    from nabla_jax.app.bundled import bundled_decode_config, load_bundled

    cache = _ensure_cache()  # before the first compilation: JAX checks the cache once
    problems, prompts = _problems(args)
    lm, rm = load_bundled()
    cfg = bundled_decode_config(**LOOPS[args.loop], batch_size=args.batch_size)
    decoder = nj.NablaDecoder(lm, rm, cfg)
    passes = []
    for _ in range(args.passes):
        before = counter.snapshot()
        t0 = time.perf_counter()
        results = decoder.generate(prompts, jax.random.key(args.key))
        row = _summary(problems, results, time.perf_counter() - t0)
        row.update(counter.since(before))
        passes.append(row)
    return dict(batch_size=args.batch_size, cache=cache, passes=passes)


def worker_twin(args) -> dict:
    import torch

    from nabla_jax.app.bundled import BUNDLED_LM, BUNDLED_RM, bundled_decode_config
    from tests.reference.torch_decode import TorchNablaDecoder, load_hf_pair

    torch.set_num_threads(args.torch_threads)
    problems, prompts = _problems(args)
    cfg = bundled_decode_config(**LOOPS[args.loop])
    twin = TorchNablaDecoder(*load_hf_pair(BUNDLED_LM, BUNDLED_RM), cfg)
    t0 = time.perf_counter()
    results = twin.generate(prompts, seed=args.key)
    seconds = time.perf_counter() - t0
    return dict(torch_threads=torch.get_num_threads(), **_summary(problems, results, seconds))


def worker_baselines(args) -> dict:
    counter = CompileCounter()
    import jax

    import nabla_jax as nj
    from nabla_jax.app.bundled import bundled_baseline_sampling, bundled_decode_config, load_bundled

    cache = _ensure_cache()
    problems, prompts = _problems(args)
    lm, rm = load_bundled()
    cfg = bundled_decode_config()
    common = dict(max_length=cfg.max_length, batch_size=args.batch_size)
    runs = {
        "greedy": lambda: nj.greedy_cot(lm, prompts, **common),
        f"best_of_{args.bon_n}": lambda: nj.best_of_n(
            lm,
            rm,
            prompts,
            jax.random.key(args.key),
            n=args.bon_n,
            sampling=bundled_baseline_sampling(),
            **common,
        ),  # fmt: skip
    }
    out = dict(batch_size=args.batch_size, cache=cache)
    for name, fn in runs.items():
        out[name] = []
        for _ in range(2):
            before = counter.snapshot()
            t0 = time.perf_counter()
            results = fn()
            row = _summary(problems, results, time.perf_counter() - t0)
            row.update(counter.since(before))
            out[name].append(row)
    return out


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def worker_generate(args) -> dict:
    import jax.numpy as jnp
    import numpy as np
    import torch
    import transformers as tr

    from nabla_jax.app.bundled import BUNDLED_LM, load_bundled
    from nabla_jax.decoding import SamplingConfig, generate_padded

    torch.set_num_threads(args.torch_threads)
    lm, _ = load_bundled()
    greedy = SamplingConfig(temperature=0.0)
    hf = tr.AutoModelForCausalLM.from_pretrained(BUNDLED_LM, dtype=torch.float32).eval()
    rng = np.random.default_rng(args.seed)
    p_len, n_new = args.prompt_len, args.new_tokens
    specials = {lm.config.pad_token_id, *lm.config.eos_token_ids}
    vocab = [t for t in range(lm.config.vocab_size) if t not in specials]
    rows = []
    for batch in (1, 8):
        ids = rng.choice(vocab, size=(batch, p_len)).astype(np.int32)
        mask = np.ones_like(ids)

        def jax_run(budget, ids=ids, mask=mask, batch=batch):
            out = generate_padded(
                lm, jnp.asarray(ids), jnp.asarray(mask), None,
                max_new_tokens=np.full((batch,), budget, np.int32), sampling=greedy,
                eos_ids=(), buffer_len=n_new, return_logits=False,
            )  # fmt: skip
            return np.asarray(out.tokens)

        t_ids, t_mask = torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(mask)

        def hf_run(budget, t_ids=t_ids, t_mask=t_mask):
            with torch.inference_mode():
                out = hf.generate(
                    input_ids=t_ids, attention_mask=t_mask, max_new_tokens=budget,
                    min_new_tokens=budget, do_sample=False, pad_token_id=lm.config.pad_token_id,
                )  # fmt: skip
            return out[:, p_len:].numpy()

        agree = float(np.mean(jax_run(n_new)[:, :n_new] == hf_run(n_new)[:, :n_new]))
        for name, fn in (("nabla_jax generate_padded", jax_run), ("HF torch generate", hf_run)):
            fn(1)
            t_pre = _median_time(lambda fn=fn: fn(1), args.repeats)
            t_all = _median_time(lambda fn=fn: fn(n_new), args.repeats)
            rows.append(
                dict(
                    impl=name,
                    batch=batch,
                    prefill_tok_per_s=batch * p_len / t_pre,
                    decode_tok_per_s=batch * (n_new - 1) / max(t_all - t_pre, 1e-9),
                    end_to_end_tok_per_s=batch * n_new / t_all,
                    greedy_token_agreement=agree,
                )
            )
    return dict(prompt_len=p_len, new_tokens=n_new, rows=rows)


WORKERS = dict(
    nabla=worker_nabla, twin=worker_twin, baselines=worker_baselines, generate=worker_generate
)


# -------------------------------------------------------------------------------- driver


def _spawn(args, worker: str, cache_dir: str, tmp: str, **extra) -> dict:
    result = os.path.join(tmp, f"{worker}-{time.monotonic_ns()}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", worker, "--result", result]
    cmd += ["--num-problems", str(args.num_problems), "--seed", str(args.seed)]
    cmd += ["--key", str(args.key), "--torch-threads", str(args.torch_threads)]
    cmd += ["--loop", args.loop]
    cmd += ["--bon-n", str(args.bon_n), "--prompt-len", str(args.prompt_len)]
    cmd += ["--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats)]
    for k, v in extra.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    env = dict(os.environ, NABLA_JAX_CACHE_DIR=cache_dir)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # it would win over NABLA_JAX_CACHE_DIR
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"worker {worker} {extra} failed:\n{proc.stderr[-4000:]}")
    with open(result) as f:
        out = json.load(f)
    out["process_s"] = wall
    return out


def _fmt(x, spec=".2f"):
    return "—" if x is None else format(x, spec)


def main(argv=None) -> dict:
    args = _parse(argv)
    if args.worker:
        out = WORKERS[args.worker](args)
        _write(args, out)
        return out
    import jax
    import torch

    sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    env = dict(
        platform=platform.platform(),
        cpu_count=os.cpu_count(),
        jax=jax.__version__,
        jax_backend=jax.default_backend(),
        torch=torch.__version__,
        torch_threads=args.torch_threads,
        load_average_start=os.getloadavg(),
    )
    print(f"env: {env}", flush=True)
    tmp = tempfile.mkdtemp(prefix="nabla-bench-decode-")
    scratch = os.path.join(tmp, "scratch-cache")
    twin = None
    if not args.skip_twin:
        twin = _spawn(args, "twin", scratch, tmp)
        print(f"twin: {twin['seconds']:.1f} s, accuracy {twin['accuracy']:.3f}", flush=True)
    nabla = []
    for b in sizes:
        cache_dir = os.path.join(tmp, f"cache-b{b}")
        os.makedirs(cache_dir)
        cold = _spawn(args, "nabla", cache_dir, tmp, batch_size=b, passes=2)
        cached = _spawn(args, "nabla", cache_dir, tmp, batch_size=b, passes=1)
        entries = sum(len(files) for _, _, files in os.walk(cache_dir))
        row = dict(
            batch_size=b,
            cache=cold["cache"],
            cache_files=entries,
            cold=dict(cold["passes"][0], process_s=cold["process_s"]),
            warm=cold["passes"][1],
            cached=dict(cached["passes"][0], process_s=cached["process_s"]),
        )
        for way in ("cold", "warm", "cached"):
            r = row[way]
            r["compile_share"] = r["compile_s"] / r["seconds"]
            r["twin_over_jax"] = twin["seconds"] / r["seconds"] if twin else None
        digests = {row[w]["tokens_sha256"] for w in ("cold", "warm", "cached")}
        row["same_tokens_cold_warm_cached"] = len(digests) == 1
        nabla.append(row)
        print(f"batch {b}: cold {row['cold']['seconds']:.1f} s, warm {row['warm']['seconds']:.1f}"
              f" s, cached {row['cached']['seconds']:.1f} s", flush=True)  # fmt: skip
    baselines = None if args.skip_baselines else _spawn(args, "baselines", scratch, tmp)
    generate = None if args.skip_generate else _spawn(args, "generate", scratch, tmp)
    env["load_average_end"] = os.getloadavg()
    same = len({r[w]["tokens_sha256"] for r in nabla for w in ("cold", "warm", "cached")}) == 1

    best = {
        way: max(nabla, key=lambda r, way=way: r[way]["problems_per_s"])["batch_size"]
        for way in ("cold", "cached", "warm")
    }
    n = args.num_problems
    print(
        f"\n1-2. ∇-Reasoner, {n} test problems (seed {args.seed}), bundled pair, {args.loop} loop"
    )
    head = f"{'batch':>5} {'run':<7}{'s':>8}{'prob/s':>8}{'twin/JAX':>9}{'compiles':>9}"
    print(
        head + f"{'hits':>6}{'compile s':>10}{'share':>7}{'trace s':>8}{'acc':>7}{'calls':>7}"
        f"{'proc s':>8}"
    )
    for row in nabla:
        for way in ("cold", "cached", "warm"):
            r = row[way]
            print(
                f"{row['batch_size']:>5} {way:<7}{r['seconds']:>8.2f}{r['problems_per_s']:>8.2f}"
                f"{_fmt(r['twin_over_jax']):>9}{r['compiles']:>9}{r['cache_hits']:>6}"
                f"{r['compile_s']:>10.2f}{r['compile_share']:>7.0%}"
                f"{r['trace_s'] + r['lower_s']:>8.2f}{r['accuracy']:>7.1%}"
                f"{r['mean_model_calls']:>7.1f}{_fmt(r.get('process_s'), '.1f'):>8}"
            )
    if twin:
        print(
            f"{'1':>5} {'twin':<7}{twin['seconds']:>8.2f}{twin['problems_per_s']:>8.2f}"
            f"{'1.00':>9}{'':>9}{'':>6}{'':>10}{'':>7}{'':>8}{twin['accuracy']:>7.1%}"
            f"{twin['mean_model_calls']:>7.1f}{twin['process_s']:>8.1f}"
            f"   (PyTorch eager, {twin['torch_threads']} threads)"
        )
    print(f"identical responses across batch sizes and cold/cached/warm: {same}")
    print("fastest batch size: " + ", ".join(f"{w} {b}" for w, b in best.items()))
    if baselines:
        print(f"\n3. Baselines, {n} problems, batch_size {baselines['batch_size']}")
        print(f"{'method':<14}{'pass 1 s':>9}{'pass 2 s':>9}{'prob/s (2)':>11}{'compiles':>9}"
              f"{'acc':>7}{'calls':>7}")  # fmt: skip
        for name in ("greedy", f"best_of_{args.bon_n}"):
            p1, p2 = baselines[name]
            print(
                f"{name:<14}{p1['seconds']:>9.2f}{p2['seconds']:>9.2f}{p2['problems_per_s']:>11.1f}"
                f"{p1['compiles']:>9}{p2['accuracy']:>7.1%}{p2['mean_model_calls']:>7.1f}"
            )
    if generate:
        print(f"\n4. Greedy generation, prompt {args.prompt_len}, {args.new_tokens} new tokens")
        print(f"{'impl':<27}{'batch':>6}{'prefill tok/s':>15}{'decode tok/s':>14}{'agree':>7}")
        for r in generate["rows"]:
            print(
                f"{r['impl']:<27}{r['batch']:>6}{r['prefill_tok_per_s']:>15.0f}"
                f"{r['decode_tok_per_s']:>14.0f}{r['greedy_token_agreement']:>7.2f}"
            )
    result = dict(
        args={k: v for k, v in vars(args).items() if k not in ("worker", "result")},
        env=env,
        twin=twin,
        nabla=nabla,
        identical_responses=same,
        fastest_batch_size=best,
        baselines=baselines,
        generate=generate,
    )
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2, default=str)
        print(f"\nwrote {args.output}")
    return result


if __name__ == "__main__":
    main()
