"""An exact scorer of arithmetic-task responses: the per-line check that a verifier with perfect
knowledge would make, for use in place of a reward model (the "oracle" acceptance test).

A problem's expression fixes its chain of steps (``(12+7)*3-5`` → ``12+7=19``, ``19*3=57``,
``57-5=52``). :func:`oracle_score` gives one point for each leading response line that is
exactly the next step — right operands, right operator, right result — and ``num_steps + 1``
more when the final ``Answer:`` is right. So a response scores higher the further its first
mistake is from the start, and any response with the right answer outscores every response
without it.
"""

from __future__ import annotations

import re

from nabla_jax.tasks.arithmetic import extract_answer

__all__ = ["oracle_score", "reference_steps", "step_checks"]

_TOKEN_RE = re.compile(r"\d+|[-+*()]")
_LINE_RE = re.compile(r"\s*(-?\d+)\s*([-+*])\s*(\d+)\s*=\s*(-?\d+)\s*")


def reference_steps(question: str) -> list[tuple[int, str, int, int]]:
    """The steps ``[(a, op, b, a op b), ...]`` of an arithmetic question (``Compute <expr>``
    or a bare expression), applied left to right as the task writes them.

    Raises ``ValueError`` for text that is not a task expression.
    """
    expr = question.strip()
    if expr.startswith("Compute "):
        expr = expr[len("Compute ") :]
    tokens = _TOKEN_RE.findall(expr)
    if "".join(tokens) != expr.replace(" ", ""):
        raise ValueError(f"not an arithmetic-task expression: {question!r}")
    body = [t for t in tokens if t not in "()"]
    if len(body) < 3 or len(body) % 2 == 0 or not body[0].isdigit():
        raise ValueError(f"not an arithmetic-task expression: {question!r}")
    value, steps = int(body[0]), []
    for op, operand in zip(body[1::2], body[2::2], strict=True):
        if op not in "+-*" or not operand.isdigit():
            raise ValueError(f"not an arithmetic-task expression: {question!r}")
        b = int(operand)
        new = value + b if op == "+" else value - b if op == "-" else value * b
        steps.append((value, op, b, new))
        value = new
    return steps


def oracle_score(question: str, response: str) -> float:
    """Exact score of ``response`` to ``question``: correct leading step lines, plus
    ``len(steps) + 1`` for a correct final answer (see the module doc)."""
    steps = reference_steps(question)
    lines = [line for line in response.splitlines() if line.strip()]
    correct = 0
    for want, line in zip(steps, lines):
        m = _LINE_RE.fullmatch(line)
        if m is None or tuple(int(g) if g not in "+-*" else g for g in m.groups()) != want:
            break
        correct += 1
    answer = extract_answer(response)
    return float(correct + (len(steps) + 1 if answer == steps[-1][3] else 0))


def step_checks(question: str, response: str) -> list[bool]:
    """Per line of ``response`` (split at ``\n``): whether the response is still right
    through that line — every step line so far exactly the reference's, and for the lines
    after the steps the final answer right. The labels a process reward model is judged by."""
    steps = reference_steps(question)
    out, ok = [], True
    for k, line in enumerate(response.split("\n")):
        if k < len(steps):
            m = _LINE_RE.fullmatch(line)
            got = None if m is None else tuple(int(g) if g not in "+-*" else g for g in m.groups())
            ok = ok and got == steps[k]
        else:
            ok = ok and extract_answer(line) == steps[-1][3]
        out.append(ok)
    return out
