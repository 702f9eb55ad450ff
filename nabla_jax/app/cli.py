"""The ``nabla-jax`` command: ``demo``, ``decode``, ``bench accuracy``."""

from __future__ import annotations

import argparse
import json
import os
import sys

from nabla_jax.app.cli_checks import (
    MAX_SEED,
    check_acceptance,
    check_model_dir,
    check_output_path,
    fail,
    one_line,
    precheck_pair,
    same_file,
)

__all__ = ["build_parser", "cmd_bench_accuracy", "cmd_decode", "cmd_demo", "main"]


def _load_models(args, models_cfg: dict | None = None):
    from nabla_jax.app.bundled import BUNDLED_LM, BUNDLED_RM
    from nabla_jax.models import load_causal_lm, load_reward_model

    models_cfg = models_cfg or {}
    lm_path = args.lm or models_cfg.get("lm") or str(BUNDLED_LM)
    rm_path = args.rm or models_cfg.get("rm") or str(BUNDLED_RM)
    dtype = args.dtype or models_cfg.get("dtype") or "float32"
    check_model_dir(lm_path, "--lm")
    check_model_dir(rm_path, "--rm")
    precheck_pair(lm_path, rm_path)
    mesh = getattr(args, "mesh_obj", None)
    kw = {"mesh": mesh} if mesh is not None else {}
    kw["allow_pickle"] = bool(getattr(args, "allow_pickle", False))
    return load_causal_lm(lm_path, dtype, **kw), load_reward_model(rm_path, dtype, **kw)


def _decode_config(args):
    """(DecodeConfig, run-config dict) from --config (YAML) or the bundled defaults."""
    from nabla_jax.app.bundled import bundled_decode_config
    from nabla_jax.app.config_io import ConfigError, load_run_config

    if getattr(args, "config", None):
        try:
            run = load_run_config(args.config)
        except (ConfigError, FileNotFoundError) as e:
            raise fail(str(e)) from e
        if run.get("compilation_cache") is False:
            from nabla_jax.runtime import compilation_cache

            compilation_cache.disable()
        return run["decode"], run
    return bundled_decode_config(), {}


def _setup_distributed(args, run: dict):
    """jax.distributed + mesh from the command line (or the run config / environment)."""
    from nabla_jax.runtime import distributed

    distributed.maybe_initialize(
        coordinator_address=args.coordinator_address,
        num_processes=args.num_processes,
        process_id=args.process_id,
    )
    spec = args.mesh or run.get("mesh")
    if spec:
        from nabla_jax.runtime.sharding import make_mesh

        try:
            args.mesh_obj = make_mesh(spec)
        except ValueError as e:
            raise fail(str(e)) from e
    else:
        args.mesh_obj = None


def cmd_demo(args) -> int:
    from nabla_jax.app.demo import run_demo

    if args.changed < 0:
        raise fail("--changed must be ≥ 0")
    return run_demo(
        args.num_problems,
        args.seed,
        show_text=args.show_text,
        changed=args.changed,
        max_length=args.max_length,
    )


def _task(args, run: dict):
    """The task of ``--task`` / the run config's ``task:`` (default: arithmetic)."""
    from nabla_jax.tasks import task_from_config

    try:
        return task_from_config(run, getattr(args, "task", None))
    except ValueError as e:
        raise fail(str(e)) from e


def _read_prompts(args, task) -> list[str]:
    """``--prompt`` or the prompts of a ``--prompts`` file read by ``task``, formatted by the
    task (the math task appends the config's instruction; arithmetic keeps them as given)."""
    if args.prompt is not None:
        if not args.prompt.strip():
            raise fail("--prompt is empty; give the text to decode")
        return [task.format_prompt(args.prompt)]
    if not os.path.exists(args.prompts):
        raise fail(f"--prompts file {args.prompts!r} does not exist")
    try:
        return [task.format_prompt(p) for p in task.load_problems(args.prompts)]
    except ValueError as e:
        raise fail(str(e)) from e


def _model_id(path: str | None) -> str:
    """A model as recorded in a results file's provenance: its absolute path, or "bundled"."""
    return os.path.abspath(path) if path else "bundled"


