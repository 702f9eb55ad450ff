"""Mesh specs, partition rules and sharded loading; the multi-device check runs in a subprocess."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

import nabla_jax as nj
from nabla_jax import sharding
from nabla_jax.models.model import param_shapes
from nabla_jax.models.registry import config_from_hf
from tests.hf_models import hf_config, hf_model
from tests.subproc import run as run_killing_group

REPO = Path(__file__).resolve().parents[1]


# -- mesh specs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, n, want",
    [
        (None, 8, (8, 1)),
        ("data=4,model=2", 8, (4, 2)),
        (" model = 2 ", 8, (4, 2)),
        ("data=2", 8, (2, 4)),
        ({"data": -1, "model": 4}, 8, (2, 4)),
        ({"model": -1}, 8, (1, 8)),
        ({"data": -1}, 8, (8, 1)),
        ((1, 8), 8, (1, 8)),
        ([2, -1], 6, (2, 3)),
        ({}, 1, (1, 1)),
    ],
)
def test_parse_mesh_spec(spec, n, want):
    got = sharding.parse_mesh_spec(spec, n)
    assert (got["data"], got["model"]) == want


@pytest.mark.parametrize(
    "spec, n, match",
    [
        ("data=4,model=4", 8, r"needs 16 devices but 8 are available"),
        ({"data": 2, "model": 2}, 8, r"needs 4 devices but 8 are available"),
        ({"model": 3}, 8, r"model=3 does not divide the 8 available devices"),
        ("data=-1,model=-1", 8, r"only one mesh axis may be -1"),
        ("tensor=2", 8, r"unknown mesh axes \['tensor'\]"),
        ("data:2", 8, r"is not 'axis=size'"),
        ("data=two", 8, r"give an integer"),
        ({"data": 0}, 8, r"sizes are ≥ 1"),
        ((1, 2, 4), 8, r"\(data, model\)"),
        (8, 8, r"mesh spec must be"),
        ("data=2,data=4", 8, r"twice"),
    ],
)
def test_parse_mesh_spec_errors(spec, n, match):
    with pytest.raises(ValueError, match=match):
        sharding.parse_mesh_spec(spec, n)


def test_make_mesh_on_the_available_devices():
    mesh = sharding.make_mesh()
    assert mesh.axis_names == ("data", "model")
    assert dict(mesh.shape) == {"data": jax.device_count(), "model": 1}
    assert tuple(mesh.axis_types) == (AxisType.Auto, AxisType.Auto)
    one = sharding.make_mesh("data=1,model=1", devices=jax.devices()[:1])
    assert one.devices.size == 1
    with pytest.raises(ValueError, match=rf"but {jax.device_count()} are available"):
        sharding.make_mesh({"data": 2 * jax.device_count(), "model": 1})


def test_batch_divisibility_error_names_sizes():
    mesh = SimpleNamespace(shape={"data": 4, "model": 2})
    sharding.check_batch_divisible(8, mesh)
    sharding.check_batch_divisible(3, None)
    with pytest.raises(ValueError, match=r"batch_size=6 is not divisible by .*data axis size 4"):
        sharding.check_batch_divisible(6, mesh)


# -- partition rules --------------------------------------------------------------------------


def _specs(family, m, head="lm", kv_heads=2, tied=False, **overrides):
    raw = hf_config(family, kv_heads=kv_heads, tied=tied).to_dict()
    raw.update(overrides)
    cfg = config_from_hf(raw)
    shapes = param_shapes(cfg, "float32", head)
    specs = sharding.param_partition_specs(cfg, shapes, model_axis_size=m)
    flat = jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, P))
    leaves = jax.tree_util.tree_leaves_with_path(shapes)
    assert len(flat) == len(leaves)
    for (path, spec), (_, leaf) in zip(flat, leaves):
        assert isinstance(spec, P) and len(spec) <= len(leaf.shape), path
        for axis, name in enumerate(spec):
            if name is not None:
                assert leaf.shape[axis] % m == 0, (path, leaf.shape, spec)
    return {jax.tree_util.keystr(p, simple=True, separator="/"): s for p, s in flat}


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral"])
@pytest.mark.parametrize("head", ["lm", "score"])
def test_decoder_rules_cover_every_parameter(family, head):
    specs = _specs(family, 2, head, kv_heads=2)
    assert specs["layers/self_attn/q_proj/kernel"] == P(None, None, "model")
    assert specs["layers/self_attn/k_proj/kernel"] == P(None, None, "model")  # 2 kv heads / 2
    assert specs["layers/self_attn/o_proj/kernel"] == P(None, "model", None)
    assert specs["layers/mlp/gate_proj/kernel"] == P(None, None, "model")
    assert specs["layers/mlp/up_proj/kernel"] == P(None, None, "model")
    assert specs["layers/mlp/down_proj/kernel"] == P(None, "model", None)
    assert specs["layers/input_layernorm/scale"] == P()
    assert specs["norm/scale"] == P()
    assert specs["embed_tokens"] == P()  # vocab 101 does not divide by 2: replicated
    if head == "score":
        assert specs["score"] == P()
    elif family != "gpt2":
        assert specs["lm_head"] == P()
    if family == "qwen2":
        assert specs["layers/self_attn/q_proj/bias"] == P(None, "model")
    if family == "qwen3":
        assert specs["layers/self_attn/q_norm/scale"] == P()


def test_kv_heads_replicate_when_they_do_not_divide():
    specs = _specs("qwen2", 4, kv_heads=2)
    assert specs["layers/self_attn/q_proj/kernel"] == P(None, None, "model")
    assert specs["layers/self_attn/q_proj/bias"] == P(None, "model")
    assert specs["layers/self_attn/k_proj/kernel"] == P()
    assert specs["layers/self_attn/v_proj/bias"] == P()


def test_vocab_splits_when_it_divides():
    specs = _specs("qwen2", 2, vocab_size=128)
    assert specs["embed_tokens"] == P("model", None)
    assert specs["lm_head"] == P(None, "model")
    tied = _specs("llama", 4, vocab_size=128, tied=True)
    assert tied["embed_tokens"] == P("model", None) and "lm_head" not in tied


def test_gpt2_fused_qkv_is_row_parallel():
    specs = _specs("gpt2", 2, vocab_size=128)
    assert specs["h/attn/c_attn/kernel"] == P(None, "model", None)  # [L, D, 3D] split on D
    assert specs["h/attn/c_attn/bias"] == P()  # fused [q|k|v] axis never split
    assert specs["h/attn/c_proj/kernel"] == P(None, "model", None)
    assert specs["h/c_fc/kernel"] == P(None, None, "model")
    assert specs["h/c_fc/bias"] == P(None, "model")
    assert specs["h/c_proj/kernel"] == P(None, "model", None)
    assert specs["h/c_proj/bias"] == P() and specs["wpe"] == P()
    assert specs["wte"] == P("model", None)


def test_model_axis_that_does_not_divide_heads_is_refused():
    # 4 heads, intermediate 64: model=8 splits neither; the message says which sizes would.
    with pytest.raises(ValueError, match=r"does not divide num_heads=4.*one of \[1, 2, 4\]"):
        _specs("qwen2", 8)
    with pytest.raises(ValueError, match=r"intermediate_size=66.*one of \[1, 2\]"):
        _specs("qwen2", 4, intermediate_size=66)


def test_every_leaf_needs_a_rule():
    cfg = config_from_hf(hf_config("qwen2"))
    shapes = dict(param_shapes(cfg))
    shapes["mystery"] = jax.ShapeDtypeStruct((3,), np.float32)
    with pytest.raises(ValueError, match=r"no partition rule for parameter 'mystery'"):
        sharding.param_partition_specs(cfg, shapes)


# -- sharded loading on one device ------------------------------------------------------------


@pytest.mark.parametrize("family, head", [("qwen2", "lm"), ("qwen3", "score"), ("gpt2", "lm")])
def test_mesh_loading_equals_host_loading(tmp_path, family, head):
    hf_model(family, head, seed=3).save_pretrained(tmp_path)
    load = nj.load_causal_lm if head == "lm" else nj.load_reward_model
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    plain = load(tmp_path, tokenizer=False)
    sharded = load(tmp_path, tokenizer=False, mesh=mesh)
    for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(sharded.params)):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert isinstance(b.sharding, jax.sharding.NamedSharding)
    bf16 = load(tmp_path, "bfloat16", tokenizer=False, mesh=mesh)
    assert all(x.dtype == jax.numpy.bfloat16 for x in jax.tree.leaves(bf16.params))
    moved = sharding.shard_model(plain, mesh)
    assert type(moved) is type(plain) and moved.config == plain.config
    assert sharding.shard_model(plain, None) is plain


@pytest.mark.parametrize(
    "edit, match",
    [
        ({"hidden_size": 64}, r"shape .* does not fit"),
        ({"tie_word_embeddings": True}, r"lm_head.weight differs from"),
        ({"num_hidden_layers": 3}, r"layers \[2\]"),
    ],
)
def test_mesh_loading_is_as_strict_as_host_loading(tmp_path, edit, match):
    hf_model("qwen2", "lm", seed=4).save_pretrained(tmp_path)
    cfg_path = tmp_path / "config.json"
    raw = json.loads(cfg_path.read_text())
    raw.update(edit)
    cfg_path.write_text(json.dumps(raw))
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    with pytest.raises(nj.CheckpointMismatchError, match=match):
        nj.load_causal_lm(tmp_path, tokenizer=False, mesh=mesh)


# -- multi-device: a subprocess with 8 host devices --------------------------------------------


@pytest.mark.slow
def test_sharded_load_and_refine_on_eight_devices(tmp_path):
    from tests.sharding_check import save_models

    save_models(tmp_path)
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
    env.pop("CUDA_VISIBLE_DEVICES", None)
    t0 = time.time()
    proc = run_killing_group(
        [sys.executable, "-m", "tests.sharding_check", str(tmp_path)],
        cwd=REPO,
        env=env,
        timeout=600,
    )
    out = proc.stdout + "\n" + proc.stderr[-4000:]
    assert proc.returncode == 0 and "SHARDING-CHECK OK" in proc.stdout, (
        f"tests/sharding_check.py failed (rc {proc.returncode}, {time.time() - t0:.0f}s):\n{out}"
    )
