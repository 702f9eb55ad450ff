"""A miniature of the paper's model pairing: a Qwen2 policy with padded vocabulary rows and a
Qwen3 reward model whose tokenizer adds tokens, with another vocabulary size.

The paper pairs Qwen2.5-7B-Instruct (152064 embedding rows, 151665 tokens) with
Skywork-Reward-V2-Qwen3-4B (151936 rows; its tokenizer adds ``<think>``, ``</think>`` and
more to the same merges). Here: the ChatML test tokenizer (300 tokens) for the LM with 13
padded rows (313), the same tokenizer plus 3 added tokens (303) for the RM with 5 padded rows
(308).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import transformers as tr

from tests.hf_models import sharpen_
from tests.tokenizer_utils import make_chatml_tokenizer

LM_PADDED_ROWS = 13
RM_ADDED = ("<think>", "</think>", "<tool_response>")
RM_PADDED_ROWS = 5

_DECODER = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    pad_token_id=0,
    eos_token_id=2,
    bos_token_id=None,
)


def paper_tokenizers():
    """``(lm_tok, rm_tok)``: the ChatML tokenizer, and a copy with :data:`RM_ADDED` added."""
    lm_tok = make_chatml_tokenizer()
    rm_tok = copy.deepcopy(lm_tok)
    rm_tok.add_tokens(list(RM_ADDED))
    return lm_tok, rm_tok


def paper_torch_pair(seed: int = 5):
    """``(lm_tok, rm_tok, lm_torch, rm_torch)``: the two tokenizers, a random Qwen2ForCausalLM
    of ``len(lm_tok) + 13`` rows and a random Qwen3ForSequenceClassification of
    ``len(rm_tok) + 5`` rows (float32, eval, weights sharpened as ``hf_models`` does)."""
    lm_tok, rm_tok = paper_tokenizers()
    torch.manual_seed(seed)
    lm_cfg = tr.Qwen2Config(vocab_size=len(lm_tok) + LM_PADDED_ROWS, **_DECODER)
    rm_cfg = tr.Qwen3Config(
        vocab_size=len(rm_tok) + RM_PADDED_ROWS, head_dim=8, num_labels=1, **_DECODER
    )
    lm = tr.Qwen2ForCausalLM(lm_cfg).eval()
    rm = tr.Qwen3ForSequenceClassification(rm_cfg).eval()
    sharpen_(lm)
    sharpen_(rm)
    return lm_tok, rm_tok, lm, rm


def save_paper_pair(directory, seed: int = 5):
    """Save :func:`paper_torch_pair` as HF directories ``directory/lm`` and ``directory/rm``
    (tokenizers included); returns the torch models and tokenizers as ``paper_torch_pair``."""
    lm_tok, rm_tok, lm, rm = paper_torch_pair(seed)
    lm.save_pretrained(directory / "lm")
    lm_tok.save_pretrained(directory / "lm")
    rm.save_pretrained(directory / "rm")
    rm_tok.save_pretrained(directory / "rm")
    for name in ("lm", "rm"):
        same_tokenizer_class(directory / name)
    return lm_tok, rm_tok, lm, rm


def same_tokenizer_class(model_dir) -> None:
    """Make ``AutoTokenizer`` load ``model_dir``'s tokenizer as ``Qwen2Tokenizer`` — the class
    both real checkpoints of the pairing use. Left to the model type, transformers loads the
    Qwen2 directory as ``Qwen2Tokenizer`` (its own digit-splitting pre-tokenizer) and the Qwen3
    one with the saved pre-tokenizer, and the two would encode ``- 5`` differently."""
    path = Path(model_dir) / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg["tokenizer_class"] = "Qwen2Tokenizer"
    path.write_text(json.dumps(cfg))


def reindexed_rm_by_hand(rm_torch, lm_tok, rm_tok, lm_rows: int):
    """A copy of ``rm_torch`` whose embedding table has ``lm_rows`` rows, row ``v`` being the
    RM row of LM token ``v``'s string (``convert_ids_to_tokens`` / ``convert_tokens_to_ids``),
    or of the RM pad token for LM ids without a token or without an RM match."""
    cfg = copy.deepcopy(rm_torch.config)
    cfg.vocab_size = lm_rows
    hand = type(rm_torch)(cfg).eval()
    state = {k: v for k, v in rm_torch.state_dict().items() if k != "model.embed_tokens.weight"}
    old = rm_torch.model.embed_tokens.weight.detach()
    rm_vocab = rm_tok.get_vocab()
    rows = []
    for v in range(lm_rows):
        token = lm_tok.convert_ids_to_tokens(v) if v < len(lm_tok) else None
        in_rm = token in rm_vocab
        rows.append(rm_tok.convert_tokens_to_ids(token) if in_rm else rm_tok.pad_token_id)
    state["model.embed_tokens.weight"] = old[torch.as_tensor(rows)]
    hand.load_state_dict(state, strict=True)
    return hand
