"""Device memory of the ∇-Reasoner programs at Qwen2.5-7B shapes, by XLA's count, without a GPU.

Nothing is allocated: the LM and the RM are pytrees of ``jax.ShapeDtypeStruct`` (``param_shapes``,
i.e. ``jax.eval_shape`` of the models' init), and so is every other input (the decode loop's
state from ``jax.eval_shape(empty_state, ...)``, the DTO windows cut from it). Each program is
lowered and compiled for the CPU backend and ``compiled.memory_analysis()`` is read
(``nabla_jax.runtime.memory.program_memory``): argument, output, temporary, aliased and
generated-code bytes, and the peak ``arguments + outputs + temporaries − aliased``.

The programs, for each ``--configs`` run config (its ``decode:`` settings; ``max_length`` may be
overridden) at each ``--batch-sizes`` B:

* ``iteration``: one iteration of the decode loop (``nabla_jax.decoding.loop.iteration``, the
  body of the compiled ``lax.while_loop``: probe, DTO at every window bucket, resample, rollout,
  RM scoring, commit), the state donated as in ``run_chunk``;
* ``refine``: the DTO scan (``refine_rows``, every step) at the largest window bucket the loop
  can take, with the prefix keys/values taken from the loop's caches as the decoder does;
* ``dto_step``: one full DTO step (``dto_step``) at that bucket, its state donated as the scan
  carries it.

The largest batch whose ``iteration`` peak fits ``--budget-gb``: the figures are compiled at two
batch sizes, the peak is fitted as ``a + c·B`` (the report gives the fit's error at every
measured batch), extrapolated, and, with ``--verify``, the predicted batch and the next one are
compiled to confirm.

The shapes of the prompt parts are flags (defaults: MATH-500 chat prompts of about 100 tokens,
bucketed to 128; RM template prefix 128, suffix 8). CPU XLA's buffer assignment stands in for a
GPU's: the same HLO, but fusion and scheduling differ, so a GPU's figure may differ somewhat.

Example::

    python benchmarks/bench_memory.py --output benchmarks/results/memory_7b.json
    python benchmarks/bench_memory.py --tiny --batch-sizes 1,2 --output /tmp/mem.json
"""

from __future__ import annotations

import argparse
import functools
import glob
import json
import os
import platform
import re
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from nabla_jax.runtime.memory import program_memory  # noqa: E402

QWEN25_7B = dict(
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
    rope_theta=1e6,
    tie_word_embeddings=False,
    eos_token_id=151645,
    pad_token_id=151643,
)
TINY = dict(QWEN25_7B, vocab_size=256, hidden_size=32, intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=4096, eos_token_id=2, pad_token_id=0)  # fmt: skip
CONFIGS = ("configs/qwen2.5-7b-math500.yaml", "configs/qwen2.5-7b-math500-public.yaml")
PROGRAMS = ("iteration", "refine", "dto_step")


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default=",".join(CONFIGS), help="run configs (comma-separated)")
    p.add_argument("--batch-sizes", default="1,8", help="compiled at each (comma-separated)")
    p.add_argument("--programs", default=",".join(PROGRAMS), help=f"subset of {PROGRAMS}")
    p.add_argument("--dtype", default="bfloat16", help="the models' dtype")
    p.add_argument("--max-length", type=int, default=None, help="override decode.max_length")
    p.add_argument("--prompt-len", type=int, default=128, help="LM chat prompt bucket P")
    p.add_argument("--rm-prefix-len", type=int, default=128, help="RM template prefix bucket Q")
    p.add_argument("--rm-suffix-len", type=int, default=8, help="RM template suffix bucket S")
    p.add_argument("--budget-gb", type=float, default=80.0, help="device memory, 1e9 bytes")
    p.add_argument("--verify", action="store_true", help="compile the predicted largest batch")
    p.add_argument("--table", default=None, help="print a JSON's figures as Markdown, no run")
    p.add_argument("--no-breakdown", action="store_true", help="skip XLA's buffer report")
    p.add_argument("--tiny", action="store_true", help="tiny model shapes (a quick check)")
    p.add_argument("--output", default="benchmarks/results/memory_7b.json")
    args = p.parse_args(argv)
    args.configs = [c for c in args.configs.split(",") if c]
    args.batch_sizes = sorted({int(b) for b in args.batch_sizes.split(",")})
    args.programs = [x for x in args.programs.split(",") if x]
    bad = sorted(set(args.programs) - set(PROGRAMS))
    if bad:
        p.error(f"--programs: unknown {bad}; choose from {','.join(PROGRAMS)}")
    if any(b < 1 for b in args.batch_sizes):
        p.error("--batch-sizes: every batch size must be ≥ 1")
    return args


