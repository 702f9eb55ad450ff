"""Task definitions: the bundled multi-step arithmetic task (its names are re-exported here),
competition math with LaTeX answers (:mod:`nabla_jax.tasks.math`), and the :class:`Task`
interface the evaluation uses for either (:func:`get_task`).

The task tokenizer lives in :mod:`nabla_jax.text.tokenizer` (imported on demand: it needs
``transformers``).
"""

from nabla_jax.tasks.arithmetic import (
    ANSWER_PREFIX,
    SPLITS,
    SYSTEM_PROMPT,
    Problem,
    ProblemFileError,
    chat_messages,
    extract_answer,
    format_prompt,
    fresh_test_problems,
    generate,
    grade,
    load_problems,
    make_problem,
    save_problems,
    split_of,
)
from nabla_jax.tasks.registry import TASK_NAMES, Task, get_task, task_from_config

__all__ = [
    "ANSWER_PREFIX",
    "SPLITS",
    "SYSTEM_PROMPT",
    "TASK_NAMES",
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
    "Task",
    "get_task",
    "task_from_config",
]
