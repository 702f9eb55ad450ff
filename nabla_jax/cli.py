"""The ``nabla-jax`` command: ``demo``, ``decode``, ``bench accuracy``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _err(msg: str) -> SystemExit:
    print(f"nabla-jax: error: {msg}", file=sys.stderr)
    return SystemExit(2)


def _check_model_dir(path: str, what: str) -> str:
    if not os.path.isdir(path):
        raise _err(f"{what} directory {path!r} does not exist")
    if not os.path.exists(os.path.join(path, "config.json")):
        raise _err(f"{what} directory {path!r} has no config.json (not a Hugging Face model dir)")
    return path


def _load_models(args, models_cfg: dict | None = None):
    from nabla_jax.bundled import BUNDLED_LM, BUNDLED_RM
    from nabla_jax.models import load_causal_lm, load_reward_model

    models_cfg = models_cfg or {}
    lm_path = args.lm or models_cfg.get("lm") or str(BUNDLED_LM)
    rm_path = args.rm or models_cfg.get("rm") or str(BUNDLED_RM)
    dtype = args.dtype or models_cfg.get("dtype") or "float32"
    _check_model_dir(lm_path, "--lm")
    _check_model_dir(rm_path, "--rm")
    mesh = getattr(args, "mesh_obj", None)
    kw = {"mesh": mesh} if mesh is not None else {}
    return load_causal_lm(lm_path, dtype, **kw), load_reward_model(rm_path, dtype, **kw)


def _decode_config(args):
    """(DecodeConfig, run-config dict) from --config (YAML) or the bundled defaults."""
    from nabla_jax.bundled import bundled_decode_config
    from nabla_jax.config_io import ConfigError, load_run_config

    if getattr(args, "config", None):
        try:
            run = load_run_config(args.config)
        except (ConfigError, FileNotFoundError) as e:
            raise _err(str(e)) from e
        if run.get("compilation_cache") is False:
            from nabla_jax import compilation_cache

            compilation_cache.disable()
        return run["decode"], run
    return bundled_decode_config(), {}


def _setup_distributed(args, run: dict):
    """jax.distributed + mesh from the command line (or the run config / environment)."""
    from nabla_jax import distributed

    distributed.maybe_initialize(
        coordinator_address=args.coordinator_address,
        num_processes=args.num_processes,
        process_id=args.process_id,
    )
    spec = args.mesh or run.get("mesh")
    if spec:
        from nabla_jax.sharding import make_mesh

        try:
            args.mesh_obj = make_mesh(spec)
        except ValueError as e:
            raise _err(str(e)) from e
    else:
        args.mesh_obj = None


def cmd_demo(args) -> int:
    import jax

    from nabla_jax.bundled import bundled_decode_config, load_bundled
    from nabla_jax.decoding.baselines import greedy_cot
    from nabla_jax.decoding.nabla import NablaDecoder
    from nabla_jax.tasks import extract_answer, format_prompt, fresh_test_problems, grade

    t0 = time.perf_counter()
    print("Loading the bundled LM and reward model …")
    lm, rm = load_bundled()
    problems = fresh_test_problems(args.num_problems, args.seed)
    prompts = [format_prompt(p) for p in problems]
    cfg = bundled_decode_config()
    print(f"Greedy chain of thought on {len(problems)} test problems …")
    greedy = greedy_cot(lm, prompts, max_length=cfg.max_length)
    print("∇-Reasoner (DTO + resampling + rejection) on the same problems …")
    nabla = NablaDecoder(lm, rm, cfg).generate(prompts, jax.random.key(args.seed), progress=True)
    print()
    header = f"{'problem':<28} {'answer':>6} | {'greedy':>7} {'ok':<3} {'calls':>5} | "
    header += f"{'∇-Reasoner':>10} {'ok':<3} {'calls':>5} {'gens':>4}"
    print(header)
    print("-" * len(header))
    tally = [0, 0, 0, 0]
    for p, g, n in zip(problems, greedy, nabla):
        g_ok, n_ok = grade(g.text, p.answer), grade(n.text, p.answer)
        g_calls, n_calls = int(g.stats["model_calls"]), int(n.stats["model_calls"])
        tally = [tally[0] + g_ok, tally[1] + n_ok, tally[2] + g_calls, tally[3] + n_calls]
        print(
            f"{p.question:<28} {p.answer:>6} | {str(extract_answer(g.text)):>7} "
            f"{'✓' if g_ok else '✗':<3} {g_calls:>5} | {str(extract_answer(n.text)):>10} "
            f"{'✓' if n_ok else '✗':<3} {n_calls:>5} {int(n.stats['generations']):>4}"
        )
    k = len(problems)
    print("-" * len(header))
    print(
        f"greedy {tally[0]}/{k} correct, {tally[2] / k:.0f} calls/problem; "
        f"∇-Reasoner {tally[1]}/{k} correct, {tally[3] / k:.0f} calls/problem "
        f"({time.perf_counter() - t0:.0f} s, compilation included)"
    )
    if args.show_text and nabla:
        print("\nFirst ∇-Reasoner response:\n" + nabla[0].text)
    return 0


def _read_prompts(args) -> list[str]:
    if args.prompt is not None:
        return [args.prompt]
    from nabla_jax.tasks import load_problems

    if not os.path.exists(args.prompts):
        raise _err(f"--prompts file {args.prompts!r} does not exist")
    try:
        return [p.question for p in load_problems(args.prompts)]
    except ValueError as e:
        raise _err(str(e)) from e


def cmd_decode(args) -> int:
    import jax

    from nabla_jax import distributed
    from nabla_jax.decoding.nabla import NablaDecoder

    cfg, run = _decode_config(args)
    _setup_distributed(args, run)
    prompts = _read_prompts(args)
    lm, rm = _load_models(args, run.get("models"))
    decoder = NablaDecoder(lm, rm, cfg)
    results = distributed.generate_across_hosts(
        decoder, prompts, jax.random.key(args.seed), mesh=args.mesh_obj
    )
    rows = [
        {"prompt": p, "response": r.text, "stats": dict(r.stats)} for p, r in zip(prompts, results)
    ]
    if distributed.is_main_process():
        if args.output:
            with open(args.output, "w") as f:
                for row in rows:
                    f.write(json.dumps(row) + "\n")
            print(f"wrote {len(rows)} responses to {args.output}")
        else:
            for row in rows:
                print(f"### {row['prompt']}\n{row['response']}\n{row['stats']}\n")
    return 0


def cmd_bench_accuracy(args) -> int:
    from nabla_jax import evaluation
    from nabla_jax.bundled import bundled_baseline_sampling
    from nabla_jax.tasks import fresh_test_problems

    try:
        methods = evaluation.parse_methods(args.methods)
    except ValueError as e:
        raise _err(str(e)) from e
    cfg, run = _decode_config(args)
    sampling = run.get("baselines") if args.config else bundled_baseline_sampling()
    try:
        evaluation.check_baseline_sampling(methods, sampling or cfg.rollout)
    except ValueError as e:
        raise _err(str(e)) from e
    _setup_distributed(args, run)
    lm, rm = _load_models(args, run.get("models"))
    problems = fresh_test_problems(args.num_problems, args.seed)
    out = args.output
    stem = out[: -len(".jsonl")] if out.endswith(".jsonl") else out
    results_path = out if out.endswith(".jsonl") else out + ".jsonl"
    evaluation.run_benchmark(
        lm, rm, problems, methods, cfg, seed=args.seed, results_path=results_path,
        batch_size=args.batch_size, progress=not args.no_progress, baseline_sampling=sampling,
    )  # fmt: skip
    summary = evaluation.summarize(results_path, methods)
    with open(stem + ".summary.json", "w") as f:
        json.dump(summary, f, indent=2)
    evaluation.plot_summary(
        summary, stem + ".png", f"{args.num_problems} arithmetic test problems (seed {args.seed})"
    )
    print(evaluation.format_table(summary))
    print(f"results: {results_path}\nsummary: {stem}.summary.json\nplot: {stem}.png")
    return 0


def _add_cache_arg(p):
    p.add_argument(
        "--no-compilation-cache",
        action="store_true",
        help="do not read or write the persistent XLA compilation cache "
        "(default: on, in $NABLA_JAX_CACHE_DIR or ~/.cache/nabla-jax/xla)",
    )


def _add_model_args(p):
    _add_cache_arg(p)
    p.add_argument("--lm", help="causal-LM directory (default: the bundled LM)")
    p.add_argument("--rm", help="reward-model directory (default: the bundled RM)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="default float32")
    p.add_argument("--config", help="YAML run config (see configs/)")
    p.add_argument("--mesh", help="device mesh, e.g. data=4,model=2")
    p.add_argument("--coordinator-address", help="jax.distributed coordinator host:port")
    p.add_argument("--num-processes", type=int, help="number of processes (hosts)")
    p.add_argument("--process-id", type=int, help="this process's id")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nabla-jax", description="∇-Reasoner: test-time reasoning by gradient descent on text."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="greedy vs ∇-Reasoner on bundled problems")
    demo.add_argument("--num-problems", type=int, default=4)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--show-text", action="store_true", help="print one full response")
    _add_cache_arg(demo)
    demo.set_defaults(func=cmd_demo)

    dec = sub.add_parser("decode", help="decode prompts with ∇-Reasoner")
    _add_model_args(dec)
    src = dec.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="one prompt text")
    src.add_argument("--prompts", help="JSON / JSONL file of objects with a 'question'")
    dec.add_argument("--seed", type=int, default=0)
    dec.add_argument("--output", help="write responses as JSONL here")
    dec.set_defaults(func=cmd_decode)

    bench = sub.add_parser("bench", help="benchmarks")
    bsub = bench.add_subparsers(dest="bench", required=True)
    acc = bsub.add_parser("accuracy", help="accuracy vs model calls of several methods")
    _add_model_args(acc)
    acc.add_argument("--methods", default="greedy,cot,bon:4,bon:8,sc:4,sc:8,nabla")
    acc.add_argument("--num-problems", type=int, default=200)
    acc.add_argument("--seed", type=int, default=0)
    acc.add_argument("--batch-size", type=int, default=8)
    acc.add_argument("--output", default="results/accuracy.jsonl")
    acc.add_argument("--no-progress", action="store_true")
    acc.set_defaults(func=cmd_bench_accuracy)
    return parser


def main(argv=None) -> int:
    # transformers is used here for tokenizers only; its "PyTorch was not found" notice is noise.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = build_parser().parse_args(argv)
    if getattr(args, "no_compilation_cache", False):
        from nabla_jax import compilation_cache

        compilation_cache.disable()
    for name in ("num_problems", "batch_size"):
        if getattr(args, name, 1) is not None and getattr(args, name, 1) < 1:
            raise _err(f"--{name.replace('_', '-')} must be ≥ 1")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