# -------------------------------------------------------------------------------- inputs


def model_config(shape: dict):
    """A ``ModelConfig`` from a transformers ``Qwen2Config`` of ``shape`` (nothing downloaded)."""
    from transformers import Qwen2Config

    from nabla_jax.models.registry import config_from_hf

    hf = Qwen2Config(**shape)
    hf.num_labels = 1
    return config_from_hf(hf)


def abstract_models(cfg, dtype: str):
    """``(CausalLM, RewardModel)`` whose parameters are ``ShapeDtypeStruct`` leaves (allocated:
    none). The RM is the same body with a one-label score head."""
    from nabla_jax.models.model import CausalLM, RewardModel, param_shapes

    lm = CausalLM(cfg, param_shapes(cfg, dtype, "lm"), None, dtype)
    rm = RewardModel(cfg, param_shapes(cfg, dtype, "score"), None, dtype)
    return lm, rm


def decode_inputs(lm, rm, dcfg, batch: int, p: int, q: int, s: int) -> dict:
    """Abstract inputs of the decode iteration and of the DTO at its largest window bucket."""
    from nabla_jax.decoding.loop import Models
    from nabla_jax.decoding.state import empty_state
    from nabla_jax.decoding.stopping import stop_tables
    from nabla_jax.decoding.windows import prefix_caches, window_buckets, window_problems
    from nabla_jax.functional.checks import rm_embedding_table
    from nabla_jax.functional.context import prepare_context
    from nabla_jax.functional.optimizer import paper_optimizer
    from nabla_jax.functional.step import init_state

    prog, h = dcfg.program(), dcfg.hyper()
    latents = prog.dto.mode == "latents"
    n, k = prog.max_length, prog.window
    table = jax.eval_shape(rm_embedding_table, lm, rm)
    state = jax.eval_shape(
        lambda lm, rm: empty_state(lm, rm, batch, p, q, s, n, k, latents=latents,
                                   events=n * prog.refine_passes),
        lm, rm,
    )  # fmt: skip
    win, tail = window_buckets(k, n)[-1]

    def cut(lm, state):
        at = jnp.zeros((batch,), jnp.int32)
        rows = jnp.ones((batch,), bool)
        problems, _ = window_problems(lm, state, at, rows, win, latents, tail)
        return problems, prefix_caches(lm, state, at, latents)

    problems, given = jax.eval_shape(cut, lm, state)
    keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), batch))
    ctx = jax.eval_shape(
        lambda lm, rm, pr, g, t: prepare_context(lm, rm, pr, prog.dto, g, t),
        lm, rm, problems, given, table,
    )  # fmt: skip
    dto_state = jax.eval_shape(
        lambda lm, pr, hh: init_state(lm, pr, prog.dto, paper_optimizer(prog.dto, hh)),
        lm, problems, h.dto,
    )  # fmt: skip
    eos = [lm.config.eos_token_id] if lm.config.eos_token_id is not None else []
    return dict(
        prog=prog, h=h, models=Models(lm, rm, table), state=state, tables=stop_tables(eos),
        problems=problems, given=given, keys=keys, ctx=ctx, dto_state=dto_state,
        bucket=dict(window=win, tail=tail),
    )  # fmt: skip


def lower(name: str, x: dict):
    """The ``jax.stages.Lowered`` of program ``name`` on the abstract inputs ``x``."""
    from nabla_jax.decoding.loop import iteration
    from nabla_jax.functional.optimizer import paper_optimizer
    from nabla_jax.functional.program import refine_rows_jit
    from nabla_jax.functional.step import dto_step

    prog, h, m = x["prog"], x["h"], x["models"]
    pad = m.lm.config.pad_token_id or 0
    if name == "iteration":
        fn = functools.partial(iteration, prog=prog, scorer=None, pad_id=pad)
        return jax.jit(fn, donate_argnums=(1,)).lower(m, x["state"], h, x["tables"])
    if name == "refine":
        return refine_rows_jit.lower(
            m.lm, m.rm, m.rm_table, x["problems"], x["keys"], h.dto, prog.dto, x["given"]
        )
    if name == "dto_step":

        def step(lm, rm, ctx, batch, state, keys, index, hh):
            tx = paper_optimizer(prog.dto, hh)
            return dto_step(
                lm,
                rm,
                ctx=ctx,
                batch=batch,
                state=state,
                keys=keys,
                step_index=index,
                cfg=prog.dto,
                h=hh,
                optimizer=tx,
            )

        index = jax.ShapeDtypeStruct((), jnp.int32)
        return jax.jit(step, donate_argnums=(4,)).lower(
            m.lm, m.rm, x["ctx"], x["problems"], x["dto_state"], x["keys"], index, h.dto
        )
    raise ValueError(f"unknown program {name!r}; choose from {PROGRAMS}")


