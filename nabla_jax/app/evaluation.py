"""Accuracy versus model calls: every method on the same problems, resumable, summary and plot.

Results append to a JSONL file row by row, flushed to disk after each batch (one line per method ×
problem); a rerun skips what is already there. The file's first line records the run's provenance
(seed, methods, decode config, baseline sampling, models, problems); resuming into a file from a
different run is refused, and a torn last line (a process killed mid-write) is repaired.
``summarize`` turns the JSONL into ``{method: {accuracy, mean_model_calls, wall_seconds, n}}``
and ``plot_summary`` draws accuracy against model calls.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence

import jax

from nabla_jax.app.gradient_report import method_diagnostics, row_diagnostics
from nabla_jax.app.outputs import RowWriter, atomic_path, write_atomic
from nabla_jax.app.results_file import (
    PROVENANCE_KEY,
    ResultsFileError,
    bench_row_key,
    dedupe,
    prepare_results_file,
    read_results,
)
from nabla_jax.decoding import registry
from nabla_jax.decoding.config import DecodeConfig
from nabla_jax.decoding.registry import check_baseline_sampling, parse_methods
from nabla_jax.decoding.sampling import SamplingConfig
from nabla_jax.tasks.registry import Task, get_task

__all__ = [
    "NO_PLOT_MESSAGE",
    "PROVENANCE_KEY",
    "ResultsFileError",
    "check_baseline_sampling",
    "format_table",
    "method_key",
    "parse_methods",
    "plot_summary",
    "plotting_available",
    "prepare_results_file",
    "provenance",
    "read_results",
    "run_benchmark",
    "summarize",
]

ACCEPTANCE = ("rm", "oracle")


def _stat(stats, name, default=0):
    if isinstance(stats, dict):
        return stats.get(name, default)
    return getattr(stats, name, default)


#: How :func:`method_key` assigns random streams (recorded in a results file's provenance, so
#: a file written under another assignment is not resumed into this one).
RANDOM_STREAMS = "nabla ablations share nabla's key"


def method_key(seed: int, method: str):
    """The ``jax.random`` key a benchmark run with ``seed`` gives ``method`` (so a problem's
    result can be decoded again exactly, e.g. by the demo).

    ∇-Reasoner's ablations (``nabla-nodto``, ``nabla-norej``, ``nabla-nocache``) get ∇'s own
    key: each draws the same random numbers as ∇ (common random numbers), so a difference
    between them is the ablated part, not another draw."""
    stream = "nabla" if method in registry.NABLA_VARIANTS else method
    return jax.random.fold_in(jax.random.key(seed), sum(map(ord, stream)))


def provenance(
    *, seed: int, methods: Sequence[str], cfg: DecodeConfig, baseline_sampling=None,
    lm: str, rm: str, dtype: str, problems: Sequence[str],
) -> dict:  # fmt: skip
    """What makes a results file's rows comparable: recorded in its first line and checked on
    resume. ``problems`` are the problem ids; ``lm``/``rm`` the model paths (or "bundled")."""
    sampling = baseline_sampling if baseline_sampling is not None else cfg.rollout
    return json.loads(json.dumps({
        "seed": int(seed), "methods": list(methods), "decode": dataclasses.asdict(cfg),
        "baseline_sampling": dataclasses.asdict(sampling), "lm": str(lm), "rm": str(rm),
        "dtype": str(dtype), "problems": list(problems), "random_streams": RANDOM_STREAMS,
    }, default=str))  # fmt: skip


def _done(path) -> set[tuple[str, str]]:
    if path and os.path.exists(path):
        return {bench_row_key(row) for row in read_results(path)[1]}
    return set()


def run_benchmark(
    lm,
    rm,
    problems,
    methods: Sequence[str],
    cfg: DecodeConfig,
    *,
    seed: int,
    results_path: str,
    batch_size: int = 8,
    progress: bool = True,
    baseline_sampling: SamplingConfig | None = None,
    task: Task | None = None,
    provenance: dict | None = None,
    acceptance: str = "rm",
    tracker=None,
    rm_vocab: str | None = None,
    oracle_diagnostics: bool = False,
    search=None,
) -> list[dict]:
    """Run every method on every problem; append one JSON line per result to ``results_path``.

    ``task`` (default: arithmetic) turns problems into prompts, extracts and grades answers.
    ``acceptance="oracle"`` replaces the reward model in ∇-Reasoner's acceptance test and in
    Best-of-N's ranking by the task's exact scorer (:class:`~nabla_jax.tasks.oracle.OracleScorer`);
    DTO still follows the reward model. Rows then carry ``"acceptance": "oracle"``.
    ``rm_vocab``: how the RM reads LM ids (``nabla_jax.decoding.pair``; None = the default).
    ``oracle_diagnostics``: ∇-Reasoner rows record the right next token's probability before
    and after DTO, from the problems' reference solutions (a host call per iteration, so wall
    times include it). ``search``: the tree searches' settings
    (:class:`~nabla_jax.decoding.search_options.SearchOptions`; None = their defaults).

    Problems already recorded for a method are skipped (resume). ``tracker`` (an
    :class:`~nabla_jax.app.outputs.Progress`) counts the rows in the file as they are written.
    With ``provenance`` (see :func:`provenance`), an existing file is checked first
    (``prepare_results_file``: resume, extension, de-duplication) and a new one starts with the
    provenance record. Each row is flushed when written, each batch synced to disk. Each
    method's key is derived from ``seed`` and the method name, so reruns reproduce the same
    samples. The sampled baselines draw with ``baseline_sampling`` (default ``cfg.rollout``); a
    greedy one is an error raised before anything runs.
    """
    from tqdm.auto import tqdm

    task = get_task() if task is None else task
    if acceptance not in ACCEPTANCE:
        raise ValueError(f"acceptance={acceptance!r}: must be one of {ACCEPTANCE}")
    scorer = None
    if acceptance == "oracle":
        from nabla_jax.tasks.oracle import OracleScorer

        scorer = OracleScorer(task, problems, lm, rm, system=cfg.system, rm_vocab=rm_vocab)
    check_baseline_sampling(
        methods, cfg.rollout if baseline_sampling is None else baseline_sampling
    )
    next_token = None
    if oracle_diagnostics:
        from nabla_jax.tasks.oracle import ReferenceNextToken

        next_token = ReferenceNextToken(task, problems, lm.tokenizer, system=cfg.system)
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods {list(methods)} name a method twice; list each method once")
    os.makedirs(os.path.dirname(os.path.abspath(results_path)), exist_ok=True)
    if provenance is not None:
        for note in prepare_results_file(results_path, provenance):
            print(note)
        if not os.path.exists(results_path) or os.path.getsize(results_path) == 0:
            write_atomic(results_path, json.dumps({PROVENANCE_KEY: provenance}) + "\n")
    done = _done(results_path)
    if tracker is not None:
        keys = {(m, p.id) for m in methods for p in problems}
        tracker.start(results_path, total=len(keys), done=len(keys & done))
    rows = []
    writer = RowWriter(results_path, tracker)
    try:
        for method in methods:
            todo = [p for p in problems if (method, p.id) not in done]
            if not todo:
                continue
            run = registry.method_runner(
                method, lm, rm, cfg, baseline_sampling, answer_extractor=task.vote_key,
                scorer=scorer, rm_vocab=rm_vocab, step_delimiter=task.step_delimiter,
                next_token_oracle=next_token, search=search,
            )  # fmt: skip
            key = method_key(seed, method)
            bar = tqdm(total=len(todo), desc=method, disable=not progress, unit="problem")
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                t0 = time.perf_counter()
                results = run([task.format_prompt(p) for p in chunk], key)
                wall = time.perf_counter() - t0
                for p, r in zip(chunk, results):
                    row = {
                        "method": method,
                        "problem_id": p.id,
                        "answer": p.answer,
                        "predicted": task.extract_answer(r.text),
                        "correct": bool(task.grade(r.text, p.answer)),
                        "model_calls": int(_stat(r.stats, "model_calls")),
                        "generations": int(_stat(r.stats, "generations", 1)),
                        "wall_seconds": wall / len(chunk),
                        "text": r.text,
                    }
                    if "flops" in r.stats:  # model-call FLOPs (decoding.flops), where counted
                        row["flops"] = int(r.stats["flops"])
                    if scorer is not None:
                        row["acceptance"] = acceptance
                    dto = row_diagnostics(r.trace or ())
                    if dto is not None:  # what DTO did at this problem's refinements
                        row["dto"] = dto
                    writer.write(row)
                    rows.append(row)
                writer.sync()
                bar.update(len(chunk))
            bar.close()
    finally:
        writer.close()
    return rows


def summarize(results_path: str, methods: Sequence[str] | None = None) -> dict:
    """``{method: {accuracy, mean_model_calls, wall_seconds, n[, dto]}}`` from the JSONL
    results; ``dto`` (∇-Reasoner methods): what DTO did, as means over refinements
    (:mod:`nabla_jax.app.gradient_report`)."""
    by: dict[str, list[dict]] = {}
    for row in dedupe(read_results(results_path)[1]):
        by.setdefault(row["method"], []).append(row)
    order = list(methods) if methods else list(by)
    out = {}
    for m in order:
        rows = by.get(m, [])
        if not rows:
            continue
        n = len(rows)
        out[m] = {
            "accuracy": sum(r["correct"] for r in rows) / n,
            "mean_model_calls": sum(r["model_calls"] for r in rows) / n,
            "wall_seconds": sum(r["wall_seconds"] for r in rows),
            "n": n,
        }
        dto = method_diagnostics(rows)
        if dto is not None:
            out[m]["dto"] = dto
    return out


NO_PLOT_MESSAGE = (
    "nabla-jax: plot skipped: matplotlib is not importable (it is a dependency of nabla-jax; "
    "`pip install matplotlib` restores it); the results and summary are written as usual"
)


def plotting_available() -> bool:
    """Whether ``matplotlib`` imports (a dependency, so normally yes; a broken environment then
    skips the plot with :data:`NO_PLOT_MESSAGE` instead of failing after the benchmark)."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def plot_summary(summary: dict, path: str, title: str = "") -> None:
    """Accuracy (%) against mean model calls per problem, one labelled point per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for m, s in summary.items():
        color = (
            "tab:red" if m == "nabla" else ("tab:orange" if m.startswith("nabla") else "tab:blue")
        )
        ax.scatter(s["mean_model_calls"], 100 * s["accuracy"], color=color, zorder=3)
        ax.annotate(m, (s["mean_model_calls"], 100 * s["accuracy"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=9)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("mean model calls per problem (log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fmt = os.path.splitext(path)[1].lstrip(".") or "png"
    try:
        with atomic_path(path) as tmp:  # a kill or a full disk never leaves half a plot
            fig.savefig(tmp, dpi=120, format=fmt)
    finally:
        plt.close(fig)


def format_table(summary: dict) -> str:
    """Markdown table of a summary."""
    lines = ["| method | accuracy | mean model calls | wall seconds | n |", "|---|---|---|---|---|"]
    for m, s in summary.items():
        lines.append(
            f"| {m} | {100 * s['accuracy']:.1f}% | {s['mean_model_calls']:.1f} | "
            f"{s['wall_seconds']:.1f} | {s['n']} |"
        )
    return "\n".join(lines)
