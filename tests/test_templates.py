"""Chat-template rendering: LM prompt ids and RM prefix / suffix ids."""

from __future__ import annotations

import numpy as np
import pytest

from nabla_jax.text.templates import (
    DEFAULT_PLACEHOLDER,
    ChatTemplateError,
    _as_id_list,
    build_messages,
    lm_prompt_ids,
    rm_prefix_suffix_ids,
)
from tests.tokenizer_utils import make_chatml_tokenizer

PROMPT = "What is 2 + 2?"


@pytest.fixture(scope="module")
def tok():
    return make_chatml_tokenizer()


@pytest.fixture(scope="module")
def tok_no_template():
    return make_chatml_tokenizer(chat_template=None)


def _enc(tok, text):
    return tok.encode(text, add_special_tokens=False)


# ------------------------------------------------------------------------------ lm_prompt_ids


def test_lm_prompt_ids_chatml(tok):
    ids = lm_prompt_ids(tok, PROMPT)
    assert isinstance(ids, list) and all(type(i) is int for i in ids)
    want = f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    assert ids == _enc(tok, want)
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert tok.decode(ids) == want


def test_lm_prompt_ids_system_and_message_list(tok):
    with_system = lm_prompt_ids(tok, PROMPT, system="Be brief.")
    assert tok.decode(with_system).startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    assert lm_prompt_ids(tok, msgs) == with_system


@pytest.mark.parametrize(
    "raw",
    [
        [1, 2, 3],
        [[1, 2, 3]],
        np.array([[1, 2, 3]], np.int64),
        {"input_ids": [1, 2, 3], "attention_mask": [1, 1, 1]},
        {"input_ids": [[1, 2, 3]]},
    ],
)
def test_as_id_list_normalizes_return_types(raw):
    assert _as_id_list(raw) == [1, 2, 3]


def test_as_id_list_rejects_unexpected():
    with pytest.raises(ChatTemplateError, match="without 'input_ids'"):
        _as_id_list({"ids": [1]})
    with pytest.raises(ChatTemplateError, match="unexpected shape"):
        _as_id_list([[1, 2], [3, 4]])


# ----------------------------------------------------------------------- rm_prefix_suffix_ids


def test_rm_prefix_suffix_split(tok):
    prefix, suffix = rm_prefix_suffix_ids(tok, PROMPT)
    assert tok.decode(prefix) == f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(suffix) == "<|im_end|>\n"
    assert prefix == lm_prompt_ids(tok, PROMPT)  # ChatML: RM prefix == LM generation prompt


@pytest.mark.parametrize("response", ["The answer is 4.", "Let's think step by step. x = 5"])
def test_prefix_response_suffix_reproduces_conversation(tok, response):
    prefix, suffix = rm_prefix_suffix_ids(tok, PROMPT, system="You are a helpful assistant.")
    conv = build_messages(PROMPT, system="You are a helpful assistant.")
    conv.append({"role": "assistant", "content": response})
    full = _as_id_list(tok.apply_chat_template(conv, tokenize=True))
    assert prefix + _enc(tok, response) + suffix == full


def test_custom_placeholder(tok):
    assert rm_prefix_suffix_ids(tok, PROMPT, placeholder="@@R@@") == rm_prefix_suffix_ids(
        tok, PROMPT
    )


# ----------------------------------------------------------------------------------- errors


def test_missing_chat_template(tok_no_template):
    with pytest.raises(ChatTemplateError, match=r"no chat_template.*tokenizer\.chat_template"):
        lm_prompt_ids(tok_no_template, PROMPT)
    with pytest.raises(ChatTemplateError, match="no chat_template"):
        rm_prefix_suffix_ids(tok_no_template, PROMPT)
    assert issubclass(ChatTemplateError, ValueError)


def test_not_a_tokenizer():
    with pytest.raises(ValueError, match="tokenizer is None"):
        lm_prompt_ids(None, PROMPT)
    with pytest.raises(ChatTemplateError, match="has no apply_chat_template"):
        rm_prefix_suffix_ids(object(), PROMPT)


def test_placeholder_dropped_by_template():
    tok = make_chatml_tokenizer(
        chat_template=(
            "{% for m in messages %}{% if m['role'] != 'assistant' %}"
            "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
            "{% endif %}{% endfor %}"
        )
    )
    with pytest.raises(ChatTemplateError, match="0 times"):
        rm_prefix_suffix_ids(tok, PROMPT)


def test_placeholder_rendered_twice():
    tok = make_chatml_tokenizer(
        chat_template="{% for m in messages %}{{ m['content'] }}|{{ m['content'] }}{% endfor %}"
    )
    with pytest.raises(ChatTemplateError, match="2 times"):
        rm_prefix_suffix_ids(tok, PROMPT)


def test_placeholder_in_prompt_or_empty(tok):
    with pytest.raises(ValueError, match="occurs in the prompt"):
        rm_prefix_suffix_ids(tok, f"say {DEFAULT_PLACEHOLDER}")
    with pytest.raises(ValueError, match="placeholder must be a non-empty string"):
        rm_prefix_suffix_ids(tok, PROMPT, placeholder="  ")


@pytest.mark.parametrize(
    "prompt, system, exc, match",
    [
        ([], None, ValueError, "empty list"),
        ([{"role": "user"}], None, ValueError, r"prompt\[0\] must be a dict"),
        (["hi"], None, ValueError, r"prompt\[0\] must be a dict"),
        ([{"role": "user", "content": 3}], None, ValueError, "must be strings"),
        (42, None, TypeError, "string or a list of message dicts"),
        ([{"role": "system", "content": "a"}], "b", ValueError, "only one of them"),
        ("hi", 5, TypeError, "system must be a string"),
    ],
)
def test_bad_prompts(tok, prompt, system, exc, match):
    with pytest.raises(exc, match=match):
        lm_prompt_ids(tok, prompt, system=system)
    with pytest.raises(exc, match=match):
        rm_prefix_suffix_ids(tok, prompt, system=system)
