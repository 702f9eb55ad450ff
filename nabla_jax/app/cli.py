"""The ``nabla-jax`` command: ``demo``, ``decode``, ``bench accuracy``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from nabla_jax.app.cli_checks import MAX_SEED, check_acceptance, check_output_path, fail, one_line
from nabla_jax.app.cli_setup import (
    decode_config,
    load_models,
    model_id,
    model_settings,
    rm_steps_of,
    rm_vocab_of,
    search_options_of,
    setup_distributed,
    task_of,
)
from nabla_jax.app.outputs import (
    OutputError,
    OutputLock,
    Progress,
    check_not_input,
    check_writable,
    write_atomic,
)

__all__ = ["build_parser", "cmd_bench_accuracy", "cmd_decode", "cmd_demo", "main"]


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


def cmd_decode(args) -> int:
    from nabla_jax.app.decode_cmd import run_decode

    return run_decode(args)


def cmd_bench_accuracy(args) -> int:
    from nabla_jax.app import evaluation
    from nabla_jax.app.bundled import bundled_baseline_sampling

    try:
        methods = evaluation.parse_methods(args.methods)
    except ValueError as e:
        raise fail(str(e)) from e
    cfg, run = decode_config(args)
    task = task_of(args, run)
    sampling = run.get("baselines") if args.config else bundled_baseline_sampling()
    search = search_options_of(args, run)
    try:
        evaluation.check_baseline_sampling(methods, sampling or cfg.rollout)
    except ValueError as e:
        raise fail(str(e)) from e
    out = args.output
    stem = out[: -len(".jsonl")] if out.endswith(".jsonl") else out
    results_path = out if out.endswith(".jsonl") else out + ".jsonl"
    summary_path, plot_path = stem + ".summary.json", stem + ".png"
    check_output_path(results_path, "--output", create_dir=True)
    inputs = {"--config": args.config, "--problems": args.problems, "--lm": args.lm,
              "--rm": args.rm}  # fmt: skip
    try:
        for path in (results_path, summary_path, plot_path):
            check_not_input(path, inputs)
            check_writable(path)
    except OutputError as e:
        raise fail(str(e)) from None
    problems = _bench_problems(args, task)
    can_plot = evaluation.plotting_available()
    if not can_plot:
        print(evaluation.NO_PLOT_MESSAGE, file=sys.stderr)
    lm_path, rm_path, dtype = model_settings(args, run)
    provenance = evaluation.provenance(
        seed=args.seed, methods=methods, cfg=cfg, baseline_sampling=sampling,
        lm=model_id(lm_path), rm=model_id(rm_path), dtype=dtype,
        problems=[p.id for p in problems],
    )  # fmt: skip
    check_acceptance(args.acceptance, task, provenance)
    if rm_vocab_of(args, run) is not None:  # recorded when set (older files stay comparable)
        provenance["rm_vocab"] = rm_vocab_of(args, run)
    if rm_steps_of(run) is not None:  # likewise
        provenance["rm_steps"] = rm_steps_of(run)
    if not search.is_default():  # likewise
        provenance["search"] = dataclasses.asdict(search)
    setup_distributed(args, run)
    from nabla_jax.runtime.distributed import is_main_process

    # One writer per results file: held from the resume check to the plot.
    lock = OutputLock(results_path) if is_main_process() else None
    tracker = args.progress_tracker = Progress()
    try:
        if lock is not None:
            lock.acquire()
        # Integrity and provenance of an existing results file, before any model loads.
        for note in evaluation.prepare_results_file(results_path, provenance):
            print(note, file=sys.stderr)
        lm, rm = load_models(args, run, step_delimiter=task.step_delimiter)
        evaluation.run_benchmark(
            lm, rm, problems, methods, cfg, seed=args.seed, results_path=results_path,
            batch_size=args.batch_size, progress=not args.no_progress, baseline_sampling=sampling,
            task=task, provenance=provenance, acceptance=args.acceptance, tracker=tracker,
            rm_vocab=rm_vocab_of(args, run), oracle_diagnostics=args.oracle_diagnostics,
            search=search,
        )  # fmt: skip
        summary = evaluation.summarize(results_path, methods)
        write_atomic(summary_path, json.dumps(summary, indent=2))
        what = (
            f"{len(problems)} arithmetic test problems (seed {args.seed})"
            if args.problems is None
            else f"{len(problems)} {task.name} problems from {os.path.basename(args.problems)}"
        )
        print(evaluation.format_table(summary))
        print(f"results: {results_path}\nsummary: {summary_path}")
        if can_plot:
            evaluation.plot_summary(summary, plot_path, what)
            print(f"plot: {plot_path}")
        else:
            print(evaluation.NO_PLOT_MESSAGE)
    except (evaluation.ResultsFileError, OutputError) as e:
        raise fail(str(e)) from None
    finally:
        if lock is not None:
            lock.release()
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
    p.add_argument(
        "--rm-vocab", choices=["shared", "by_string"],
        help="how the RM reads LM token ids: shared (as they are) or by_string (an LM-id -> "
        "RM-id table by token string, for an RM whose vocabulary adds tokens or pads rows); "
        "default: the config's models.rm_vocab, else the one that applies",
    )  # fmt: skip
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
        "--coordinator-timeout", type=float, metavar="SECONDS",
        help="how long a process waits for the coordinator (default: the config's "
        "coordinator_timeout, $NABLA_COORDINATOR_TIMEOUT, or 120)",
    )  # fmt: skip
    p.add_argument(
        "--allow-pickle", action="store_true",
        help="load pytorch_model.bin weights (torch.load, weights_only) if no safetensors",
    )  # fmt: skip


def _add_search_args(p):
    g = p.add_argument_group(
        "tree searches", "settings of mcts:BxD and beam:NxM beyond their counts (default: the "
        "config's search:, else the functions' defaults)",
    )  # fmt: skip
    g.add_argument("--mcts-simulations", type=int, metavar="N",
                   help="MCTS rounds (default D: B*D evaluated children)")  # fmt: skip
    g.add_argument("--uct-c", type=float, metavar="C", help="UCT exploration constant (1.0)")
    g.add_argument("--mcts-answer", choices=["best", "visits"],
                   help="the best-scored rollout (default) or the most-visited path's")  # fmt: skip
    g.add_argument("--mcts-value", choices=["rollout", "partial"],
                   help="a child's value: a completed rollout's score (default) or its partial "
                   "response's, read at the step's end")  # fmt: skip
    g.add_argument("--beam-max-depth", type=int, metavar="N",
                   help="most steps of beam search (default: up to the length limit)")  # fmt: skip


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
    dec.add_argument(
        "--method", default="nabla",
        help="the decoding method (default nabla): a ∇ variant, or a baseline such as greedy, "
        "bon:8, wbon:8, beam:4x4, mcts:4x5 (see `bench accuracy --methods`)",
    )  # fmt: skip
    dec.add_argument("--seed", type=int, default=0)
    dec.add_argument("--output", help="write responses as JSONL here")
    dec.add_argument(
        "--trace",
        action="store_true",
        help="record what ∇ changed: 'revisions' in the JSONL (old → new token text, RM "
        "scores, verdict), or a highlighted view in the terminal",
    )
    _add_search_args(dec)
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
    acc.add_argument(
        "--oracle-diagnostics", action="store_true",
        help="∇ rows record the right next token's probability before and after DTO, from "
        "the problems' reference solutions (the summary's dto entry; a host call per "
        "iteration, included in wall times)",
    )  # fmt: skip
    acc.add_argument("--no-progress", action="store_true")
    _add_search_args(acc)
    _add_debug(acc, argparse.SUPPRESS)
    acc.set_defaults(func=cmd_bench_accuracy)
    return parser


def _check_args(args) -> None:
    for name in ("num_problems", "batch_size", "max_length"):
        if getattr(args, name, None) is not None and getattr(args, name) < 1:
            raise fail(f"--{name.replace('_', '-')} must be ≥ 1")
    timeout = getattr(args, "coordinator_timeout", None)
    if timeout is not None and not timeout > 0:
        raise fail(f"--coordinator-timeout {timeout} must be a number of seconds > 0")
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
    except SystemExit:
        raise
    except KeyboardInterrupt:
        if args.debug:
            raise
        tracker = getattr(args, "progress_tracker", None)
        line = tracker.interrupted_message() if tracker is not None else "interrupted"
        print(f"nabla-jax: {line}", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        raise fail(f"{one_line(e)} (--debug shows the traceback)") from None


if __name__ == "__main__":
    sys.exit(main())
