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


def method_key(seed: int, method: str):
    """The ``jax.random`` key a benchmark run with ``seed`` gives ``method`` (so a problem's
    result can be decoded again exactly, e.g. by the demo)."""
    return jax.random.fold_in(jax.random.key(seed), sum(map(ord, method)))


PROVENANCE_KEY = "_provenance"


class ResultsFileError(ValueError):
    """A results file that cannot be resumed: a corrupt line, or rows of another run."""


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
        "dtype": str(dtype), "problems": list(problems),
    }, default=str))  # fmt: skip


def read_results(path: str) -> tuple[dict | None, list[dict]]:
    """(provenance header or None, result rows) of a results file; ``ResultsFileError`` naming
    the file and line for one that is not JSON."""
    header, rows = None, []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ResultsFileError(
                    f"{path}, line {n}: not valid JSON ({e.msg}); the results file is corrupt — "
                    "fix or delete that line, or choose another --output"
                ) from None
            if isinstance(row, dict) and PROVENANCE_KEY in row:
                header = row[PROVENANCE_KEY]
            else:
                rows.append(row)
    return header, rows


def _repair_torn_tail(path: str) -> str | None:
    """A last line without its newline was cut mid-write: complete it if it is whole JSON, else
    drop it (its result is recomputed). Returns a note saying what was done, or None."""
    with open(path, "rb") as f:
        data = f.read()
    if not data or data.endswith(b"\n"):
        return None
    start = data.rfind(b"\n") + 1
    line_no = data.count(b"\n") + 1
    try:
        json.loads(data[start:])
    except (json.JSONDecodeError, UnicodeDecodeError):
        with open(path, "r+b") as f:
            f.truncate(start)
        return (
            f"{path}: removed a torn last line (line {line_no}, {len(data) - start} bytes, cut "
            "mid-write); its result will be recomputed"
        )
    with open(path, "ab") as f:
        f.write(b"\n")
    return f"{path}: line {line_no} had no final newline; added it"


def prepare_results_file(path: str, prov: dict) -> list[str]:
    """Check an existing results file before a resume: repair a torn last line, refuse corrupt
    lines (naming file and line) and rows of a different run (a provenance mismatch names the
    differing settings). Returns notes for the user. A missing or empty file passes."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return []
    notes = [n for n in [_repair_torn_tail(path)] if n]
    header, rows = read_results(path)
    if header is None:
        if not rows:
            return notes
        raise ResultsFileError(
            f"{path} has results but no provenance record (written by an older version or "
            "another tool), so resuming cannot check they come from the same run; move it away "
            "or choose another --output"
        )
    diff = sorted(k for k in set(header) | set(prov) if header.get(k) != prov.get(k))
    if diff:
        shown = "; ".join(
            f"{k}: file {_short(header.get(k))} vs now {_short(prov.get(k))}" for k in diff
        )
        raise ResultsFileError(
            f"{path} holds results of a different run ({shown}); resuming would mix them — "
            "rerun with the same settings or choose another --output"
        )
    return notes


def _short(value, limit: int = 60) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _done(path) -> set[tuple[str, str]]:
    done = set()
    if path and os.path.exists(path):
        for row in read_results(path)[1]:
            done.add((row["method"], row["problem_id"]))
    return done


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
) -> list[dict]:
    """Run every method on every problem; append one JSON line per result to ``results_path``.

    ``task`` (default: arithmetic) turns problems into prompts, extracts and grades answers.
    ``acceptance="oracle"`` replaces the reward model in ∇-Reasoner's acceptance test and in
    Best-of-N's ranking by the task's exact scorer (:class:`~nabla_jax.tasks.oracle.OracleScorer`);
    DTO still follows the reward model. Rows then carry ``"acceptance": "oracle"``.

    Problems already recorded for a method are skipped (resume). With ``provenance`` (see
    :func:`provenance`), an existing file is checked first (``prepare_results_file``) and a new
    one starts with the provenance record. Each batch's rows are flushed to disk when written.
    Each method's key is derived from ``seed`` and the method name, so reruns reproduce the same
    samples. The sampled
    baselines draw with ``baseline_sampling`` (default ``cfg.rollout``); a greedy one is an error
    raised before anything runs.
    """
    from tqdm.auto import tqdm

    task = get_task() if task is None else task
    if acceptance not in ACCEPTANCE:
        raise ValueError(f"acceptance={acceptance!r}: must be one of {ACCEPTANCE}")
    scorer = None
    if acceptance == "oracle":
        from nabla_jax.tasks.oracle import OracleScorer

        scorer = OracleScorer(task, problems, lm, rm, system=cfg.system)
    check_baseline_sampling(
        methods, cfg.rollout if baseline_sampling is None else baseline_sampling
    )
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods {list(methods)} name a method twice; list each method once")
    os.makedirs(os.path.dirname(os.path.abspath(results_path)), exist_ok=True)
    if provenance is not None:
        for note in prepare_results_file(results_path, provenance):
            print(note)
        if not os.path.exists(results_path) or os.path.getsize(results_path) == 0:
            with open(results_path, "w", encoding="utf-8") as f:
                f.write(json.dumps({PROVENANCE_KEY: provenance}) + "\n")
    done = _done(results_path)
    rows = []
    for method in methods:
        todo = [p for p in problems if (method, p.id) not in done]
        if not todo:
            continue
        run = registry.method_runner(
            method, lm, rm, cfg, baseline_sampling, answer_extractor=task.vote_key, scorer=scorer,
            step_delimiter=task.step_delimiter,
        )  # fmt: skip
        key = method_key(seed, method)
        bar = tqdm(total=len(todo), desc=method, disable=not progress, unit="problem")
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            t0 = time.perf_counter()
            results = run([task.format_prompt(p) for p in chunk], key)
            wall = time.perf_counter() - t0
            with open(results_path, "a") as f:
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
                    f.write(json.dumps(row) + "\n")
                    rows.append(row)
                f.flush()
                os.fsync(f.fileno())
            bar.update(len(chunk))
        bar.close()
    return rows


def summarize(results_path: str, methods: Sequence[str] | None = None) -> dict:
    """``{method: {accuracy, mean_model_calls, wall_seconds, n}}`` from the JSONL results."""
    by: dict[str, list[dict]] = {}
    for row in read_results(results_path)[1]:
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
    fig.savefig(path, dpi=120)
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
