"""Task definitions: the bundled multi-step arithmetic task, prompt-set files, answer grading.

The task tokenizer lives in :mod:`nabla_jax.tasks.tokenizer` (imported on demand: it needs
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
