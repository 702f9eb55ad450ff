"""The bundled task tokenizer (nabla_jax/assets/tokenizer) and `train_tokenizer`."""

import json
import statistics

import pytest
from transformers import AutoTokenizer

from nabla_jax.tasks import chat_messages, generate
from nabla_jax.text.tokenizer import (
    BUNDLED_TOKENIZER_DIR,
    CHAT_TEMPLATE,
    GENERATION_PROMPT,
    SPECIAL_TOKENS,
    load_bundled_tokenizer,
    render_chatml,
    save_tokenizer,
    train_tokenizer,
)

MAX_TOKENS = 96  # prompt + solution, chat-templated, for every generated problem


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(str(BUNDLED_TOKENIZER_DIR))


@pytest.fixture(scope="module")
def problems():
    return [p for split in ("train", "validation", "test") for p in generate(split, 1500, seed=5)]


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_bundled_tokenizer_loads(tok):
    assert len(tok) <= 512
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.convert_tokens_to_ids(t) == i
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    assert tok.pad_token == "<|pad|>" and tok.pad_token_id == 3
    assert set(SPECIAL_TOKENS) <= set(tok.all_special_tokens)
    assert tok.bos_token is None
    assert tok.chat_template == CHAT_TEMPLATE
    assert load_bundled_tokenizer().get_vocab() == tok.get_vocab()
    # portable config: loads under transformers 4.x and 5.x
    cfg = json.loads((BUNDLED_TOKENIZER_DIR / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert "chat_template" in cfg


def test_no_special_tokens_added_on_encode(tok):
    assert tok("Compute 1+2")["input_ids"] == _ids(tok, "Compute 1+2")


def test_exact_round_trip_on_task_text(tok, problems):
    for p in problems[:1000]:
        for text in (
            p.question,
            p.solution,
            render_chatml(chat_messages(p, with_solution=True)),
            render_chatml(chat_messages(p, system="Be exact."), add_generation_prompt=True),
        ):
            assert tok.decode(_ids(tok, text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        " leading and trailing spaces  ",
        "tabs\tand\n\nnewlines\r\n",
        "Ünïcödé — ∇ × 3 − 4 → 日本語 🙂",
        "  12 +  7 = 19 ,  ANSWER : -5 .",
        "<|im_start|>user\nhi<|im_end|>\n<|endoftext|><|pad|>",
        "x" * 300,
    ],
)
def test_exact_round_trip_on_arbitrary_text(tok, text):
    assert tok.decode(_ids(tok, text)) == text


def test_chat_template_matches_render_chatml(tok, problems):
    p = problems[0]
    msgs = chat_messages(p)
    rendered = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert rendered == f"<|im_start|>user\n{p.question}<|im_end|>\n{GENERATION_PROMPT}"
    assert rendered == render_chatml(msgs, add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>assistant\n")
    no_gen = tok.apply_chat_template(msgs, tokenize=False)
    assert no_gen == render_chatml(msgs) and not no_gen.endswith(GENERATION_PROMPT)
    sys_msgs = chat_messages(p, with_solution=True, system="Be exact.")
    full = tok.apply_chat_template(sys_msgs, tokenize=False)
    assert full == render_chatml(sys_msgs)
    assert full.startswith("<|im_start|>system\nBe exact.<|im_end|>\n<|im_start|>user\n")
    assert full.endswith(f"{p.solution}<|im_end|>\n")
    # tokenized: special tokens are single ids, and the generation prompt is a token-level prefix
    ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert ids == _ids(tok, rendered)
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 2
    assert ids[-3:] == _ids(tok, GENERATION_PROMPT)
    assert len(_ids(tok, GENERATION_PROMPT)) == 3  # <|im_start|> assistant \n


def test_digits_and_operators_are_single_tokens(tok):
    for d in "0123456789+-*()=":
        assert len(_ids(tok, d)) == 1
    ids = _ids(tok, "1234*56=69104")
    assert tok.convert_ids_to_tokens(ids) == list("1234*56=69104")
    assert tok.convert_ids_to_tokens(_ids(tok, "(12+7)*3-5")) == list("(12+7)*3-5")
    for word in ("Compute", "Answer", "user", "assistant", "system"):
        assert len(_ids(tok, word)) == 1, word


def test_typical_lengths_fit_the_context(tok, problems):
    full_len, prompt_len = {}, {}
    for p in problems:
        full = tok.apply_chat_template(chat_messages(p, with_solution=True), tokenize=False)
        prompt = tok.apply_chat_template(
            chat_messages(p), tokenize=False, add_generation_prompt=True
        )
        assert full.startswith(prompt)
        full_len.setdefault(p.num_ops, []).append(len(_ids(tok, full)))
        prompt_len.setdefault(p.num_ops, []).append(len(_ids(tok, prompt)))
    for k in sorted(full_len):
        print(
            f"num_ops={k}: prompt tokens mean {statistics.mean(prompt_len[k]):.1f} "
            f"max {max(prompt_len[k])}; prompt+solution mean {statistics.mean(full_len[k]):.1f} "
            f"max {max(full_len[k])}"
        )
    assert max(max(v) for v in full_len.values()) <= MAX_TOKENS
    assert max(max(v) for v in prompt_len.values()) <= 32


def test_train_tokenizer_is_deterministic_and_saves(tmp_path):
    texts = [render_chatml(chat_messages(p, with_solution=True)) for p in generate("train", 500, 0)]
    a, b = train_tokenizer(texts), train_tokenizer(texts)
    assert a.get_vocab() == b.get_vocab()
    # special-token text is kept out of the merges
    assert not any(t in a.get_vocab() for t in ("im", "start", "_start"))
    out = save_tokenizer(a, tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(str(out))
    assert loaded.get_vocab() == a.get_vocab()
    assert loaded.eos_token == "<|im_end|>" and loaded.pad_token == "<|pad|>"
    assert loaded.decode(_ids(loaded, texts[0])) == texts[0]
    assert not (out / "chat_template.jinja").exists()
    # plain save_pretrained output loads too
    a.save_pretrained(str(tmp_path / "plain"))
    plain = AutoTokenizer.from_pretrained(str(tmp_path / "plain"))
    assert plain.apply_chat_template(
        chat_messages("Compute 1+2"), tokenize=False, add_generation_prompt=True
    ) == render_chatml(chat_messages("Compute 1+2"), add_generation_prompt=True)


def test_train_tokenizer_rejects_tiny_vocab():
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["a"], vocab_size=100)