def cmd_decode(args) -> int:
    import jax

    from nabla_jax.decoding.nabla import NablaDecoder
    from nabla_jax.runtime import distributed

    cfg, run = _decode_config(args)
    task = _task(args, run)
    if args.output:
        if args.prompts and same_file(args.prompts, args.output):
            raise fail(
                f"--output {args.output!r} is the --prompts file; writing would overwrite the "
                "prompts — choose another output path"
            )
        check_output_path(args.output, "--output")
    prompts = _read_prompts(args, task)
    _setup_distributed(args, run)
    lm, rm = _load_models(args, run.get("models"))
    decoder = NablaDecoder(lm, rm, cfg)
    key = jax.random.key(args.seed)
    main = distributed.is_main_process()
    # Decode chunk by chunk and write each chunk's rows at once (flushed), so a kill loses at
    # most one chunk. A prompt's randomness depends on the key and the prompt only, so chunking
    # does not change any result.
    out = open(args.output, "w", encoding="utf-8") if (args.output and main) else None
    written = 0
    step = 4 * cfg.batch_size  # several batches per call keep the decoder's slots busy
    try:
        for start in range(0, len(prompts), step):
            chunk = prompts[start : start + step]
            results = distributed.generate_across_hosts(decoder, chunk, key, mesh=args.mesh_obj)
            if not main:
                continue
            for p, r in zip(chunk, results):
                row = {"prompt": p, "response": r.text, "stats": dict(r.stats)}
                if args.trace:
                    from nabla_jax.app.revisions import print_revisions, revision_events

                    row["revisions"] = [e.to_dict() for e in revision_events(r, lm.tokenizer)]
                if out is not None:
                    out.write(json.dumps(row) + "\n")
                elif args.trace:
                    print_revisions(r, lm.tokenizer, title=p)
                    print(f"{dict(r.stats)}\n", flush=True)
                else:
                    print(f"### {row['prompt']}\n{row['response']}\n{row['stats']}\n", flush=True)
                written += 1
            if out is not None:
                out.flush()
                os.fsync(out.fileno())
    finally:
        if out is not None:
            out.close()
    if out is not None:
        print(f"wrote {written} responses to {args.output}")
    return 0


def cmd_bench_accuracy(args) -> int:
    from nabla_jax.app import evaluation
    from nabla_jax.app.bundled import bundled_baseline_sampling

    try:
        methods = evaluation.parse_methods(args.methods)
    except ValueError as e:
        raise fail(str(e)) from e
    cfg, run = _decode_config(args)
    task = _task(args, run)
    sampling = run.get("baselines") if args.config else bundled_baseline_sampling()
    try:
        evaluation.check_baseline_sampling(methods, sampling or cfg.rollout)
    except ValueError as e:
        raise fail(str(e)) from e
    out = args.output
    stem = out[: -len(".jsonl")] if out.endswith(".jsonl") else out
    results_path = out if out.endswith(".jsonl") else out + ".jsonl"
    check_output_path(results_path, "--output", create_dir=True)
    problems = _bench_problems(args, task)
    can_plot = evaluation.plotting_available()
    if not can_plot:
        print(evaluation.NO_PLOT_MESSAGE, file=sys.stderr)
    provenance = evaluation.provenance(
        seed=args.seed, methods=methods, cfg=cfg, baseline_sampling=sampling,
        lm=_model_id(args.lm or (run.get("models") or {}).get("lm")),
        rm=_model_id(args.rm or (run.get("models") or {}).get("rm")),
        dtype=args.dtype or (run.get("models") or {}).get("dtype") or "float32",
        problems=[p.id for p in problems],
    )  # fmt: skip
    check_acceptance(args.acceptance, task, provenance)
    # Integrity and provenance of an existing results file, before any model loads.
    for note in evaluation.prepare_results_file(results_path, provenance):
        print(note, file=sys.stderr)
    _setup_distributed(args, run)
    lm, rm = _load_models(args, run.get("models"))
    evaluation.run_benchmark(
        lm, rm, problems, methods, cfg, seed=args.seed, results_path=results_path,
        batch_size=args.batch_size, progress=not args.no_progress, baseline_sampling=sampling,
        task=task, provenance=provenance, acceptance=args.acceptance,
    )  # fmt: skip
    summary = evaluation.summarize(results_path, methods)
    with open(stem + ".summary.json", "w") as f:
        json.dump(summary, f, indent=2)
    what = (
        f"{len(problems)} arithmetic test problems (seed {args.seed})"
        if args.problems is None
        else f"{len(problems)} {task.name} problems from {os.path.basename(args.problems)}"
    )
    print(evaluation.format_table(summary))
    print(f"results: {results_path}\nsummary: {stem}.summary.json")
    if can_plot:
        evaluation.plot_summary(summary, stem + ".png", what)
        print(f"plot: {stem}.png")
    else:
        print(evaluation.NO_PLOT_MESSAGE)
    return 0


def _add_cache_arg(p):
    p.add_argument(
        "--no-compilation-cache",
        action="store_true",
        help="do not read or write the persistent XLA compilation cache "
        "(default: on, in $NABLA_JAX_CACHE_DIR or ~/.cache/nabla-jax/xla)",
    )


def _bench_problems(args, task) -> list:
    """``--problems FILE`` read by the task (the first ``--num-problems`` if given), or fresh
    test problems of a task that can draw them (arithmetic: ``--num-problems``, default 200)."""
    if args.problems is not None:
        if not os.path.exists(args.problems):
            raise fail(f"--problems file {args.problems!r} does not exist")
        try:
            problems = task.load_problems(args.problems)
        except ValueError as e:
            raise fail(str(e)) from e
        missing = [p.id for p in problems if p.answer is None]
        if missing:
            raise fail(
                f"--problems file {args.problems!r}: {len(missing)} problem(s) have no 'answer' "
                f"(first: {missing[0]!r}); grading needs one for every problem"
            )
        return problems[: args.num_problems] if args.num_problems else problems
    if task.fresh_problems is None:
        raise fail(f"--task {task.name} needs --problems FILE (JSON/JSONL with answers)")
    return task.fresh_problems(args.num_problems or 200, args.seed)


