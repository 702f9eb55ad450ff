"""Chat-template rendering: LM prompt ids, and the RM prefix / suffix around a response.

* :func:`lm_prompt_ids` — the LM's chat template applied to the prompt with
  ``add_generation_prompt=True``: the ids the LM continues from.
* :func:`rm_prefix_suffix_ids` — the RM's chat template rendered around a placeholder assistant
  reply and split there, so that ``prefix ++ response ++ suffix`` is the whole conversation the
  reward model scores.

docs/algorithm.md#templates-what-each-model-reads shows where each part is used.

A prompt is either a user message string or a list of ``{"role": ..., "content": ...}`` dicts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_PLACEHOLDER",
    "ChatTemplateError",
    "build_messages",
    "lm_prompt_ids",
    "require_chat_template",
    "rm_prefix_suffix_ids",
]

#: Stand-in assistant reply: plain ASCII without edge whitespace, so templates that ``trim``
#: message content still render it verbatim.
DEFAULT_PLACEHOLDER = "<<NABLA_JAX_RESPONSE_PLACEHOLDER_5F3A>>"


class ChatTemplateError(ValueError):
    """The tokenizer cannot render the chat as needed (no template, or placeholder lost)."""


def build_messages(prompt: str | Sequence[Mapping[str, str]], *, system: str | None = None):
    """Normalize a prompt to a list of chat messages.

    Args:
      prompt: a user message, or a non-empty list of ``{"role", "content"}`` dicts.
      system: optional system message prepended to the chat.

    Returns:
      ``list[dict]`` of messages (copies; the input is not modified).
    """
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, Sequence) and not isinstance(prompt, (bytes, bytearray)):
        if len(prompt) == 0:
            raise ValueError("prompt is an empty list of messages: give at least one message.")
        messages = []
        for i, msg in enumerate(prompt):
            if not isinstance(msg, Mapping) or not {"role", "content"} <= set(msg):
                raise ValueError(
                    f"prompt[{i}] must be a dict with 'role' and 'content' keys, got {msg!r}."
                )
            if not isinstance(msg["role"], str) or not isinstance(msg["content"], str):
                raise ValueError(f"prompt[{i}] role and content must be strings, got {msg!r}.")
            messages.append(dict(msg))
    else:
        raise TypeError(
            f"prompt must be a string or a list of message dicts, got {type(prompt).__name__}."
        )
    if system is not None:
        if not isinstance(system, str):
            raise TypeError(f"system must be a string, got {type(system).__name__}.")
        if messages[0]["role"] == "system":
            raise ValueError(
                "Both system= and a leading system message were given: pass only one of them."
            )
        messages.insert(0, {"role": "system", "content": system})
    return messages


def require_chat_template(tokenizer: Any, name: str) -> None:
    if tokenizer is None:
        raise ValueError(f"{name} tokenizer is None: pass a Hugging Face tokenizer.")
    if not hasattr(tokenizer, "apply_chat_template"):
        raise ChatTemplateError(
            f"{name} tokenizer ({type(tokenizer).__name__}) has no apply_chat_template: pass a "
            "Hugging Face tokenizer with a chat template."
        )
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            f"The {name} tokenizer ({type(tokenizer).__name__}) has no chat_template. Pass a "
            "tokenizer that ships one (an instruct / chat checkpoint), or set "
            "tokenizer.chat_template to a Jinja template string before calling."
        )


def _as_id_list(result: Any) -> list[int]:
    """Plain ``list[int]`` from what ``apply_chat_template(tokenize=True)`` returned.

    Handles a flat list, a ``[1, T]`` nested list / array, and (transformers v5) a
    dict / ``BatchEncoding`` holding ``input_ids``.
    """
    if isinstance(result, Mapping) or hasattr(result, "keys"):
        if "input_ids" not in result:
            raise ChatTemplateError(
                f"apply_chat_template returned a mapping without 'input_ids': {list(result)}."
            )
        result = result["input_ids"]
    arr = np.asarray(result)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ChatTemplateError(
            f"apply_chat_template returned ids of unexpected shape {arr.shape} / dtype "
            f"{arr.dtype}; expected one sequence of ints."
        )
    return [int(i) for i in arr]


def lm_prompt_ids(
    tokenizer: Any,
    prompt: str | Sequence[Mapping[str, str]],
    *,
    system: str | None = None,
) -> list[int]:
    """Token ids ``[P]`` of the chat-templated prompt, ending with the generation prompt.

    Args:
      tokenizer: the LM's Hugging Face tokenizer (must have a ``chat_template``).
      prompt: user message string, or list of message dicts.
      system: optional system message.

    Returns:
      ``list[int]`` of length ``P``; the LM's response starts right after it.
    """
    messages = build_messages(prompt, system=system)
    require_chat_template(tokenizer, "LM")
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    ids = _as_id_list(out)
    if not ids:
        raise ChatTemplateError("The LM chat template rendered the prompt to zero tokens.")
    return ids


def rm_prefix_suffix_ids(
    tokenizer: Any,
    prompt: str | Sequence[Mapping[str, str]],
    *,
    placeholder: str = DEFAULT_PLACEHOLDER,
    system: str | None = None,
) -> tuple[list[int], list[int]]:
    """Split the RM's chat template around the assistant response.

    The chat ``prompt + [assistant: placeholder]`` is rendered as text with
    ``add_generation_prompt=False``, split at the placeholder, and each side is tokenized
    without adding special tokens (special-token *strings* in the render, e.g. ``<|im_end|>``,
    still map to their ids). The RM input is then ``prefix_ids ++ response_ids ++ suffix_ids``.

    Caveat (tokenization boundary): the three parts are tokenized separately, so the result can
    differ from tokenizing the whole rendered conversation at once where a merge would cross a
    boundary (e.g. a response starting with whitespace after a template's trailing newline).
    Chat templates normally put special tokens at both boundaries, which makes this exact.

    Args:
      tokenizer: the RM's Hugging Face tokenizer (must have a ``chat_template``).
      prompt: user message string, or list of message dicts (no assistant reply).
      placeholder: a string that occurs nowhere else in the rendered chat.
      system: optional system message.

    Returns:
      ``(prefix_ids [P_rm], suffix_ids [S_rm])`` as lists of ints.
    """
    if not isinstance(placeholder, str) or not placeholder.strip():
        raise ValueError(f"placeholder must be a non-empty string, got {placeholder!r}.")
    messages = build_messages(prompt, system=system)
    if any(placeholder in m["content"] for m in messages):
        raise ValueError(
            f"The placeholder {placeholder!r} occurs in the prompt: pass a different "
            "placeholder= that does not appear in the conversation."
        )
    require_chat_template(tokenizer, "RM")
    messages.append({"role": "assistant", "content": placeholder})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    if not isinstance(text, str):
        raise ChatTemplateError(
            f"apply_chat_template(tokenize=False) returned {type(text).__name__}, not a string."
        )
    count = text.count(placeholder)
    if count != 1:
        raise ChatTemplateError(
            f"The RM chat template rendered the placeholder {placeholder!r} {count} times "
            "(expected exactly once), so the response position is ambiguous or lost. If the "
            "template rewrites assistant content, pass a placeholder= it keeps verbatim, or "
            f"fix tokenizer.chat_template. Rendered text: {text!r}"
        )
    prefix_text, suffix_text = text.split(placeholder)
    return _encode_plain(tokenizer, prefix_text), _encode_plain(tokenizer, suffix_text)


def _encode_plain(tokenizer: Any, text: str) -> list[int]:
    return [int(i) for i in tokenizer.encode(text, add_special_tokens=False)] if text else []
