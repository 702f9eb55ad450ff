"""Serialized programs (nabla_jax.runtime.exported): a later process reads the decode loop back
instead of tracing and lowering it, with the same tokens; keys, damaged files and donation."""

from __future__ import annotations

import json
import os
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nabla_jax.runtime.exported import SUFFIX, ProgramStore, default_store
from nabla_jax.runtime.profiling import track
from tests import subproc


def _affine(params, x, key):
    noise = jax.random.normal(key, x.shape)
    return {"y": params["w"] * x + params["b"] + 0 * noise, "n": noise}


def _args(n=3):
    params = {"w": jnp.full((n,), 2.0), "b": jnp.arange(n, dtype=jnp.float32)}
    return params, jnp.ones((n,)), jax.random.key(1)


def _out_tree(n=3):
    return jax.tree.structure({"y": jnp.zeros(n), "n": jnp.zeros(n)})


def test_a_new_store_reads_the_program_back_without_tracing(tmp_path):
    args = _args()
    first = ProgramStore(tmp_path)
    got = first.call("affine", _affine, args, static="s", out_tree=_out_tree())
    want = _affine(*args)
    np.testing.assert_array_equal(got["y"], want["y"])
    np.testing.assert_array_equal(got["n"], want["n"])  # the typed key travelled as key data
    assert first.log == [("affine", "exported")]
    assert len(list(tmp_path.glob(f"affine-*{SUFFIX}"))) == 1
    first.call("affine", _affine, args, static="s", out_tree=_out_tree())
    assert first.log[-1] == ("affine", "memory")

    second = ProgramStore(tmp_path)  # what a new process holds
    with track() as t:
        again = second.call("affine", _affine, args, static="s", out_tree=_out_tree())
    assert second.log == [("affine", "loaded")]
    assert "affine" not in t.seconds_by_program  # never traced nor lowered
    np.testing.assert_array_equal(again["y"], want["y"])


def test_results_fed_back_do_not_compile_the_program_again(tmp_path):
    """A loop's second chunk passes the first chunk's results (committed device arrays) where the
    first passed numpy and uncommitted arrays: the same compiled program must serve both."""
    store = ProgramStore(tmp_path)
    params = {"w": np.full((3,), 2.0, np.float32), "b": np.arange(3, dtype=np.float32)}
    with track() as t:
        out = store.call("affine", _affine, (params, np.ones(3, np.float32), jax.random.key(1)),
                         static="s", out_tree=_out_tree())  # fmt: skip
    assert t.compiles >= 1
    with track() as t:
        again = store.call("affine", _affine, ({"w": out["y"], "b": out["n"]}, out["y"],
                           jax.random.key(2)), static="s", out_tree=_out_tree())  # fmt: skip
    assert t.compiles == 0 and t.lowered == 0, (t.compiles, t.lowered)
    np.testing.assert_allclose(again["y"], out["y"] * out["y"] + out["n"], rtol=1e-6)


def test_the_key_follows_shapes_and_static_settings(tmp_path):
    store = ProgramStore(tmp_path)
    store.call("affine", _affine, _args(3), static="s", out_tree=_out_tree(3))
    store.call("affine", _affine, _args(4), static="s", out_tree=_out_tree(4))
    store.call("affine", _affine, _args(3), static="other", out_tree=_out_tree(3))
    assert [how for _, how in store.log] == ["exported"] * 3
    assert len(list(tmp_path.glob(f"*{SUFFIX}"))) == 3
    assert not list(tmp_path.glob("*.tmp"))  # written by rename, nothing left half-done


def test_a_damaged_file_is_reported_and_exported_again(tmp_path):
    ProgramStore(tmp_path).call("affine", _affine, _args(), static="s", out_tree=_out_tree())
    (path,) = tmp_path.glob(f"*{SUFFIX}")
    path.write_bytes(b"not a program")
    store = ProgramStore(tmp_path)
    with pytest.warns(UserWarning, match="unreadable"):
        got = store.call("affine", _affine, _args(), static="s", out_tree=_out_tree())
    assert store.log == [("affine", "exported")]
    np.testing.assert_array_equal(got["y"], _affine(*_args())["y"])
    assert (
        ProgramStore(tmp_path).call("affine", _affine, _args(), static="s", out_tree=_out_tree())
        is not None
        and path.read_bytes() != b"not a program"
    )


def test_donated_arguments_are_consumed(tmp_path):
    store = ProgramStore(tmp_path)
    params, x, key = _args()
    store.call("affine", _affine, (params, x, key), static="s", out_tree=_out_tree(),
               donate=(1,))  # fmt: skip
    assert x.is_deleted() and not params["w"].is_deleted()


def test_no_store_without_the_xla_cache(monkeypatch, tmp_path):
    from nabla_jax.runtime import compilation_cache

    monkeypatch.setattr(compilation_cache, "directory", lambda: None)
    assert default_store() is None
    monkeypatch.setattr(compilation_cache, "directory", lambda: str(tmp_path / "xla"))
    assert default_store().directory == tmp_path / "xla-exported"
    assert default_store() is default_store()  # a second decoder finds what the first read