def _add_model_args(p):
    _add_cache_arg(p)
    p.add_argument("--lm", help="causal-LM directory (default: the bundled LM)")
    p.add_argument("--rm", help="reward-model directory (default: the bundled RM)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="default float32")
    p.add_argument("--config", help="YAML run config (see configs/)")
    p.add_argument(
        "--task",
        choices=["arithmetic", "math"],
        help="problem kind: prompts, answer extraction, grading (default: the config's task: "
        "or arithmetic)",
    )
    p.add_argument("--mesh", help="device mesh, e.g. data=4,model=2")
    p.add_argument("--coordinator-address", help="jax.distributed coordinator host:port")
    p.add_argument("--num-processes", type=int, help="number of processes (hosts)")
    p.add_argument("--process-id", type=int, help="this process's id")
    p.add_argument(
        "--allow-pickle", action="store_true",
        help="load pytorch_model.bin weights (torch.load, weights_only) if no safetensors",
    )  # fmt: skip


def _add_debug(p, default=False):
    p.add_argument(
        "--debug", action="store_true", default=default,
        help="show the full traceback of an error instead of its one-line message",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nabla-jax", description="∇-Reasoner: test-time reasoning by gradient descent on text."
    )
    _add_debug(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="greedy vs ∇-Reasoner on bundled problems")
    demo.add_argument("--num-problems", type=int, default=4)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--show-text", action="store_true", help="print one full response")
    _add_cache_arg(demo)
    demo.add_argument(
        "--changed",
        type=int,
        default=2,
        help="also decode this many problems of the committed benchmark where ∇ changed "
        "greedy's grade (marked *, alternately fixed and broken; default 2)",
    )
    demo.add_argument(
        "--max-length", type=int,
        help="response tokens per problem (default: the bundled config's); small values are fast",
    )  # fmt: skip
    _add_debug(demo, argparse.SUPPRESS)
    demo.set_defaults(func=cmd_demo)

    dec = sub.add_parser("decode", help="decode prompts with ∇-Reasoner")
    _add_model_args(dec)
    src = dec.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="one prompt text")
    src.add_argument(
        "--prompts",
        help="JSON / JSONL problem file (arithmetic: objects with 'question'; math: "
        "'prompt' / 'problem' / 'question')",
    )
    dec.add_argument("--seed", type=int, default=0)
    dec.add_argument("--output", help="write responses as JSONL here")
    dec.add_argument(
        "--trace",
        action="store_true",
        help="record what ∇ changed: 'revisions' in the JSONL (old → new token text, RM "
        "scores, verdict), or a highlighted view in the terminal",
    )
    _add_debug(dec, argparse.SUPPRESS)
    dec.set_defaults(func=cmd_decode)

    bench = sub.add_parser("bench", help="benchmarks")
    bsub = bench.add_subparsers(dest="bench", required=True)
    acc = bsub.add_parser("accuracy", help="accuracy vs model calls of several methods")
    _add_model_args(acc)
    acc.add_argument("--methods", default="greedy,cot,bon:4,bon:8,sc:4,sc:8,nabla")
    acc.add_argument(
        "--num-problems",
        type=int,
        help="arithmetic: fresh test problems to draw (default 200); with --problems: the first N",
    )
    acc.add_argument("--problems", help="problem file with answers (JSON / JSONL), e.g. MATH-500")
    acc.add_argument("--seed", type=int, default=0)
    acc.add_argument("--batch-size", type=int, default=8)
    acc.add_argument("--output", default="results/accuracy.jsonl")
    acc.add_argument("--acceptance", choices=["rm", "oracle"], default="rm",
                     help="acceptance test and Best-of-N ranking: RM or task oracle")  # fmt: skip
    acc.add_argument("--no-progress", action="store_true")
    _add_debug(acc, argparse.SUPPRESS)
    acc.set_defaults(func=cmd_bench_accuracy)
    return parser


def _check_args(args) -> None:
    for name in ("num_problems", "batch_size", "max_length"):
        if getattr(args, name, None) is not None and getattr(args, name) < 1:
            raise fail(f"--{name.replace('_', '-')} must be ≥ 1")
    seed = getattr(args, "seed", 0)
    if not 0 <= seed <= MAX_SEED:
        raise fail(f"--seed {seed} is out of range; use an integer in [0, 2**63 - 1]")


def main(argv=None) -> int:
    """Run the command line. Every error ends as one line ``nabla-jax: error: …`` on stderr and
    exit code 2; ``--debug`` shows the traceback instead."""
    # transformers is used here for tokenizers only; its "PyTorch was not found" notice is noise.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = build_parser().parse_args(argv)
    from nabla_jax.runtime import compilation_cache

    off = getattr(args, "no_compilation_cache", False)
    compilation_cache.disable() if off else compilation_cache.use_default()
    try:
        _check_args(args)
        return args.func(args)
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as e:
        if args.debug:
            raise
        raise fail(f"{one_line(e)} (--debug shows the traceback)") from None


if __name__ == "__main__":
    sys.exit(main())
