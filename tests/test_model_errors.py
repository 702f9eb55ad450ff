"""Every error of loading and calling models: exception type plus a key phrase of the message."""

from __future__ import annotations

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers as tr
from safetensors.torch import save_file

import nabla_jax as nj
from nabla_jax.models.convert import read_safetensors
from tests.hf_models import VOCAB, hf_model
from tests.tokenizer_utils import make_chatml_tokenizer

IDS = np.array([[3, 4, 5, 6]])


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    """One saved random Qwen2 causal LM (untied), shared by the tests (never modified)."""
    path = tmp_path_factory.mktemp("qwen2")
    hf_model("qwen2", "lm").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def lm(qwen_dir):
    return nj.load_causal_lm(qwen_dir)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_config(path, **changes):
    with open(path / "config.json") as f:
        cfg = json.load(f)
    cfg.update(changes)
    with open(path / "config.json", "w") as f:
        json.dump(cfg, f)


def _tensors(path) -> dict[str, torch.Tensor]:
    return {
        k: torch.from_numpy(np.array(v))
        for k, v in read_safetensors(str(path / "model.safetensors")).items()
    }


def _rewrite_weights(path, tensors):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))


# -- loading ---------------------------------------------------------------------------------


def test_missing_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        nj.load_causal_lm(tmp_path / "nope")


def test_missing_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        nj.load_causal_lm(tmp_path)


def test_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 10}))
    with pytest.raises(nj.UnsupportedModelError, match="model_type 'bert'.*not supported"):
        nj.load_causal_lm(tmp_path)


def test_unsupported_rope_type(qwen_dir, tmp_path):
    path = _copy(qwen_dir, tmp_path / "m")
    _edit_config(
        path,
        rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0},
        rope_scaling=None,
    )
    with pytest.raises(nj.UnsupportedModelError, match="rope_type 'yarn' is not supported"):
        nj.load_causal_lm(path)


def test_pickled_weights_need_allow_pickle(qwen_dir, lm, tmp_path):
    model = hf_model("qwen2", "lm")
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="only pickled PyTorch weights.*allow_pickle=True"):
        nj.load_causal_lm(tmp_path)
    pickled = nj.load_causal_lm(tmp_path, allow_pickle=True)
    # the same float32 weights (one HF model, two file formats) through the same program:
    # bit-identical, no tolerance
    np.testing.assert_array_equal(np.asarray(pickled.logits(IDS)), np.asarray(lm.logits(IDS)))


def test_no_weights_at_all(qwen_dir, tmp_path):
    path = _copy(qwen_dir, tmp_path / "m")
    (path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights in"):
        nj.load_causal_lm(path)


def test_extra_checkpoint_key(qwen_dir, tmp_path):
    path = _copy(qwen_dir, tmp_path / "m")
    tensors = _tensors(path)
    tensors["model.layers.0.mystery.weight"] = torch.zeros(3)
    _rewrite_weights(path, tensors)
    with pytest.raises(nj.CheckpointMismatchError, match=r"model\.layers\.0\.mystery\.weight"):
        nj.load_causal_lm(path)


def test_missing_layer_weight(qwen_dir, tmp_path):
    path = _copy(qwen_dir, tmp_path / "m")
    tensors = _tensors(path)
    del tensors["model.layers.1.mlp.down_proj.weight"]
    _rewrite_weights(path, tensors)
    with pytest.raises(
        nj.CheckpointMismatchError, match=r"layers/mlp/down_proj/kernel \(layers \[1\]\)"
    ):
        nj.load_causal_lm(path)


def test_checkpoint_with_more_layers_than_the_config(qwen_dir, tmp_path):
    path = _copy(qwen_dir, tmp_path / "m")
    _edit_config(path, num_hidden_layers=1)  # the checkpoint has layers 0 and 1
    with pytest.raises(nj.CheckpointMismatchError) as err:
        nj.load_causal_lm(path)
    unused = str(err.value).split("checkpoint keys with no parameter:")[1].split("\n")[0]
    assert "model.layers.1.mlp.down_proj.weight" in unused
    assert "model.layers.0." not in unused


def test_wrong_shape(qwen_dir, tmp_path):
    path = _copy(qwen_dir, tmp_path / "m")
    _edit_config(path, hidden_size=64)  # the weights are 32 wide
    with pytest.raises(nj.CheckpointMismatchError, match=r"shape .* does not fit"):
        nj.load_causal_lm(path)


def test_tied_config_with_distinct_head(qwen_dir, tmp_path):
    path = _copy(qwen_dir, tmp_path / "m")
    _edit_config(path, tie_word_embeddings=True)  # but lm_head.weight != embed_tokens
    with pytest.raises(nj.CheckpointMismatchError, match="lm_head.weight differs from"):
        nj.load_causal_lm(path)


def test_reward_loader_on_causal_lm(qwen_dir):
    with pytest.raises(ValueError, match="has no score head"):
        nj.load_reward_model(qwen_dir)


def test_causal_loader_on_reward_model(tmp_path):
    hf_model("qwen2", "score").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="sequence-classification checkpoint.*load_reward_model"):
        nj.load_causal_lm(tmp_path)


def test_bad_dtype(qwen_dir):
    with pytest.raises(ValueError, match="dtype 'float16' is not supported"):
        nj.load_causal_lm(qwen_dir, dtype="float16")