def tree_bytes(tree) -> int:
    """Bytes of every array-like leaf of ``tree`` (abstract or not)."""
    return sum(
        int(v.size) * jnp.dtype(v.dtype).itemsize
        for v in jax.tree.leaves(tree)
        if hasattr(v, "dtype") and hasattr(v, "shape")
    )


def measure(name: str, x: dict, breakdown: bool = True) -> dict:
    """Lower, compile and read the memory analysis of one program; with ``breakdown``, also
    XLA's buffer assignment (dumped to a temporary folder) for :func:`temp_breakdown`."""
    t0 = time.perf_counter()
    lowered = lower(name, x)
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        options = {"xla_dump_to": tmp, "xla_dump_hlo_pass_re": "NONE"} if breakdown else None
        compiled = lowered.compile(compiler_options=options)
        t2 = time.perf_counter()
        figures = program_memory(compiled)
        if breakdown:
            m = x["models"]
            params = jax.tree.leaves((m.lm.params, m.rm.params))
            figures["temp_breakdown"] = temp_breakdown(tmp, params)
    figures.update(lower_s=round(t1 - t0, 2), compile_s=round(t2 - t1, 2))
    del compiled, lowered
    return figures


_VALUE = re.compile(r"value: <\d+ (\S+) @\d+> \(size=(\d+),offset=(\d+)\): (\w+)\[([\d,]*)\]")
_RANGE = re.compile(r"^\s+(\S+\{[\d,]*\}):(\d+)-(\d+)$", re.M)


def _live_peak(values, ranges) -> int:
    """Most bytes live at one point of the schedule: ``values`` ``(name, size, offset)`` with
    live ranges ``ranges[name] = (start, end)``; values at one offset whose ranges overlap are
    one buffer (aliases: a loop's carried value, an in-place update), so each offset counts the
    largest of its live values."""
    import numpy as np

    span = 1 + max((e for s, e in ranges.values()), default=0)
    by_offset: dict[int, list] = {}
    for name, size, offset in values:
        if name in ranges:
            by_offset.setdefault(offset, []).append((*ranges[name], size))
    total = np.zeros(span, np.float64)
    for items in by_offset.values():
        occ = np.zeros(span, np.float64)
        for s, e, size in items:
            np.maximum(occ[s : e + 1], size, out=occ[s : e + 1])
        total += occ
    return int(total.max()) if span else 0


