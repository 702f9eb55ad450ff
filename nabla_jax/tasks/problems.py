"""A problem record and prompt-set files: :class:`Problem`, and reading / writing lists of them
(JSON or JSONL) with errors that name the file and line."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable
from pathlib import Path

__all__ = ["Problem", "ProblemFileError", "load_problems", "save_problems"]


class ProblemFileError(ValueError):
    """A prompt-set file could not be read as problems (bad JSON, missing field, bad value)."""


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem. Generated problems have every field; problems loaded from a file need only a
    question (``answer``, ``solution`` and ``num_ops`` are then ``None`` when absent)."""

    id: str
    question: str
    answer: int | None = None
    solution: str | None = None
    num_ops: int | None = None
    #: Where a loaded problem came from ("file: line 12"); not part of its value.
    where: str | None = dataclasses.field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict:
        """The non-``None`` fields, as saved by :func:`save_problems`."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None and k != "where"}


def _parse_answer(value, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ProblemFileError(f"{where}: 'answer' must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
        return int(value)
    raise ProblemFileError(f"{where}: 'answer' must be an integer, got {value!r}")


def _to_problem(obj, index: int, where: str, stem: str) -> Problem:
    if not isinstance(obj, dict):
        raise ProblemFileError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "question" not in obj:
        raise ProblemFileError(f"{where}: missing required field 'question'")
    question = obj["question"]
    if not isinstance(question, str) or not question.strip():
        raise ProblemFileError(f"{where}: 'question' must be a non-empty string")
    num_ops = obj.get("num_ops")
    if num_ops is not None and (not isinstance(num_ops, int) or isinstance(num_ops, bool)):
        raise ProblemFileError(f"{where}: 'num_ops' must be an integer, got {num_ops!r}")
    solution = obj.get("solution")
    if solution is not None and not isinstance(solution, str):
        raise ProblemFileError(f"{where}: 'solution' must be a string")
    pid = obj.get("id")
    return Problem(
        id=f"{stem}-{index}" if pid is None else str(pid),
        question=question,
        answer=_parse_answer(obj.get("answer"), where),
        solution=solution,
        num_ops=num_ops,
        where=where,
    )


def load_problems(path: str | Path) -> list[Problem]:
    """Read problems from a JSON file (a list of objects, or ``{"problems": [...]}``) or a JSONL
    file (one object per line; blank lines skipped). Each object needs ``question``; ``answer``
    (integer or integer string), ``id`` (default ``<file stem>-<index>``), ``solution`` and
    ``num_ops`` are optional; other fields are ignored.

    Raises ``FileNotFoundError`` for a missing file and :class:`ProblemFileError` (a ``ValueError``)
    naming the file and line for bad JSON, a missing ``question``, a bad value or duplicate ids.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"problem file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a leading BOM is not part of the JSON
    except UnicodeDecodeError as e:
        raise ProblemFileError(
            f"{path}: not UTF-8 text (byte {e.start}); expected a JSON list or JSONL of problems"
        ) from None
    stripped = text.strip()
    if not stripped:
        raise ProblemFileError(f"{path}: file is empty (expected a JSON list or JSONL of problems)")

    items: list[tuple[object, str]] = []
    whole = None
    if stripped.startswith("["):
        try:
            whole = json.loads(text)
        except json.JSONDecodeError as e:
            raise ProblemFileError(
                f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
            ) from None
    else:
        try:
            whole = json.loads(text)  # one (possibly pretty-printed) object
        except json.JSONDecodeError:
            whole = None
    if isinstance(whole, dict) and isinstance(whole.get("problems"), list):
        whole = whole["problems"]
    if isinstance(whole, list):
        items = [(obj, f"{path}: item {i}") for i, obj in enumerate(whole)]
    elif whole is not None:
        items = [(whole, f"{path}: line 1")]
    else:  # JSONL
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ProblemFileError(
                    f"{path}: invalid JSON on line {lineno} (column {e.colno}): {e.msg}"
                ) from None
            items.append((obj, f"{path}: line {lineno}"))
    if not items:
        raise ProblemFileError(f"{path}: contains no problems")

    problems = [_to_problem(obj, i, where, path.stem) for i, (obj, where) in enumerate(items)]
    seen: dict[str, str] = {}
    for p, (_, where) in zip(problems, items):
        if p.id in seen:
            raise ProblemFileError(f"{where}: duplicate id {p.id!r} (first at {seen[p.id]})")
        seen[p.id] = where.split(": ", 1)[1]
    return problems


def save_problems(path: str | Path, problems: Iterable[Problem]) -> Path:
    """Write problems as JSONL when ``path`` ends in ``.jsonl``, else as an indented JSON list.
    ``load_problems`` reads either back to equal problems. Returns the path."""
    path = Path(path)
    rows = [p.to_dict() for p in problems]
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    else:
        text = json.dumps(rows, ensure_ascii=False, indent=1) + "\n"
    path.write_text(text, encoding="utf-8")
    return path
