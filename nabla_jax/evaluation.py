"""Accuracy versus model calls: every method on the same problems, resumable, summary and plot.

Results append to a JSONL file as each batch finishes (one line per method × problem); a rerun
skips what is already there. ``summarize`` turns the JSONL into ``{method: {accuracy,
mean_model_calls, wall_seconds, n}}`` and ``plot_summary`` draws accuracy against model calls.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence

import jax

from nabla_jax.decoding.config import DecodeConfig
from nabla_jax.decoding.nabla import NablaDecoder
from nabla_jax.decoding.sampling import SamplingConfig
from nabla_jax.tasks.registry import Task, get_task

ABLATIONS = {
    "nabla": {},
    "nabla-norej": {"rejection_sampling": False},
    "nabla-nodto": {"use_dto": False},
    "nabla-nocache": {"dto": {"grad_caching": False}},
}
DEFAULT_METHODS = ("greedy", "cot", "bon:4", "bon:8", "sc:4", "sc:8") + tuple(ABLATIONS)


def parse_methods(spec: str | Sequence[str]) -> list[str]:
    """``"greedy,bon:8,sc:8,nabla"`` → validated method names (clear error for unknown ones)."""
    names = [m.strip() for m in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [m for m in names if m]
    if not names:
        raise ValueError("no methods given; e.g. --methods greedy,bon:8,sc:8,nabla")
    for m in names:
        base, _, n = m.partition(":")
        if base in ("bon", "sc"):
            if not n.isdigit() or int(n) < 1:
                raise ValueError(f"method {m!r}: {base} needs a sample count, e.g. {base}:8")
        elif m not in ("greedy", "cot") and m not in ABLATIONS:
            raise ValueError(
                f"unknown method {m!r}; known: greedy, cot, bon:N, sc:N, " + ", ".join(ABLATIONS)
            )
    return names


def _stat(stats, name, default=0):
    if isinstance(stats, dict):
        return stats.get(name, default)
    return getattr(stats, name, default)


def _with_overrides(cfg: DecodeConfig, overrides: dict) -> DecodeConfig:
    kw = dict(overrides)
    if "dto" in kw:
        kw["dto"] = dataclasses.replace(cfg.dto, **kw["dto"])
    return dataclasses.replace(cfg, **kw)


def check_baseline_sampling(methods: Sequence[str], sampling: SamplingConfig) -> None:
    """Sampled baselines (``cot``, ``bon:N``, ``sc:N``) need a temperature above 0: greedy
    "samples" would all be the same answer. Raises ``ValueError`` naming the methods."""
    sampled = [m for m in methods if m == "cot" or m.partition(":")[0] in ("bon", "sc")]
    if sampled and sampling.temperature == 0:
        raise ValueError(
            f"methods {sampled} sample their answers, but the baseline sampling is greedy "
            "(temperature 0), so every sample would be the same; set a temperature > 0 (the run "
            "config's `baselines: {temperature: 0.6, top_p: 0.95}`)"
        )


def method_runner(
    method: str,
    lm,
    rm,
    cfg: DecodeConfig,
    sampling: SamplingConfig | None = None,
    task: Task | None = None,
) -> Callable:
    """``run(prompts: list[str], key) -> list[result]`` for one method, sharing ``cfg``'s settings
    (max_length, stop strings, system message) so that comparisons are fair. The sampled
    baselines draw with ``sampling`` (default: ``cfg.rollout``, the ∇-Reasoner rollout sampling);
    self-consistency votes on ``task.vote_key`` (default task: arithmetic)."""
    from nabla_jax.decoding import baselines

    task = get_task() if task is None else task

    sampling = cfg.rollout if sampling is None else sampling
    check_baseline_sampling([method], sampling)
    common = dict(max_length=cfg.max_length, stop_strings=cfg.stop_strings, system=cfg.system)
    base, _, n = method.partition(":")
    if method == "greedy":
        return lambda prompts, key: baselines.greedy_cot(lm, prompts, **common)
    if method == "cot":
        return lambda prompts, key: baselines.sampled_cot(
            lm, prompts, key, sampling=sampling, **common
        )
    if base == "bon":
        return lambda prompts, key: baselines.best_of_n(
            lm, rm, prompts, key, n=int(n), sampling=sampling, **common
        )
    if base == "sc":
        return lambda prompts, key: baselines.self_consistency(
            lm, prompts, key, n=int(n), sampling=sampling, answer_extractor=task.vote_key,
            **common,
        )  # fmt: skip
    decoder = NablaDecoder(lm, rm, _with_overrides(cfg, ABLATIONS[method]))
    return lambda prompts, key: decoder.generate(prompts, key)


def method_key(seed: int, method: str):
    """The ``jax.random`` key a benchmark run with ``seed`` gives ``method`` (so a problem's
    result can be decoded again exactly, e.g. by the demo)."""
    return jax.random.fold_in(jax.random.key(seed), sum(map(ord, method)))


def _done(path) -> set[tuple[str, str]]:
    done = set()
    if path and os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    row = json.loads(line)
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
) -> list[dict]:
    """Run every method on every problem; append one JSON line per result to ``results_path``.

    ``task`` (default: arithmetic) turns problems into prompts, extracts and grades answers.

    Problems already recorded for a method are skipped (resume). Each method's key is derived
    from ``seed`` and the method name, so reruns reproduce the same samples. The sampled
    baselines draw with ``baseline_sampling`` (default ``cfg.rollout``); a greedy one is an error
    raised before anything runs.
    """
    from tqdm.auto import tqdm

    task = get_task() if task is None else task
    check_baseline_sampling(
        methods, cfg.rollout if baseline_sampling is None else baseline_sampling
    )
    done = _done(results_path)
    os.makedirs(os.path.dirname(os.path.abspath(results_path)), exist_ok=True)
    rows = []
    for method in methods:
        todo = [p for p in problems if (method, p.id) not in done]
        if not todo:
            continue
        run = method_runner(method, lm, rm, cfg, baseline_sampling, task)
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
                    f.write(json.dumps(row) + "\n")
                    rows.append(row)
            bar.update(len(chunk))
        bar.close()
    return rows


def summarize(results_path: str, methods: Sequence[str] | None = None) -> dict:
    """``{method: {accuracy, mean_model_calls, wall_seconds, n}}`` from the JSONL results."""
    by: dict[str, list[dict]] = {}
    with open(results_path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
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
