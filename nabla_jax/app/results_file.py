"""A JSONL results file with a provenance first line: read it, check it, resume it.

The first line ``{"_provenance": {...}}`` records what makes the rows comparable (settings,
models, inputs). Before a run appends to an existing file, :func:`prepare_results_file`

* repairs a torn last line (a process killed mid-write): completes a whole JSON row, drops a
  partial one;
* refuses a line that is not JSON, a file without a provenance record, a file of another
  command (``kind``), and rows of a different run — naming every setting that differs;
* accepts a run that *extends* the recorded one (``problems`` recorded is a prefix of the new
  list, all else equal) and records the longer list;
* removes duplicate rows (the same row key twice), keeping the first.

Rewrites go through a temporary file and ``os.replace`` (:mod:`nabla_jax.app.outputs`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from nabla_jax.app.outputs import write_atomic

__all__ = [
    "PROVENANCE_KEY",
    "ResultsFileError",
    "bench_row_key",
    "dedupe",
    "prepare_results_file",
    "read_results",
    "runs_in_directory",
]

PROVENANCE_KEY = "_provenance"

#: The command a provenance without ``kind`` belongs to (bench files predate the key).
DEFAULT_KIND = "bench accuracy"


class ResultsFileError(ValueError):
    """A results file that cannot be resumed: a corrupt line, or rows of another run."""


def bench_row_key(row: dict):
    """What identifies a benchmark row: (method, problem id)."""
    return (row.get("method"), row.get("problem_id"))


def dedupe(rows: list[dict], key: Callable = bench_row_key) -> list[dict]:
    """``rows`` without repeats of a key (the first one kept), in order."""
    seen, out = set(), []
    for row in rows:
        k = key(row)
        if k not in seen:
            seen.add(k)
            out.append(row)
    return out


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


def runs_in_directory(directory: str, prefix: str) -> dict[str, dict]:
    """``{name: {problem_id: row}}`` of every ``<prefix>_<name>.jsonl`` in ``directory`` that
    has rows (one file per run, as the exploration benchmarks write them; repeats dropped)."""
    import glob

    runs = {}
    for path in sorted(glob.glob(os.path.join(glob.escape(directory), f"{prefix}_*.jsonl"))):
        name = os.path.basename(path)[len(prefix) + 1 : -len(".jsonl")]
        rows = dedupe(read_results(path)[1])
        if rows:
            runs[name] = {r["problem_id"]: r for r in rows}
    return runs


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


def _short(value, limit: int = 60) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _describe_lists(name: str, old: list, new: list) -> str:
    """How two id lists differ: their lengths and the first position where they part."""
    first = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), None)
    if first is None:
        rel = "a prefix of" if len(old) < len(new) else "longer than"
        return f"{name}: file has {len(old)}, now {len(new)} (the file's list is {rel} the new one)"
    return (
        f"{name}: file has {len(old)}, now {len(new)}; they first differ at position {first}: "
        f"file {_short(old[first], 30)} vs now {_short(new[first], 30)}"
    )


def _mismatch(path: str, header: dict, prov: dict) -> str | None:
    diff = sorted(k for k in set(header) | set(prov) if header.get(k) != prov.get(k))
    if not diff:
        return None
    parts = []
    for k in diff:
        old, new = header.get(k), prov.get(k)
        if isinstance(old, list) and isinstance(new, list) and len(old) + len(new) > 6:
            parts.append(_describe_lists(k, old, new))
        elif isinstance(old, dict) and isinstance(new, dict):
            sub = sorted(s for s in set(old) | set(new) if old.get(s) != new.get(s))
            parts.append(
                ", ".join(
                    f"{k}.{s}: file {_short(old.get(s))} vs now {_short(new.get(s))}" for s in sub
                )
            )
        else:
            parts.append(f"{k}: file {_short(old)} vs now {_short(new)}")
    return "; ".join(parts)


def _extends(header: dict, prov: dict, extendable: str | None) -> bool:
    """The new run is the recorded one with more items of ``extendable`` (a longer list that
    starts with the recorded one), all else equal."""
    if extendable is None:
        return False
    old, new = header.get(extendable), prov.get(extendable)
    if not (isinstance(old, list) and isinstance(new, list) and len(new) > len(old)):
        return False
    rest = {k for k in set(header) | set(prov) if k != extendable}
    return new[: len(old)] == old and all(header.get(k) == prov.get(k) for k in rest)


def prepare_results_file(
    path: str,
    prov: dict,
    *,
    key: Callable = bench_row_key,
    extendable: str | None = "problems",
    flag: str = "--output",
) -> list[str]:
    """Check an existing results file before a resume (see the module docstring). Returns notes
    for the user; a missing or empty file passes. Raises :class:`ResultsFileError`."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return []
    notes = [n for n in [_repair_torn_tail(path)] if n]
    header, rows = read_results(path)
    kind = prov.get("kind", DEFAULT_KIND)
    if header is None:
        if not rows:
            return notes
        raise ResultsFileError(
            f"{path} has rows but no provenance record (not a nabla-jax {kind} output, or "
            "written by an older version), so resuming cannot check they come from the same "
            f"run; move it away or choose another {flag}"
        )
    if not rows:  # a provenance line only (a run that stopped before its first row)
        if header != prov:
            write_atomic(path, json.dumps({PROVENANCE_KEY: prov}) + "\n")
        return notes
    if header.get("kind", DEFAULT_KIND) != kind:
        raise ResultsFileError(
            f"{path} is a nabla-jax {header.get('kind', DEFAULT_KIND)} output, not a {kind} "
            f"output; choose another {flag}"
        )
    rewrite = False
    if _extends(header, prov, extendable):
        notes.append(
            f"{path}: extending the recorded run from {len(header[extendable])} to "
            f"{len(prov[extendable])} {extendable}"
        )
        header, rewrite = prov, True
    shown = _mismatch(path, header, prov)
    if shown:
        raise ResultsFileError(
            f"{path} holds results of a different run ({shown}); resuming would mix them — "
            f"rerun with the same settings or choose another {flag}"
        )
    unique = dedupe(rows, key)
    if len(unique) < len(rows):
        notes.append(f"{path}: removed {len(rows) - len(unique)} duplicate row(s)")
        rewrite = True
    if rewrite:
        lines = [json.dumps({PROVENANCE_KEY: header})]
        lines += [json.dumps(r, ensure_ascii=False) for r in unique]
        write_atomic(path, "".join(line + "\n" for line in lines))
    return notes
