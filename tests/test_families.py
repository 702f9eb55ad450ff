"""Each family's key table against real Hugging Face models: the key sets correspond in both
directions, and export(import(state dict)) gives back every tensor bit for bit."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import transformers as tr

import nabla_jax as nj
from nabla_jax.models.config import ModelConfig, UnsupportedModelError
from nabla_jax.models.convert import convert_tensors, flatten_tree, to_device
from nabla_jax.models.export import export_tensors, to_hf_dict
from nabla_jax.models.family import ModelFamily
from nabla_jax.models.keys import KeyRow, KeyTable
from nabla_jax.models.model import CausalLM, RewardModel, param_shapes
from nabla_jax.models.registry import FAMILIES, SUPPORTED_MODEL_TYPES, config_from_hf, family_of
from tests.hf_models import hf_config, sharpen_

MODEL_TYPES = ["llama", "qwen2", "qwen3", "mistral", "gpt2"]
CASES = [(t, head, tied) for t in MODEL_TYPES for head in ("lm", "score") for tied in (False, True)]


def _hf(model_type: str, head: str, tied: bool, seed: int = 0):
    """A tiny random HF model (weights moved off the init so that equal values mean something)."""
    torch.manual_seed(seed)
    cfg = hf_config(model_type, tied=tied)
    cfg.tie_word_embeddings = tied  # hf_config ties GPT-2 always; both cases are wanted here
    auto = tr.AutoModelForCausalLM if head == "lm" else tr.AutoModelForSequenceClassification
    model = auto.from_config(cfg).eval()
    sharpen_(model)
    return model


def _state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _our_names(cfg: ModelConfig, head: str) -> set[str]:
    """Every checkpoint name the family's table writes for the model ``cfg`` / ``head``."""
    table = family_of(cfg).keys
    shapes = flatten_tree(param_shapes(cfg, "float32", head))
    return {name for path in shapes for name in table.hf_names(path, cfg.num_layers)}


def test_every_model_type_is_tested_and_registered():
    assert sorted(SUPPORTED_MODEL_TYPES) == sorted(MODEL_TYPES)
    assert {f.name for f in FAMILIES} == {"decoder", "gpt2"}


@pytest.mark.parametrize("model_type, head, tied", CASES)
def test_key_sets_correspond_both_ways(model_type, head, tied):
    hf = _hf(model_type, head, tied)
    cfg = config_from_hf(hf.config)
    assert cfg.tie_word_embeddings is tied
    table = family_of(cfg).keys
    hf_keys = {k for k in hf.state_dict() if not table.is_ignored(k)}
    # HF → ours: every tensor routes to a parameter of our model (or is the tied LM head alias).
    ours = _our_names(cfg, head)
    aliases = {a for a, _ in table.tied} if tied and head == "lm" else set()
    assert hf_keys - aliases == ours
    assert aliases <= hf_keys or not aliases  # HF lists the tied head when it has one
    # Each name goes to one row and that row writes the very same name back.
    for key in hf_keys - aliases:
        row, layer = table.route(key)
        assert row.hf_name(layer) == key
        assert table.row_for(row.path) is row


@pytest.mark.parametrize("model_type, head, tied", CASES)
def test_export_of_import_gives_back_every_tensor(model_type, head, tied):
    hf = _hf(model_type, head, tied, seed=1)
    state = _state(hf)
    cfg = config_from_hf(hf.config)
    params = convert_tensors(cfg, state, param_shapes(cfg, "float32", head), "float32")
    model = (CausalLM if head == "lm" else RewardModel)(cfg, to_device(params))
    back = export_tensors(model)
    table = family_of(cfg).keys
    expected = {k for k in state if not table.is_ignored(k) and table.tied_source(k) is None}
    if not tied:
        expected |= {k for k in state if table.tied_source(k) is not None}
    assert set(back) == expected
    for name in expected:
        assert back[name].dtype == np.float32
        np.testing.assert_array_equal(back[name], state[name], err_msg=name)


@pytest.mark.parametrize("model_type, head, tied", CASES)
def test_hf_config_round_trips(model_type, head, tied):
    cfg = config_from_hf(hf_config(model_type, tied=tied))
    if tied != cfg.tie_word_embeddings:
        cfg = dataclasses.replace(cfg, tie_word_embeddings=tied)
    written = to_hf_dict(cfg, head)
    assert config_from_hf(written) == cfg
    # transformers builds the same architecture from it: the same tensor names as our table.
    hf_cfg = tr.AutoConfig.for_model(**written)
    auto = tr.AutoModelForCausalLM if head == "lm" else tr.AutoModelForSequenceClassification
    hf = auto.from_config(hf_cfg)
    table = family_of(cfg).keys
    keys = {k for k in hf.state_dict() if not table.is_ignored(k)}
    keys -= {a for a, _ in table.tied} if tied and head == "lm" else set()
    assert keys == _our_names(cfg, head)


def test_settings_a_family_cannot_write_are_refused():
    gpt2 = config_from_hf(hf_config("gpt2"))
    with pytest.raises(UnsupportedModelError, match="cannot be written as gpt2"):
        to_hf_dict(dataclasses.replace(gpt2, num_kv_heads=2))
    llama = config_from_hf(hf_config("llama"))
    with pytest.raises(UnsupportedModelError, match="q/k norms"):
        to_hf_dict(dataclasses.replace(llama, qk_norm=True))
    with pytest.raises(ValueError, match="head must be"):
        to_hf_dict(llama, "value")


def test_key_table_refuses_duplicates_and_misplaced_layers():
    with pytest.raises(ValueError, match=r"parameter paths \['a'\]"):
        KeyTable((KeyRow("x.weight", "a"), KeyRow("y.weight", "a")))
    with pytest.raises(ValueError, match="more than once"):
        KeyRow("h.{layer}.{layer}.weight", "h/w")
    table = KeyTable((KeyRow("emb", "emb"), KeyRow("h.{layer}.w", "top/w")))
    assert table.route("h.12.w") == (table.rows[1], 12)
    assert table.route("h.x.w") is None and table.route("h.1.w.extra") is None
    assert table.hf_names("top/w", 2) == ["h.0.w", "h.1.w"]
    fields = dict(
        name="toy",
        model_types=("toy",),
        module=object,
        keys=table,
        embedding="emb",
        from_hf_config=None,
        to_hf_config=None,
        partition_rules=None,
        parallel_dims=None,
    )
    with pytest.raises(ValueError, match="disagrees with the layer stack 'h'"):
        ModelFamily(layer_stack="h", **fields)
    assert ModelFamily(layer_stack="top", **fields).name == "toy"


def test_unknown_model_type_names_the_supported_ones():
    with pytest.raises(nj.UnsupportedModelError, match=r"'bert'.*llama, qwen2, qwen3, mistral"):
        config_from_hf({"model_type": "bert", "architectures": ["BertModel"]})
