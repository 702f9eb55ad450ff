"""The bundled multi-step arithmetic task.

A problem is a chain of 3-5 operations (``+``, ``-``, ``*``) applied left to right to a starting
number, written as an ordinary expression with the fewest parentheses that keep standard precedence
equal to the left-to-right order, e.g. ``(12+7)*3-5``. The chain-of-thought solution writes one
step per line, each step starting from the previous result, and ends with a fixed answer line::

    user:      Compute (12+7)*3-5
    assistant: 12+7=19
               19*3=57
               57-5=52
               Answer: 52

Splits are structural: every expression is assigned to ``train``, ``validation`` or ``test`` by a
hash of its text, and :func:`generate` keeps only draws whose hash lands in the requested split. So
splits never overlap, whatever the seeds, and :func:`fresh_test_problems` can draw new benchmark
problems for any ``--seed`` that never appear in training data.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence

from nabla_jax.tasks.problems import Problem, ProblemFileError, load_problems, save_problems

__all__ = [
    "ANSWER_PREFIX",
    "SPLITS",
    "SYSTEM_PROMPT",
    "Problem",
    "ProblemFileError",
    "chat_messages",
    "extract_answer",
    "format_prompt",
    "fresh_test_problems",
    "generate",
    "grade",
    "load_problems",
    "make_problem",
    "save_problems",
    "split_of",
]

#: Split names and the share of the hash space each one owns (per mille).
SPLITS: dict[str, tuple[int, int]] = {
    "train": (0, 800),
    "validation": (800, 900),
    "test": (900, 1000),
}

#: The line that ends every solution: ``Answer: <integer>``.
ANSWER_PREFIX = "Answer:"

#: The task needs no system prompt: the user message alone states the problem (short contexts).
SYSTEM_PROMPT: str | None = None

_QUESTION_PREFIX = "Compute "

# Generation defaults (see `generate`).
_OPERAND_RANGE = (2, 30)
_MULTIPLIER_RANGE = (2, 9)
_OP_WEIGHTS = {"+": 0.375, "-": 0.375, "*": 0.25}


# ----------------------------------------------------------------------------------------------
# Splits and generation
# ----------------------------------------------------------------------------------------------


def _expression_of(question: str) -> str:
    """The canonical expression text of a question (the question minus its fixed prefix)."""
    q = question.strip()
    if q.startswith(_QUESTION_PREFIX):
        q = q[len(_QUESTION_PREFIX) :]
    return q.strip()


def _digest(expression: str) -> str:
    return hashlib.sha256(expression.encode("utf-8")).hexdigest()


def split_of(question: str) -> str:
    """The split (``train`` / ``validation`` / ``test``) that owns a question or bare expression.

    Depends only on the canonical expression text, never on a seed.
    """
    bucket = int(_digest(_expression_of(question))[:16], 16) % 1000
    for name, (lo, hi) in SPLITS.items():
        if lo <= bucket < hi:
            return name
    raise AssertionError("unreachable")  # pragma: no cover


def make_problem(start: int, steps: Sequence[tuple[str, int]]) -> Problem:
    """Build the problem for ``start`` followed by ``steps`` = ``[(op, operand), ...]`` applied
    left to right, with its minimal-parentheses expression, chain-of-thought solution and answer."""
    if not steps:
        raise ValueError("a problem needs at least one operation")
    expr, top, value = str(start), None, start
    lines = []
    for op, b in steps:
        if op == "+":
            new = value + b
        elif op == "-":
            new = value - b
        elif op == "*":
            new = value * b
        else:
            raise ValueError(f"unknown operation {op!r}; expected one of '+', '-', '*'")
        if op == "*" and top in ("+", "-"):
            expr = f"({expr})*{b}"
        else:
            expr = f"{expr}{op}{b}"
        top = op
        lines.append(f"{value}{op}{b}={new}")
        value = new
    lines.append(f"{ANSWER_PREFIX} {value}")
    return Problem(
        id=f"arith-{_digest(expr)[:12]}",
        question=_QUESTION_PREFIX + expr,
        answer=value,
        solution="\n".join(lines),
        num_ops=len(steps),
    )


def _draw(rng: random.Random, num_ops: int, max_value: int) -> Problem:
    lo, hi = _OPERAND_RANGE
    mlo, mhi = _MULTIPLIER_RANGE
    value = rng.randint(lo, hi)
    start, steps = value, []
    ops, weights = list(_OP_WEIGHTS), list(_OP_WEIGHTS.values())
    while len(steps) < num_ops:
        op = rng.choices(ops, weights)[0]
        if op == "*":
            b = rng.randint(mlo, mhi)
            new = value * b
        else:
            b = rng.randint(lo, hi)
            new = value + b if op == "+" else value - b
        if 0 <= new <= max_value:  # keep every intermediate result in [0, max_value]
            steps.append((op, b))
            value = new
    return make_problem(start, steps)


def generate(
    split: str,
    n: int,
    seed: int = 0,
    *,
    min_ops: int = 3,
    max_ops: int = 5,
    max_value: int = 999,
) -> list[Problem]:
    """``n`` distinct problems of ``split``, deterministic in ``(split, n, seed)`` and the options.

    The number of operations is uniform in ``[min_ops, max_ops]``; operands of ``+``/``-`` are 2-30,
    multipliers 2-9 (about a quarter of the operations), and every intermediate result stays in
    ``[0, max_value]``. Only draws whose expression hashes into ``split`` are kept (see
    :func:`split_of`). A larger ``n`` with the same seed extends the smaller list (the first ``n``
    are the same).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 1 <= min_ops <= max_ops:
        raise ValueError(f"need 1 <= min_ops <= max_ops, got min_ops={min_ops}, max_ops={max_ops}")
    if max_value < _OPERAND_RANGE[1] * 2:
        raise ValueError(f"max_value must be >= {_OPERAND_RANGE[1] * 2}, got {max_value}")
    rng = random.Random(f"nabla-jax/arithmetic/{split}/{seed}/{min_ops}-{max_ops}/{max_value}")
    out: list[Problem] = []
    seen: set[str] = set()
    attempts, limit = 0, 1000 + 200 * n
    while len(out) < n:
        attempts += 1
        if attempts > limit:
            raise RuntimeError(
                f"could only draw {len(out)} distinct {split} problems of {n} requested; "
                "the option space is too small for this n"
            )
        p = _draw(rng, rng.randint(min_ops, max_ops), max_value)
        if p.question in seen or split_of(p.question) != split:
            continue
        seen.add(p.question)
        out.append(p)
    return out