# A child process: decode two prompts with a tiny random pair; the store's log, what was traced,
# and the tokens.
CHILD = textwrap.dedent(
    """
    import json, sys, jax
    import nabla_jax as nj
    from nabla_jax.runtime.profiling import track
    from tests.tiny_decode import PROMPTS, TINY_DECODE
    lm, rm = nj.load_causal_lm(sys.argv[1]), nj.load_reward_model(sys.argv[2])
    dec = nj.NablaDecoder(lm, rm, TINY_DECODE)
    with track() as t:
        out = dec.generate(PROMPTS[:2], jax.random.key(0))
    print(json.dumps(dict(log=dec.programs.log if dec.programs is not None else None,
                          programs=sorted(t.seconds_by_program), hits=t.cache_hits,
                          tokens=[r.token_ids for r in out], stats=[r.stats for r in out])))
    """
)


def _child(cache: str, lm_dir, rm_dir) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NABLA_JAX_", "JAX_COMP"))}
    env.update(NABLA_JAX_CACHE_DIR=cache, PYTHONPATH=os.getcwd())
    out = subproc.run([sys.executable, "-c", CHILD, str(lm_dir), str(rm_dir)], env=env,
                      timeout=600, cwd=os.getcwd())  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_second_process_neither_traces_nor_compiles_the_loop(tmp_path):
    from tests.hf_models import save_chat_pair

    lm_dir, rm_dir = tmp_path / "lm", tmp_path / "rm"
    save_chat_pair(lm_dir, rm_dir)
    cache = str(tmp_path / "xla")
    first = _child(cache, lm_dir, rm_dir)
    assert first["log"][0] == ["run_chunk", "exported"]
    assert all(how == "memory" for _, how in first["log"][1:])  # one bucket, one program
    assert "run_chunk" in first["programs"]  # traced once, to be exported
    second = _child(cache, lm_dir, rm_dir)
    assert second["log"][0] == ["run_chunk", "loaded"]
    assert all(how in ("loaded", "memory") for _, how in second["log"])
    assert "run_chunk" not in second["programs"]  # the loop was neither traced nor lowered
    assert second["hits"] >= 1  # and its XLA executable came from the persistent cache
    assert second["tokens"] == first["tokens"] and second["stats"] == first["stats"]
    plain = _child("off", lm_dir, rm_dir)  # the jitted loop, no store: the same decode
    assert plain["log"] is None and plain["tokens"] == first["tokens"]
    assert plain["stats"] == first["stats"]


# A child process: greedy and sampled rollouts of two prompts with a tiny random LM.
ROLLOUT_CHILD = textwrap.dedent(
    """
    import json, sys, jax
    import numpy as np
    import nabla_jax as nj
    from nabla_jax.decoding.generate import generate_padded
    from nabla_jax.decoding.sampling import SamplingConfig
    from nabla_jax.runtime import compilation_cache, exported
    from nabla_jax.runtime.profiling import track
    compilation_cache.use_default()  # as the command line does
    lm = nj.load_causal_lm(sys.argv[1])
    ids = np.array([[0, 5, 6, 7], [9, 8, 7, 6]], np.int32)
    mask = np.array([[0, 1, 1, 1], [1, 1, 1, 1]], np.int32)
    keys = jax.random.split(jax.random.key(3), 2)
    with track() as t:
        out = [generate_padded(lm, ids, mask, keys, max_new_tokens=6, sampling=s).tokens.tolist()
               for s in (SamplingConfig(temperature=0.0), SamplingConfig(temperature=1.0))]
    store = exported.default_store()
    print(json.dumps(dict(log=store.log if store is not None else None,
                          programs=sorted(t.seconds_by_program), tokens=out)))
    """
)


def _rollout_child(cache: str, lm_dir) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NABLA_JAX_", "JAX_COMP"))}
    env.update(NABLA_JAX_CACHE_DIR=cache, PYTHONPATH=os.getcwd())
    out = subproc.run([sys.executable, "-c", ROLLOUT_CHILD, str(lm_dir)], env=env, timeout=600,
                      cwd=os.getcwd())  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_second_process_reads_the_rollout_program_back(tmp_path):
    from tests.hf_models import save_chat_pair

    lm_dir, rm_dir = tmp_path / "lm", tmp_path / "rm"
    save_chat_pair(lm_dir, rm_dir)
    cache = str(tmp_path / "xla")
    first = _rollout_child(cache, lm_dir)
    # Greedy and sampled are two programs (the sampling filters are static).
    assert [how for _, how in first["log"]] == ["exported", "exported"]
    second = _rollout_child(cache, lm_dir)
    assert [how for _, how in second["log"]] == ["loaded", "loaded"]
    assert "_generate_body" not in second["programs"]
    assert "generate" not in second["programs"]  # neither traced nor lowered again
    plain = _rollout_child("off", lm_dir)  # the jitted path, no store
    assert plain["log"] is None and "_generate_body" in plain["programs"]
    assert second["tokens"] == first["tokens"] == plain["tokens"]
