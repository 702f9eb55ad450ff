"""Competition-math problems with LaTeX answers (MATH-500, AIME, AMC, ...): loading and grading.

A problem file is the user's own (nothing is downloaded). The prompt is the problem text exactly
as the file gives it, passed to the LM's chat template unchanged (as the public ∇-Reasoner
evaluation does), optionally followed by an instruction suffix from the run config, e.g.
``"Please reason step by step, and put your final answer within \\boxed{}."``.

Answers are graded by `math-verify <https://github.com/huggingface/Math-Verify>`_: the last
``\\boxed{…}`` of the response (nested braces allowed) and the reference answer are both parsed to
SymPy and compared, so ``\\frac{1}{2}`` = ``0.5``, ``\\sqrt{12}`` = ``2\\sqrt{3}``,
``\\{1,2\\}`` = ``\\{2,1\\}``, ``90^\\circ`` = ``90``, ``10{,}000`` = ``10000``, and so on.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

__all__ = [
    "MathProblem",
    "canonical_answer",
    "extract_answer",
    "format_prompt",
    "grade",
    "load_problems",
]

#: Keys accepted for the problem text, in order of preference.
PROMPT_KEYS = ("prompt", "problem", "question")


class MathFileError(ValueError):
    """A math problem file could not be read (bad JSON, missing field, bad value)."""


@dataclasses.dataclass(frozen=True)
class MathProblem:
    """One problem: ``question`` is the prompt text as the file gives it; ``answer`` the reference
    answer as LaTeX / plain text (``None`` when the file has none: decoding only)."""

    id: str
    question: str
    answer: str | None = None
    #: Where a loaded problem came from ("file: line 12"); not part of its value.
    where: str | None = dataclasses.field(default=None, compare=False, repr=False)


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def _answer_text(value, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise MathFileError(f"{where}: 'answer' must be a string or a number, got {value!r}")
    text = str(value).strip()
    if not text:
        raise MathFileError(f"{where}: 'answer' is empty")
    return text


def _to_problem(obj, index: int, where: str, stem: str) -> MathProblem:
    if not isinstance(obj, dict):
        raise MathFileError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    key = next((k for k in PROMPT_KEYS if k in obj), None)
    if key is None:
        raise MathFileError(f"{where}: no problem text; expected one of the keys {PROMPT_KEYS}")
    text = obj[key]
    if not isinstance(text, str) or not text.strip():
        raise MathFileError(f"{where}: {key!r} must be a non-empty string")
    pid = obj.get("id", obj.get("unique_id"))
    return MathProblem(
        id=f"{stem}-{index}" if pid is None else str(pid),
        question=text,
        answer=_answer_text(obj.get("answer"), where),
        where=where,
    )


def _items(path: Path, text: str) -> list[tuple[object, str]]:
    stripped = text.strip()
    try:
        whole = json.loads(stripped)
    except json.JSONDecodeError as e:
        if stripped.startswith("["):
            raise MathFileError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
        whole = None
    if isinstance(whole, dict):
        for key in ("prompts", "problems"):
            if isinstance(whole.get(key), list):
                whole = whole[key]
                break
    if isinstance(whole, list):
        return [(obj, f"{path}: item {i}") for i, obj in enumerate(whole)]
    if whole is not None:
        return [(whole, f"{path}: line 1")]
    items = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                items.append((json.loads(line), f"{path}: line {lineno}"))
            except json.JSONDecodeError as e:
                raise MathFileError(f"{path}: invalid JSON on line {lineno}: {e.msg}") from None
    return items


def load_problems(path: str | Path) -> list[MathProblem]:
    """Read problems from JSON or JSONL.

    Layouts: a JSONL file of objects; a JSON list of objects; ``{"prompts": [...]}`` (or
    ``{"problems": [...]}``). Each object needs the problem text under ``prompt``, ``problem`` or
    ``question`` (a string kept exactly, whitespace included); ``answer`` (string or number) is
    optional (needed for grading), ``id`` / ``unique_id`` too (default ``<file stem>-<index>``).
    A bare string in a list is a prompt without an answer. Other keys are ignored.

    Raises ``FileNotFoundError`` for a missing file, :class:`MathFileError` (a ``ValueError``)
    naming the file and line/item for bad JSON, a missing text, a bad answer or a duplicate id.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"problem file not found: {path}")
    text = path.read_text(encoding="utf-8-sig")  # a leading BOM is not part of the JSON
    if not text.strip():
        raise MathFileError(f"{path}: file is empty (expected JSON or JSONL problems)")
    items = [
        ({"prompt": obj} if isinstance(obj, str) else obj, where)
        for obj, where in _items(path, text)
    ]
    if not items:
        raise MathFileError(f"{path}: contains no problems")
    problems = [_to_problem(obj, i, where, path.stem) for i, (obj, where) in enumerate(items)]
    seen: dict[str, str] = {}
    for p, (_, where) in zip(problems, items):
        if p.id in seen:
            raise MathFileError(f"{where}: duplicate id {p.id!r} (first at {seen[p.id]})")
        seen[p.id] = where
    return problems


