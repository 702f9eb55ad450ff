"""Tiny random Hugging Face PyTorch models, one per supported family, for parity tests."""

from __future__ import annotations

import torch
import transformers as tr

VOCAB = 101
PAD = 0
MATRIX_SCALE = 6.0


def hf_config(family: str, *, kv_heads: int = 2, tied: bool = False, num_labels: int = 1, **kw):
    """A tiny config of ``family``; ``kv_heads`` 4 = full attention, 2 = GQA, 1 = MQA."""
    common = dict(
        vocab_size=VOCAB,
        pad_token_id=PAD,
        eos_token_id=2,
        bos_token_id=1,
        num_labels=num_labels,
        tie_word_embeddings=tied,
    )
    decoder = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=128,
    )
    if family == "llama":
        rope = {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
            "rope_theta": 500000.0,
        }
        return tr.LlamaConfig(**common, **decoder, rope_scaling=rope, **kw)
    if family == "qwen2":
        return tr.Qwen2Config(**common, **decoder, **kw)
    if family == "qwen3":
        return tr.Qwen3Config(**common, **decoder, head_dim=8, **kw)
    if family == "mistral":
        return tr.MistralConfig(**common, **decoder, sliding_window=4, **kw)
    if family == "gpt2":
        common["tie_word_embeddings"] = True
        return tr.GPT2Config(**common, n_embd=32, n_layer=2, n_head=4, n_positions=128, **kw)
    raise ValueError(family)


def hf_model(family: str, head: str = "lm", seed: int = 0, **kw):
    """A random HF PyTorch model (float32, eval mode) of ``family`` with an "lm" or "score" head."""
    torch.manual_seed(seed)
    cfg = hf_config(family, **kw)
    auto = tr.AutoModelForCausalLM if head == "lm" else tr.AutoModelForSequenceClassification
    model = auto.from_config(cfg).eval()
    sharpen_(model)
    return model


def sharpen_(model, scale: float = MATRIX_SCALE) -> None:
    """Move a fresh model's weights far from the init, in place: every matrix ×``scale`` (std
    0.02 → 0.12), norm weights uniform in [0.5, 1.5], biases N(0, 0.1). The init's near-uniform
    attention and ≈0 logits hide wrong positions or norms; after this, attention is clearly
    non-uniform and logits span several units (``tests/test_models.py`` checks both)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.mul_(scale)
            elif name.endswith("weight"):  # 1-D weights are norm scales
                p.uniform_(0.5, 1.5)
            else:
                p.copy_(0.1 * torch.randn_like(p))


def save_chat_pair(lm_dir, rm_dir, *, hidden=32, heads=4, kv_heads=2, intermediate=64, seed=0):
    """A tiny random Qwen2 LM and reward model sharing a ChatML tokenizer, saved as HF dirs."""
    from tests.tokenizer_utils import make_chatml_tokenizer

    tok = make_chatml_tokenizer()
    common = dict(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=2,
    )
    tr.set_seed(seed)
    tr.Qwen2ForCausalLM(tr.Qwen2Config(**common)).save_pretrained(lm_dir)
    tok.save_pretrained(lm_dir)
    tr.Qwen2ForSequenceClassification(tr.Qwen2Config(num_labels=1, **common)).save_pretrained(
        rm_dir
    )
    tok.save_pretrained(rm_dir)


def saved_qwen2_pair(directory, lm_seed: int = 11, rm_seed: int = 12):
    """``(lm_torch, rm_torch, lm, rm)``: a random Qwen2 LM and reward model as HF torch models,
    saved to ``directory`` and loaded back as nabla-jax models (same weights on both sides)."""
    import nabla_jax as nj

    lm_t, rm_t = hf_model("qwen2", "lm", seed=lm_seed), hf_model("qwen2", "score", seed=rm_seed)
    lm_t.save_pretrained(directory / "lm")
    rm_t.save_pretrained(directory / "rm")
    return lm_t, rm_t, nj.load_causal_lm(directory / "lm"), nj.load_reward_model(directory / "rm")
