"""PyTorch twin of the cross-vocabulary mapping (``nabla_jax.text.vocab_map`` and
``nabla_jax.functional.vocab_map``), written from the description of the paper's public code:

* walk the LM vocabulary in id order; each LM token string takes the RM id of the same string,
  or the RM's pad id when the RM vocabulary lacks it;
* LM embedding rows past the LM tokenizer (padding rows) take the pad id too (the public code
  never sees them; the description's fallback covers them);
* the RM embedding seen by the relaxed one-hot is ``index_select(E_rm, 0, mapping)``, and the
  soft embedding is the dense matmul ``y @ that``.

Plain loops and dense ops on purpose: an independent formulation, not a port.
"""

from __future__ import annotations

import torch


def fallback(rm_tokenizer) -> int:
    """The RM's pad id, else its unk id, else its eos id."""
    for value in (rm_tokenizer.pad_token_id, rm_tokenizer.unk_token_id, rm_tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    raise ValueError("RM tokenizer has no pad, unk or eos id")


def vocab_mapping(lm_tokenizer, rm_tokenizer, lm_rows: int) -> list[int]:
    """RM id of every LM id ``0 .. lm_rows-1`` (a Python list)."""
    rm_vocab = rm_tokenizer.get_vocab()
    pad = fallback(rm_tokenizer)
    by_id = sorted(lm_tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    mapping = [pad] * lm_rows
    for token, lm_id in by_id:
        mapping[lm_id] = rm_vocab.get(token, pad)
    return mapping


def aligned_rm_embed(rm_embed: torch.Tensor, mapping: list[int]) -> torch.Tensor:
    """``[V_lm, H]``: RM embedding rows selected by the mapping."""
    return torch.index_select(rm_embed, 0, torch.as_tensor(mapping, dtype=torch.long))


def rm_soft_embeds(y: torch.Tensor, rm_embed: torch.Tensor, mapping: list[int]) -> torch.Tensor:
    """``[..., V_lm] @ [V_lm, H]`` → ``[..., H]``."""
    return torch.matmul(y.to(rm_embed.dtype), aligned_rm_embed(rm_embed, mapping))
