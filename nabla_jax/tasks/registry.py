"""Tasks as one interface: problems → prompts → answers → grades.

A :class:`Task` bundles what an evaluation needs to know about a kind of problem: how to read a
problem file, how to turn a problem into the user message, how to pull the answer out of a
response (also the key self-consistency votes on), and how to grade. Two are built in:

* ``arithmetic`` — the bundled multi-step arithmetic task (``Answer: <integer>``; fresh test
  problems can be drawn for any seed);
* ``math`` — competition math with LaTeX answers (``\\boxed{…}``, graded by ``math-verify``);
  problems come from the user's file, with an optional instruction suffix.

The run config selects one with ``task: {name: math, instruction: "..."}``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable
from typing import Any

from nabla_jax.tasks import arithmetic
from nabla_jax.tasks import math as math_task
from nabla_jax.tasks.arithmetic_oracle import oracle_score

__all__ = ["TASK_NAMES", "Task", "get_task"]

TASK_NAMES = ("arithmetic", "math")


@dataclasses.dataclass(frozen=True)
class Task:
    """What the evaluation needs from a task.

    Attributes:
      name: "arithmetic" or "math".
      load_problems: ``path -> list of problems`` (objects with ``id``, ``question``, ``answer``).
      format_prompt: ``problem -> user message`` (str).
      extract_answer: ``response text -> answer or None`` (recorded as ``predicted``).
      vote_key: ``response text -> hashable or None``, the answer self-consistency votes on.
      grade: ``(response text, reference answer) -> bool``.
      fresh_problems: ``(n, seed) -> problems`` for tasks that can draw their own (else None).
      instruction: the instruction suffix the prompts carry (math only; None = none).
      oracle: ``(problem, response text) -> float``, an exact score of a response (higher is
        better) that can stand in for the reward model in acceptance tests; None = none.
      step_delimiter: the text that ends one reasoning step for the tree searches (beam
        search, MCTS): one line on arithmetic, a blank line on MATH.
    """

    name: str
    load_problems: Callable[[Any], list]
    format_prompt: Callable[[Any], str]
    extract_answer: Callable[[str], Hashable | None]
    vote_key: Callable[[str], Hashable | None]
    grade: Callable[[str, Any], bool]
    fresh_problems: Callable[[int, int], list] | None = None
    instruction: str | None = None
    oracle: Callable[[Any, str], float] | None = None
    step_delimiter: str = "\n"


def get_task(name: str = "arithmetic", *, instruction: str | None = None) -> Task:
    """The task called ``name``; ``instruction`` (math only) is appended to every prompt on a
    new line. Raises ``ValueError`` for an unknown name or an instruction the task cannot take."""
    if name == "arithmetic":
        if instruction:
            raise ValueError(
                "the arithmetic task takes no instruction (its prompts are fixed: 'Compute …')"
            )
        return Task(
            name="arithmetic",
            load_problems=arithmetic.load_problems,
            format_prompt=arithmetic.format_prompt,
            extract_answer=arithmetic.extract_answer,
            vote_key=arithmetic.extract_answer,
            grade=arithmetic.grade,
            fresh_problems=arithmetic.fresh_test_problems,
            oracle=lambda p, text: oracle_score(arithmetic.format_prompt(p), text),
        )
    if name == "math":
        if instruction is not None and not isinstance(instruction, str):
            raise ValueError(f"task instruction must be a string, got {instruction!r}")
        return Task(
            name="math",
            load_problems=math_task.load_problems,
            format_prompt=lambda p: math_task.format_prompt(p, instruction),
            extract_answer=math_task.extract_answer,
            vote_key=math_task.canonical_answer,
            grade=math_task.grade,
            instruction=instruction or None,
            step_delimiter="\n\n",
        )
    raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}")


def task_from_config(run: dict, name: str | None = None) -> Task:
    """The task of a run config's ``task:`` mapping (``name``, ``instruction``), with ``name``
    (e.g. ``--task``) taking precedence; no mapping and no name → arithmetic."""
    spec = run.get("task") or {}
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict):
        raise ValueError(f"task: must be a mapping with keys name, instruction; got {spec!r}")
    bad = sorted(set(spec) - {"name", "instruction"})
    if bad:
        raise ValueError(f"unknown key(s) {bad} in task; valid keys: name, instruction")
    chosen = name or spec.get("name") or "arithmetic"
    instruction = spec.get("instruction") if chosen == spec.get("name", chosen) else None
    return get_task(chosen, instruction=instruction)