def temp_breakdown(dump_dir: str, params, top: int = 8) -> dict:
    """XLA's own buffer assignment and live ranges of the program (the dumped module with the
    largest preallocated temporary), read three ways:

    * ``live_temp_bytes``: the most temporary bytes live at one point of XLA's schedule (the
      temporary itself, ``temp_bytes``, adds what packing leaves unused);
    * ``weight_upcast_bytes``: the float32 copies of low-precision parameters (``convert``
      values whose dimensions are a parameter's, whole or one layer of it): the CPU backend
      computes bfloat16 dots in float32 and hoists the weights' conversion out of the layer
      loop; a GPU multiplies bfloat16 natively and makes no such copy.
      ``live_temp_less_upcast_bytes`` is ``live_temp_bytes`` recomputed without them: the
      temporary a backend without the copies would need at least, with the same schedule and
      the same other buffers (the CPU's other float32 intermediates stay in);
    * ``largest``: the ``top`` largest temporary values (shape, XLA's name).
    """
    low = {tuple(sorted(p.shape)) for p in params if jnp.dtype(p.dtype).itemsize < 4}
    low |= {tuple(sorted(p.shape[1:])) for p in params
            if jnp.dtype(p.dtype).itemsize < 4 and len(p.shape) > 2}  # fmt: skip
    best = None
    for path in glob.glob(os.path.join(dump_dir, "*buffer-assignment.txt")):
        with open(path) as f:
            text = f.read()
        for block in re.split(r"\n(?=allocation \d+:)", text):
            head = block.split("\n", 1)[0]
            if "preallocated-temp" in head:
                size = int(re.search(r"size (\d+)", head).group(1))
                if best is None or size > best[0]:
                    best = (size, block, path)
    if best is None:
        return dict(temp_bytes=0, live_temp_bytes=0, weight_upcast_bytes=0,
                    live_temp_less_upcast_bytes=0, largest=[])  # fmt: skip
    with open(best[2].replace("buffer-assignment.txt", "live-range.txt")) as f:
        ranges = {m[0]: (int(m[1]), int(m[2])) for m in _RANGE.findall(f.read())}
    values, upcast, shapes = [], set(), {}
    for name, size, offset, dtype, dims in _VALUE.findall(best[1]):
        name = name if "{" in name else name + "{}"
        size, offset = int(size), int(offset)
        values.append((name, size, offset))
        shapes.setdefault((offset, size), (f"{dtype}[{dims}]", name))
        shape = tuple(int(d) for d in dims.split(",") if d)
        if dtype == "f32" and "convert" in name and tuple(sorted(shape)) in low:
            upcast.add(name)
    live = _live_peak(values, ranges)
    rest = _live_peak([v for v in values if v[0] not in upcast], ranges)
    largest = sorted(shapes.items(), key=lambda kv: -kv[0][1])[:top]
    return dict(
        temp_bytes=best[0],
        live_temp_bytes=live,
        weight_upcast_values=len(upcast),
        weight_upcast_bytes=sum(v[1] for v in values if v[0] in upcast),
        live_temp_less_upcast_bytes=rest,
        largest=[dict(bytes=k[1], shape=v[0], value=v[1]) for k, v in largest],
    )


# -------------------------------------------------------------------------------- fit


