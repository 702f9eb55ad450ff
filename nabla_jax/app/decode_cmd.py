"""``nabla-jax decode``: prompts → responses of ∇-Reasoner (or of ``--method``: a ∇ variant or
a baseline such as ``mcts:4x5``), printed or written to a resumable JSONL.

With ``--output`` the file's first line is a provenance record (``kind: decode``, the prompts'
count and hash, the decode settings, seed, models, task); every other line is one prompt's row
``{"id", "prompt", "response", "stats"}``. A rerun of the same command resumes after the rows
already there (matched by prompt id); a file that is not this run's output is refused before any
model loads. The output is locked while a run writes it
(:class:`~nabla_jax.app.outputs.OutputLock`). Every prompt is rendered and measured before the
first model call; an error names its file line and id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys

from nabla_jax.app.cli_checks import check_output_path, fail
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
    RowWriter,
    check_not_input,
    check_writable,
    write_atomic,
)
from nabla_jax.app.results_file import PROVENANCE_KEY, ResultsFileError, prepare_results_file
from nabla_jax.decoding.config import DecodeConfig
from nabla_jax.decoding.sampling import SamplingConfig
from nabla_jax.decoding.search_options import SearchOptions

__all__ = [
    "DecodeMethod",
    "PromptItem",
    "decode_method",
    "decode_provenance",
    "read_prompt_items",
    "run_decode",
]


@dataclasses.dataclass(frozen=True)
class PromptItem:
    """One prompt to decode: ``id`` (the problem's id, or "prompt" for ``--prompt``), ``label``
    (where it came from, for errors), ``text`` (the user message, formatted by the task)."""

    id: str
    label: str
    text: str


@dataclasses.dataclass(frozen=True)
class DecodeMethod:
    """What ``--method`` decodes with: ``spec`` (as given), ``nabla`` (a ∇ variant, run by the
    decoder with ``cfg``: the run's config with the variant's overrides), the baselines'
    ``sampling`` and the tree searches' ``search`` options."""

    spec: str
    nabla: bool
    cfg: DecodeConfig
    sampling: SamplingConfig | None
    search: SearchOptions

    def provenance(self) -> dict:
        """What the method adds to a results file's provenance (nothing for plain ``nabla``, so
        files written before ``--method`` stay comparable)."""
        if self.spec == "nabla":
            return {}
        out: dict = {"method": self.spec}
        if not self.nabla:
            out["baseline_sampling"] = dataclasses.asdict(self.sampling)
            if not self.search.is_default():
                out["search"] = dataclasses.asdict(self.search)
        return out


def decode_method(args, cfg, run: dict) -> DecodeMethod:
    """``--method`` checked against the other flags, before any model loads."""
    from nabla_jax.app.bundled import bundled_baseline_sampling
    from nabla_jax.decoding import registry

    spec = getattr(args, "method", None) or "nabla"
    try:
        name, _ = registry.parse_method(spec)
    except ValueError as e:
        raise fail(str(e)) from None
    search = search_options_of(args, run)
    if name in registry.NABLA_VARIANTS:
        variant = registry.with_overrides(cfg, registry.NABLA_VARIANTS[name])
        return DecodeMethod(spec, True, variant, None, search)
    if args.trace:
        raise fail(
            f"--trace records what ∇-Reasoner revised; --method {spec} revises nothing "
            "(drop --trace, or use a ∇ variant)"
        )
    if args.mesh or run.get("mesh") or (args.num_processes or 1) > 1:
        raise fail(
            f"--method {spec} runs in one process on one device; only the ∇ variants shard "
            "over a --mesh or several processes (drop --mesh / --num-processes)"
        )
    sampling = (run.get("baselines") if args.config else bundled_baseline_sampling()) or cfg.rollout
    try:
        registry.check_baseline_sampling([spec], sampling)
    except ValueError as e:
        raise fail(str(e)) from None
    return DecodeMethod(spec, False, cfg, sampling, search)


def read_prompt_items(args, task) -> list[PromptItem]:
    """``--prompt`` or the problems of a ``--prompts`` file read by ``task``."""
    if args.prompt is not None:
        if not args.prompt.strip():
            raise fail("--prompt is empty; give the text to decode")
        return [PromptItem("prompt", "--prompt", task.format_prompt(args.prompt))]
    if not os.path.exists(args.prompts):
        raise fail(f"--prompts file {args.prompts!r} does not exist")
    try:
        problems = task.load_problems(args.prompts)
    except ValueError as e:
        raise fail(str(e)) from e
    return [
        PromptItem(str(p.id), f"{p.where or args.prompts} (id {p.id!r})", task.format_prompt(p))
        for p in problems
    ]


def decode_provenance(args, cfg, run: dict, task, items: list[PromptItem],
                      method: DecodeMethod | None = None) -> dict:  # fmt: skip
    """What makes a decode output's rows this run's rows (recorded in its first line)."""
    lm, rm, dtype = model_settings(args, run)
    blob = json.dumps([[it.id, it.text] for it in items], ensure_ascii=False).encode("utf-8")
    return json.loads(json.dumps({
        "kind": "decode", "prompts": {"count": len(items),
                                      "sha256": hashlib.sha256(blob).hexdigest()},
        "seed": int(args.seed), "decode": dataclasses.asdict(cfg), "lm": model_id(lm),
        "rm": model_id(rm), "dtype": dtype, "task": task.name, "instruction": task.instruction,
        "trace": bool(args.trace), **(method.provenance() if method is not None else {}),
        **({"rm_steps": rm_steps_of(run)} if rm_steps_of(run) is not None else {}),
    }, default=str))  # fmt: skip


def _done_ids(path: str) -> set[str]:
    from nabla_jax.app.results_file import read_results

    if not os.path.exists(path):
        return set()
    return {str(r.get("id")) for r in read_results(path)[1]}


def _check_output(args) -> None:
    inputs = {"--config": args.config, "--prompts": args.prompts, "--lm": args.lm, "--rm": args.rm}
    try:
        check_not_input(args.output, inputs)
        check_output_path(args.output, "--output")
        check_writable(args.output)
    except OutputError as e:
        raise fail(str(e)) from None


def run_decode(args) -> int:
    """The ``decode`` command (see the module docstring)."""
    import jax

    from nabla_jax.decoding.nabla import NablaDecoder
    from nabla_jax.runtime import distributed

    cfg, run = decode_config(args)
    task = task_of(args, run)
    method = decode_method(args, cfg, run)
    cfg = method.cfg
    items = read_prompt_items(args, task)
    if args.output:
        _check_output(args)
    setup_distributed(args, run)
    main = distributed.is_main_process()
    out = args.output if main else None
    lock = OutputLock(out) if out else None
    tracker = args.progress_tracker = Progress()
    try:
        if lock is not None:
            lock.acquire()
        done: set[str] = set()
        if out is not None:
            prov = decode_provenance(args, cfg, run, task, items, method)
            notes = prepare_results_file(out, prov, key=lambda r: r.get("id"), extendable=None)
            for note in notes:
                print(note, file=sys.stderr)
            done = _done_ids(out)
        if args.output and jax.process_count() > 1:  # every process skips the same prompts
            done = set(distributed.allgather_json(sorted(done))[0])
        todo = [it for it in items if it.id not in done]
        lm, rm = load_models(args, run, step_delimiter=task.step_delimiter)
        decoder = NablaDecoder(lm, rm, cfg, rm_vocab=rm_vocab_of(args, run))
        # Every method renders prompts as the decoder does and shares its length limit.
        try:  # all prompts, before the first model call
            decoder.check_prompts([it.text for it in items], [it.label for it in items])
        except ValueError as e:
            raise fail(str(e)) from e
        if out is not None:
            if not os.path.exists(out) or os.path.getsize(out) == 0:
                write_atomic(out, json.dumps({PROVENANCE_KEY: prov}) + "\n")
            tracker.start(out, total=len(items), done=len(items) - len(todo))
        if method.nabla:

            def decode_fn(texts, key):
                return distributed.generate_across_hosts(decoder, texts, key, mesh=args.mesh_obj)
        else:
            from nabla_jax.decoding import registry

            decode_fn = registry.method_runner(
                method.spec, lm, rm, cfg, method.sampling, answer_extractor=task.vote_key,
                rm_vocab=rm_vocab_of(args, run), step_delimiter=task.step_delimiter,
                search=method.search,
            )  # fmt: skip
        written = _decode(args, decode_fn, 4 * cfg.batch_size, lm, todo, out, tracker, main)
    except (ResultsFileError, OutputError) as e:
        raise fail(str(e)) from None
    finally:
        if lock is not None:
            lock.release()
    if out is not None:
        resumed = f" ({len(items) - len(todo)} already there)" if len(todo) < len(items) else ""
        print(f"wrote {written} responses to {out}{resumed}")
    return 0


def _decode(args, decode_fn, step: int, lm, todo: list[PromptItem], out, tracker, main) -> int:
    """Decode ``todo`` ``step`` prompts at a time with ``decode_fn(texts, key)``; rows go to ``out``
    (synced after each chunk, so a kill loses at most one chunk) or to the terminal. A prompt's
    randomness depends on the key and the prompt only, so chunking and resuming do not change
    any result. (``step`` is several batches: a call keeps the decoder's slots busy.)"""
    import jax

    key = jax.random.key(args.seed)
    writer = RowWriter(out, tracker) if out is not None else None
    try:
        for start in range(0, len(todo), step):
            chunk = todo[start : start + step]
            texts = [it.text for it in chunk]
            results = decode_fn(texts, key)
            if not main:
                continue
            for it, r in zip(chunk, results):
                row = {"id": it.id, "prompt": it.text, "response": r.text, "stats": dict(r.stats)}
                if args.trace:
                    from nabla_jax.app.revisions import print_revisions, revision_events

                    row["revisions"] = [e.to_dict() for e in revision_events(r, lm.tokenizer)]
                if writer is not None:
                    writer.write(row)
                elif args.trace:
                    print_revisions(r, lm.tokenizer, title=it.text)
                    print(f"{dict(r.stats)}\n", flush=True)
                else:
                    print(f"### {row['prompt']}\n{row['response']}\n{row['stats']}\n", flush=True)
            if writer is not None:
                writer.sync()
    finally:
        if writer is not None:
            writer.close()
    return writer.count if writer is not None else len(todo)
