"""A small byte-level BPE tokenizer with a ChatML chat template, trained on task text.

Numbers are split into single digits and punctuation (``+ - * ( ) = :``) into single
characters before BPE, so arithmetic is written one symbol per token — what a tiny model needs to
learn to carry digits. Merges are learned only inside words and whitespace runs (``Compute``,
``Answer``, ``user``, ``assistant``...). Every byte is in the vocabulary, so any text round-trips
exactly: ``decode(encode(s)) == s``.

Special tokens: ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>`` (the EOS token) and ``<|pad|>``
(the pad token). The chat template is ChatML (as in Qwen2), with no default system prompt::

    <|im_start|>system\\n{system}<|im_end|>\\n       (only when a system message is given)
    <|im_start|>user\\n{prompt}<|im_end|>\\n
    <|im_start|>assistant\\n{reply}<|im_end|>\\n

The generation prompt is ``<|im_start|>assistant\\n``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

__all__ = [
    "BUNDLED_TOKENIZER_DIR",
    "CHAT_TEMPLATE",
    "EOS_TOKEN",
    "GENERATION_PROMPT",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "load_bundled_tokenizer",
    "render_chatml",
    "save_tokenizer",
    "train_tokenizer",
]

#: Special tokens, in id order (ids 0-3).
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|pad|>"
GENERATION_PROMPT = "<|im_start|>assistant\n"

#: ChatML as a Jinja template (``apply_chat_template``); :func:`render_chatml` is its twin.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

#: Where the tokenizer built by ``scripts/build_tokenizer.py`` is shipped.
BUNDLED_TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "assets" / "tokenizer"


def render_chatml(
    messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = False
) -> str:
    """Render chat messages exactly as :data:`CHAT_TEMPLATE` does, without a tokenizer."""
    parts = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    if add_generation_prompt:
        parts.append(GENERATION_PROMPT)
    return "".join(parts)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 384, min_frequency: int = 2):
    """Train a byte-level BPE tokenizer on ``texts``; return a ``PreTrainedTokenizerFast``.

    ``vocab_size`` is an upper bound (4 special tokens + 256 bytes + merges): on task text the
    merges run out well before it, since digits and punctuation never merge. Deterministic in
    ``texts``. Save with :func:`save_tokenizer` (or ``save_pretrained(dir)``); reload with
    ``AutoTokenizer.from_pretrained(dir)``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    minimum = len(SPECIAL_TOKENS) + 256
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size must be >= {minimum} (special tokens + 256 bytes), got {vocab_size}"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.Punctuation(behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Special tokens are atomic at encode time; keep their text out of the merge statistics.
    special = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))
    pieces = (piece for text in texts for piece in special.split(text) if piece)
    tok.train_from_iterator(pieces, trainer=trainer)
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        clean_up_tokenization_spaces=False,
        padding_side="right",
    )
    hf.add_special_tokens(
        {
            "additional_special_tokens": [
                t for t in SPECIAL_TOKENS if t not in (EOS_TOKEN, PAD_TOKEN)
            ]
        }
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def save_tokenizer(tokenizer, directory: str | Path) -> Path:
    """``tokenizer.save_pretrained(directory)``, then make ``tokenizer_config.json`` portable: the
    generic ``PreTrainedTokenizerFast`` class, ``additional_special_tokens`` and the chat template
    inline, so that transformers 4.x and 5.x both load it with ``AutoTokenizer``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(directory))
    cfg_path = directory / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg.pop("backend", None)
    cfg.pop("model_max_length", None)
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = cfg.pop("extra_special_tokens", None)
    if isinstance(extra, list):
        cfg["additional_special_tokens"] = extra
    cfg.setdefault(
        "additional_special_tokens",
        [t for t in SPECIAL_TOKENS if t not in (cfg.get("eos_token"), cfg.get("pad_token"))],
    )
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        cfg["chat_template"] = jinja.read_text(encoding="utf-8")
        jinja.unlink()
    cfg.setdefault("chat_template", tokenizer.chat_template)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return directory


def load_bundled_tokenizer():
    """The tokenizer shipped in ``nabla_jax/assets/tokenizer`` (via ``AutoTokenizer``)."""
    from transformers import AutoTokenizer

    if not (BUNDLED_TOKENIZER_DIR / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"no bundled tokenizer at {BUNDLED_TOKENIZER_DIR}; build it with "
            "`python scripts/build_tokenizer.py`"
        )
    return AutoTokenizer.from_pretrained(str(BUNDLED_TOKENIZER_DIR))