def fit_batch(points: dict[int, int], budget: float) -> dict:
    """``peak = a + c·B`` through the smallest and largest measured batch; the largest ``B``
    with ``a + c·B ≤ budget``, and the fit's relative error at every measured batch."""
    lo, hi = min(points), max(points)
    if lo == hi:
        return dict(method="one batch measured: no fit", largest_batch=None)
    c = (points[hi] - points[lo]) / (hi - lo)
    a = points[lo] - c * lo
    largest = int((budget - a) // c) if c > 0 and budget >= a + c else 0
    errors = {str(b): (a + c * b - v) / v for b, v in points.items()}
    return dict(method="linear fit a + c*B, extrapolated", fixed_bytes=a, bytes_per_row=c,
                largest_batch=largest, fit_relative_error=errors)  # fmt: skip


def markdown_table(result: dict) -> str:
    """The figures of a run (``main``'s result or its JSON) as a Markdown table, GB = 1e9 B."""
    gb = lambda v: f"{v / 1e9:.1f}" if v is not None else "–"  # noqa: E731
    lines = [
        "| config | B | program | arguments | temporaries | outputs | aliased | **peak** | "
        "live temporaries | live temporaries without the float32 weight copies | peak without "
        "them |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["configs"]:
        name = os.path.basename(c["config"]).removesuffix(".yaml")
        for b, row in c["batches"].items():
            for prog, f in row["programs"].items():
                t = f.get("temp_breakdown", {})
                lines.append(
                    f"| {name} | {b} | {prog} | {gb(f['argument_bytes'])} | "
                    f"{gb(f['temp_bytes'])} | {gb(f['output_bytes'])} | {gb(f['alias_bytes'])} | "
                    f"**{gb(f['peak_bytes'])}** | {gb(t.get('live_temp_bytes'))} | "
                    f"{gb(t.get('live_temp_less_upcast_bytes'))} | "
                    f"{gb(f.get('peak_less_upcast_bytes'))} |"
                )
    return "\n".join(lines)


# -------------------------------------------------------------------------------- main


def run_config(path: str, args, lm, rm) -> dict:
    import dataclasses

    from nabla_jax.app.config_io import load_run_config

    dcfg = load_run_config(os.path.join(ROOT, path) if not os.path.isabs(path) else path)["decode"]
    if args.max_length is not None:
        dcfg = dataclasses.replace(dcfg, max_length=args.max_length)
    sizes = (args.prompt_len, args.rm_prefix_len, args.rm_suffix_len)
    out = dict(config=path, max_length=dcfg.max_length, window=dcfg.window,
               dto_steps=dcfg.dto.num_steps, window_dtype=str(dcfg.dto.window_dtype),
               batches={})  # fmt: skip

    def at_batch(b: int) -> dict:
        x = decode_inputs(lm, rm, dcfg, b, *sizes)
        row = dict(bucket=x["bucket"], state_bytes=tree_bytes(x["state"]), programs={})
        for name in args.programs:
            row["programs"][name] = f = measure(name, x, not args.no_breakdown)
            if "temp_breakdown" in f:
                rest = f["temp_breakdown"]["live_temp_less_upcast_bytes"]
                f["peak_less_upcast_bytes"] = f["peak_bytes"] - f["temp_bytes"] + rest
            print(f"{path} B={b} {name}: peak {f['peak_bytes'] / 1e9:.2f} GB (args "
                  f"{f['argument_bytes'] / 1e9:.2f}, temp {f['temp_bytes'] / 1e9:.2f}, out "
                  f"{f['output_bytes'] / 1e9:.2f}, alias {f['alias_bytes'] / 1e9:.2f}; less "
                  f"CPU weight upcasts {f.get('peak_less_upcast_bytes', 0) / 1e9:.2f}); "
                  f"compile {f['compile_s']:.0f} s", flush=True)  # fmt: skip
        return row

    for b in args.batch_sizes:
        out["batches"][str(b)] = at_batch(b)
    budget = args.budget_gb * 1e9
    out["fits"] = {}
    for name in args.programs:
        for kind in ("peak_bytes", "peak_less_upcast_bytes"):
            progs = [out["batches"][str(b)]["programs"][name] for b in args.batch_sizes]
            if all(kind in f for f in progs):
                points = dict(zip(args.batch_sizes, (f[kind] for f in progs), strict=True))
                out["fits"].setdefault(name, {})[kind] = fit_batch(points, budget)
    if args.verify and "iteration" in args.programs:
        fit = out["fits"]["iteration"]["peak_bytes"]
        best = fit.get("largest_batch")
        if best:
            checked = {}
            for b in (best, best + 1):
                x = decode_inputs(lm, rm, dcfg, b, *sizes)
                peak = measure("iteration", x, breakdown=False)["peak_bytes"]
                checked[str(b)] = peak
                print(f"{path} verify B={b}: iteration peak {peak / 1e9:.2f} GB", flush=True)
            fit["verified"] = checked
            fit["verified_fits"] = checked[str(best)] <= budget < checked[str(best + 1)]
    return out


def main(argv=None) -> dict:
    args = _parse(argv)
    if args.table:
        with open(args.table) as f:
            result = json.load(f)
        print(markdown_table(result))
        return result
    import nabla_jax

    t0 = time.perf_counter()
    cfg = model_config(TINY if args.tiny else QWEN25_7B)
    lm, rm = abstract_models(cfg, args.dtype)
    models = dict(shape="tiny" if args.tiny else "Qwen2.5-7B", dtype=args.dtype,
                  lm_param_bytes=tree_bytes(lm.params), rm_param_bytes=tree_bytes(rm.params),
                  layers=cfg.num_layers, hidden=cfg.hidden_size, vocab=cfg.vocab_size,
                  intermediate=cfg.intermediate_size, heads=cfg.num_heads,
                  kv_heads=cfg.num_kv_heads, rope_theta=cfg.rope_theta,
                  tied=cfg.tie_word_embeddings)  # fmt: skip
    env = dict(jax=jax.__version__, backend=jax.default_backend(),
               platform=platform.platform(), nabla_jax=getattr(nabla_jax, "__version__", None),
               cpu_count=os.cpu_count())  # fmt: skip
    print(f"models: {models}\nenv: {env}", flush=True)
    configs = [run_config(path, args, lm, rm) for path in args.configs]
    wall = time.perf_counter() - t0
    result = dict(args=vars(args), env=env, models=models, configs=configs, wall_s=round(wall, 1),
                  note="bytes from compiled.memory_analysis() on the CPU backend; peak = "
                  "argument + output + temp - alias")  # fmt: skip
    print(f"{markdown_table(result)}\nwall {wall:.0f} s", flush=True)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2, default=str)
        print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