def fresh_test_problems(n: int, seed: int, **options) -> list[Problem]:
    """``n`` test-split problems for a benchmark ``--seed``: the test distribution, never
    overlapping the train or validation splits (whatever seeds those were drawn with). Same as
    ``generate("test", n, seed, **options)``."""
    return generate("test", n, seed, **options)


# ----------------------------------------------------------------------------------------------
# Prompts, answers, grading
# ----------------------------------------------------------------------------------------------


def format_prompt(problem: Problem | str) -> str:
    """The user message for a problem (its question text)."""
    return problem if isinstance(problem, str) else problem.question


def chat_messages(
    problem: Problem | str,
    *,
    with_solution: bool = False,
    system: str | None = SYSTEM_PROMPT,
) -> list[dict[str, str]]:
    """Chat messages for a problem: optional system, the user prompt, and (``with_solution``) the
    reference solution as the assistant reply — ready for ``tokenizer.apply_chat_template``."""
    msgs = [] if system is None else [{"role": "system", "content": system}]
    msgs.append({"role": "user", "content": format_prompt(problem)})
    if with_solution:
        if isinstance(problem, str) or problem.solution is None:
            raise ValueError("with_solution=True needs a Problem that has a solution")
        msgs.append({"role": "assistant", "content": problem.solution})
    return msgs


_ANSWER_RE = re.compile(r"answer\**\s*[:：]", re.IGNORECASE)
_NUMBER_RE = re.compile(r"[ \t*]*([-+−–]?)[ \t]*(\d[\d,]*)(\.\d+)?")


def extract_answer(text: str) -> int | None:
    """The integer after the last ``Answer:`` in ``text``, or ``None``.

    Case-insensitive; tolerates spaces, a sign (``-``, ``+``, Unicode minus), thousands commas,
    bold markers (``**Answer:** 5``), a trailing period, and ``.0``. A last ``Answer:`` followed by
    no integer (or by a non-integral decimal) gives ``None``: earlier answer lines do not count.
    """
    matches = list(_ANSWER_RE.finditer(text))
    if not matches:
        return None
    m = _NUMBER_RE.match(text, matches[-1].end())
    if m is None:
        return None
    sign, digits, frac = m.groups()
    digits = digits.rstrip(",")
    if not re.fullmatch(r"\d{1,3}(,\d{3})*|\d+", digits):
        return None
    value = int(digits.replace(",", ""))
    if frac is not None and int(frac[1:]) != 0:
        return None
    return -value if sign in ("-", "−", "–") else value


def grade(text: str, answer: int) -> bool:
    """Exact-match grading: the extracted answer equals ``answer``."""
    if answer is None:
        raise ValueError("cannot grade a problem without an answer")
    got = extract_answer(text)
    return got is not None and got == int(answer)