# -- tokenizer -------------------------------------------------------------------------------


def test_no_tokenizer_files(lm):
    assert lm.tokenizer is None


def test_tokenizer_loaded_when_present(tmp_path):
    tok = make_chatml_tokenizer()
    cfg = tr.Qwen2Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    tr.Qwen2ForCausalLM(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = nj.load_causal_lm(tmp_path)
    assert loaded.tokenizer is not None
    assert len(loaded.tokenizer) == len(tok)
    assert loaded.tokenizer.encode("Let's think") == tok.encode("Let's think")
    assert nj.load_causal_lm(tmp_path, tokenizer=False).tokenizer is None


# -- calling ---------------------------------------------------------------------------------


def test_both_or_neither_inputs(lm):
    embeds = jnp.zeros((1, 4, lm.config.hidden_size))
    with pytest.raises(ValueError, match="exactly one of input_ids"):
        lm.logits(IDS, inputs_embeds=embeds)
    with pytest.raises(ValueError, match="exactly one of input_ids"):
        lm.logits()


def test_one_dimensional_ids(lm):
    with pytest.raises(ValueError, match=r"input_ids must be \[B, T\].*add a batch axis"):
        lm.logits(IDS[0])


def test_wrong_embeds_width(lm):
    with pytest.raises(ValueError, match=r"inputs_embeds must be \[B, T, 32\]"):
        lm.logits(inputs_embeds=jnp.zeros((1, 4, 16)))
    with pytest.raises(ValueError, match=r"inputs_embeds must be \[B, T, 32\]"):
        lm.logits(inputs_embeds=jnp.zeros((4, 32)))


def test_attention_mask_shape(lm):
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        lm.logits(IDS, np.ones((1, 5), np.int32))


def test_position_ids_shape(lm):
    with pytest.raises(ValueError, match="position_ids must have shape"):
        lm.logits(IDS, position_ids=np.arange(4))


def test_sequence_too_long(lm):
    n = lm.config.max_position_embeddings + 1
    with pytest.raises(ValueError, match=f"exceeds the model.s {n - 1} positions"):
        lm.logits(np.full((1, n), 3))


def test_ids_out_of_vocab(lm):
    with pytest.raises(ValueError, match="outside the embedding table"):
        lm.logits(np.array([[3, VOCAB]]))
    with pytest.raises(ValueError, match="outside the embedding table"):
        lm.logits(np.array([[-1, 3]]))


def test_positions_beyond_max_positions(lm):
    # A cache may hold more slots than positions (padding); the positions themselves must fit.
    cache = lm.init_cache(1, lm.config.max_position_embeddings + 8)
    with pytest.raises(ValueError, match="exceeds the model's 128 positions"):
        lm.forward(
            IDS, position_ids=np.arange(126, 130)[None], cache=cache,
            key_mask=np.ones((1, cache.max_len), np.int32),
        )  # fmt: skip


def test_cache_without_key_mask(lm):
    cache = lm.init_cache(1, 8)
    with pytest.raises(ValueError, match="needs key_mask"):
        lm.forward(IDS, position_ids=np.arange(4)[None], cache=cache)
    with pytest.raises(ValueError, match=r"key_mask must be \[B, S\]"):
        lm.forward(
            IDS, position_ids=np.arange(4)[None], cache=cache, key_mask=np.ones((1, 4), np.int32)
        )


# -- bad paths and corrupt files: one clear error naming the file, before any compute ----------


def test_path_of_the_wrong_type_or_a_file(qwen_dir):
    with pytest.raises(TypeError, match="path must be a str or os.PathLike.*got int 42"):
        nj.load_causal_lm(42)
    with pytest.raises(FileNotFoundError, match="is a file; pass the model directory"):
        nj.load_causal_lm(qwen_dir / "config.json")


@pytest.mark.parametrize("damage", ["empty", "truncated", "random", "header-garbage"])
def test_corrupt_safetensors_names_the_file(qwen_dir, tmp_path, damage):
    path = _copy(qwen_dir, tmp_path / "m")
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    rng = np.random.RandomState(0)
    weights.write_bytes(
        {
            "empty": b"",
            "truncated": data[: len(data) // 2],
            "random": rng.bytes(4096),
            "header-garbage": data[:8] + b"{not json" + data[17:],
        }[damage]
    )
    with pytest.raises(nj.models.convert.CorruptCheckpointError) as err:
        nj.load_causal_lm(path)
    msg = str(err.value)
    assert str(weights) in msg and ("corrupt" in msg or "truncated" in msg)
    assert "\n" not in msg


def test_corrupt_config_json_names_the_file(qwen_dir, tmp_path):
    path = _copy(qwen_dir, tmp_path / "m")
    (path / "config.json").write_text("")
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON.*corrupt"):
        nj.load_causal_lm(path)


def test_nan_weights_are_found_at_load_time(qwen_dir, tmp_path):
    path = _copy(qwen_dir, tmp_path / "m")
    tensors = {k: torch.tensor(np.array(v)) for k, v in read_safetensors(
        str(qwen_dir / "model.safetensors")).items()}  # fmt: skip
    tensors["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    where = r"\['layers'\]\['mlp'\]\['up_proj'\].*\(layer 1\) holds NaN or inf"
    with pytest.raises(ValueError, match=where):
        nj.load_causal_lm(path)
