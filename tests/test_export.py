"""save_pretrained: nabla-jax models → HF directories that transformers and nj.load_* read."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
import torch
import transformers as tr

import nabla_jax as nj
from nabla_jax.models.convert import read_safetensors
from nabla_jax.models.export import save_pretrained, to_hf_dict
from tests import tolerances as tol
from tests.hf_models import PAD, VOCAB, hf_config


def _randomize(model, seed=0):
    """Every leaf random (norms too), so a mis-mapped or untransposed tensor shows."""
    leaves, tree = jax.tree.flatten(model.params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [
        x + 0.1 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys, strict=True)
    ]
    return model.__class__(model.config, jax.tree.unflatten(tree, new), None, model.dtype)


def _batch():
    rng = np.random.RandomState(0)
    ids = rng.randint(3, VOCAB, size=(3, 10))
    mask = np.ones_like(ids)
    mask[1, :3] = 0  # left padding
    mask[2, 7:] = 0  # right padding
    return np.where(mask > 0, ids, PAD), mask


def _assert_same_params(a, b):
    fa, fb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    assert [p for p, _ in fa] == [p for p, _ in fb]
    for (path, x), (_, y) in zip(fa, fb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


ARCH = {
    "qwen2": "Qwen2ForCausalLM",
    "llama": "LlamaForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "mistral": "MistralForCausalLM",
    "gpt2": "GPT2LMHeadModel",
}
CASES = [
    ("qwen2", False),
    ("qwen2", True),
    ("llama", False),
    ("qwen3", True),
    ("mistral", False),
    ("gpt2", True),
    ("gpt2", False),
]


@pytest.mark.parametrize("family,tied", CASES)
def test_causal_lm_round_trip(tmp_path, family, tied):
    raw = hf_config(family, tied=tied)
    raw.tie_word_embeddings = tied  # hf_config ties GPT-2 always
    lm = _randomize(nj.init_causal_lm(raw, jax.random.key(1)))
    save_pretrained(lm, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architectures"] == [ARCH[family]]
    assert cfg["tie_word_embeddings"] is tied and cfg["torch_dtype"] == "float32"
    names = set(read_safetensors(str(tmp_path / "model.safetensors")))
    assert ("lm_head.weight" in names) is (not tied)

    back = nj.load_causal_lm(tmp_path)
    assert back.config == lm.config
    _assert_same_params(back.params, lm.params)

    ids, mask = _batch()
    ours = np.asarray(lm.logits(ids, mask))
    hf = tr.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert hf.dtype == torch.float32
    with torch.no_grad():
        pos = torch.tensor(np.maximum(mask.cumsum(-1) - 1, 0))
        theirs = hf(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=pos
        ).logits.numpy()
    valid = mask > 0
    # HF's torch forward of the exported weights: another evaluation order of ours
    bound = tol.forward_tolerance(
        lambda m: np.asarray(m.logits(ids, mask))[valid], lm, ids.shape[1]
    )
    tol.assert_within(ours[valid], theirs[valid], bound, "logits")


@pytest.mark.parametrize("family,tied", [("qwen2", True), ("llama", False), ("gpt2", True)])
def test_reward_model_round_trip(tmp_path, family, tied):
    rm = _randomize(nj.init_reward_model(hf_config(family, tied=tied), jax.random.key(2)))
    save_pretrained(rm, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architectures"][0].endswith("ForSequenceClassification")
    assert cfg["num_labels"] == 1 and cfg["pad_token_id"] == PAD
    names = set(read_safetensors(str(tmp_path / "model.safetensors")))
    assert "score.weight" in names and "lm_head.weight" not in names

    back = nj.load_reward_model(tmp_path)
    assert back.config == rm.config
    _assert_same_params(back.params, rm.params)

    ids, mask = _batch()
    ours = np.asarray(rm.score(ids, mask))
    hf = tr.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        # HF pools at the last non-pad token: right-padded rows only (left-padded row 1 would
        # pool at the end, which is a pad), with default positions = arange for them.
        rows = [0, 2]
        theirs = (
            hf(input_ids=torch.tensor(ids[rows]), attention_mask=torch.tensor(mask[rows]))
            .logits[:, 0]
            .numpy()
        )
    bound = tol.forward_tolerance(lambda m: np.asarray(m.score(ids, mask))[rows], rm, ids.shape[1])
    tol.assert_within(ours[rows], theirs, bound, "scores")


def test_tokenizer_files_written(tmp_path):
    from tests.tokenizer_utils import make_chatml_tokenizer

    tok = make_chatml_tokenizer()
    lm = nj.init_causal_lm(hf_config("qwen2"), jax.random.key(0))
    save_pretrained(lm, tmp_path, tokenizer=tok)
    assert (tmp_path / "tokenizer.json").is_file()
    loaded = nj.load_causal_lm(tmp_path)
    assert loaded.tokenizer is not None
    assert loaded.tokenizer.encode("1+2", add_special_tokens=False) == tok.encode(
        "1+2", add_special_tokens=False
    )


def test_setting_a_family_cannot_express_is_named():
    # GPT-2 is exported too now; what its config cannot say (grouped kv heads) is refused.
    lm = nj.init_causal_lm(hf_config("gpt2"), jax.random.key(0))
    cfg = dataclasses.replace(lm.config, num_kv_heads=2)
    with pytest.raises(nj.UnsupportedModelError, match="gpt2"):
        to_hf_dict(cfg)


def test_reward_model_needs_pad_id():
    cfg = hf_config("qwen2")
    cfg.pad_token_id = None
    rm = nj.init_reward_model(cfg, jax.random.key(0))
    with pytest.raises(ValueError, match="pad_token_id"):
        to_hf_dict(rm.config, "score")