# ----------------------------------------------------------------------------------------------
# Prompts, answers, grading
# ----------------------------------------------------------------------------------------------


def format_prompt(problem: MathProblem | str, instruction: str | None = None) -> str:
    """The user message: the problem text unchanged, then ``instruction`` on a new line when
    given (``None`` or ``""``: the text alone)."""
    text = problem if isinstance(problem, str) else problem.question
    return f"{text}\n{instruction}" if instruction else text


_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")


def extract_answer(text: str) -> str | None:
    """The content of the last ``\\boxed{…}`` (or ``\\fbox{…}``) in ``text``, nested braces
    balanced, stripped; ``None`` when there is none or its braces never close."""
    starts = [m.end() for m in _BOXED_RE.finditer(text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            c = text[i]
            if c == "{" and text[i - 1] != "\\":
                depth += 1
            elif c == "}" and text[i - 1] != "\\":
                depth -= 1
                if depth == 0:
                    return text[start:i].strip()
        # unbalanced: try an earlier box
    return None


_CANON_SUBS = (
    (re.compile(r"\\[dt]frac"), r"\\frac"),
    (re.compile(r"\\left|\\right|\\!|\\,|\\;|\\ "), ""),
    (re.compile(r"\s+"), ""),
    (re.compile(r"^\$|\$$|\.$"), ""),
)


def canonical_answer(text: str) -> str | None:
    """:func:`extract_answer` with cosmetic LaTeX removed (spaces, ``\\left``/``\\right``, thin
    spaces, ``\\dfrac``/``\\tfrac`` → ``\\frac``, surrounding ``$``, a final period): a hashable
    key under which self-consistency votes, so that ``\\dfrac{1}{2}`` and ``\\frac{1}{2}`` count
    as one answer. ``None`` when there is no boxed answer."""
    ans = extract_answer(text)
    if ans is None:
        return None
    for pattern, repl in _CANON_SUBS:
        ans = pattern.sub(repl, ans)
    return ans or None


def _timeout(seconds: int) -> int | None:
    """math-verify's time limit relies on ``signal.alarm``, which only the main thread may use:
    elsewhere (a thread pool, a server) parsing runs without a limit instead of failing."""
    import threading

    return seconds if threading.current_thread() is threading.main_thread() else None


def _parse(latex: str):
    from math_verify import parse

    return parse("\\boxed{" + latex + "}", parsing_timeout=_timeout(5))


def grade(response: str, answer: str) -> bool:
    """Is the last boxed answer of ``response`` mathematically equal to ``answer``?

    Both are parsed by ``math_verify`` (fractions, decimals, radicals, intervals, sets, units and
    degrees, ``\\text{}``, percentages, symbolic expressions) and compared with
    ``math_verify.verify(gold, prediction)``. A response without a boxed answer is wrong.
    Safe to call from any thread (off the main thread without math-verify's 5 s time limit).
    """
    if answer is None:
        raise ValueError("cannot grade a problem without an answer")
    from math_verify import verify

    predicted = extract_answer(response)
    if predicted is None:
        return False
    return bool(verify(_parse(str(answer)), _parse(predicted), timeout_seconds=_timeout(5)))
