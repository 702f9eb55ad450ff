"""The persistent compilation cache: where it lives, who wins, and that a new process reuses it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from nabla_jax.app.config_io import ConfigError, load_run_config
from nabla_jax.runtime import compilation_cache

# A child process: one rollout program of a tiny random model, then what the cache did.
CHILD = textwrap.dedent(
    """
    import json, numpy as np, jax
    import nabla_jax as nj
    from nabla_jax.runtime import compilation_cache, profiling
    from nabla_jax.decoding import SamplingConfig, generate_padded
    from tests.hf_models import hf_config
    assert compilation_cache.directory() == jax.config.jax_compilation_cache_dir
    compilation_cache.use_default()  # what NablaDecoder and the command line do
    lm = nj.init_causal_lm(hf_config("qwen2"), jax.random.key(0))
    ids = np.arange(3, 11, dtype=np.int32)[None]
    with profiling.track() as t:
        out = generate_padded(lm, ids, np.ones_like(ids), None, max_new_tokens=6,
                              sampling=SamplingConfig(temperature=0.0))
        jax.block_until_ready(out.tokens)
    print(json.dumps(dict(dir=compilation_cache.directory(), hits=t.cache_hits,
                          compiles=t.compiles)))
    """
)


def _child(env_extra: dict, tmp_path) -> dict:
    import json

    env = {k: v for k, v in os.environ.items() if not k.startswith(("NABLA_JAX_", "JAX_COMP"))}
    env.update(env_extra, PYTHONPATH=os.getcwd())
    out = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=240,
        cwd=os.getcwd(),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_second_process_loads_its_programs_from_the_cache(tmp_path):
    cache = tmp_path / "xla"
    first = _child({"NABLA_JAX_CACHE_DIR": str(cache)}, tmp_path)
    assert first["dir"] == str(cache) and first["hits"] == 0 and first["compiles"] >= 1
    assert any(cache.iterdir())
    second = _child({"NABLA_JAX_CACHE_DIR": str(cache)}, tmp_path)
    assert second["hits"] >= 1  # the rollout program came from disk
    # JAX's own setting wins over nabla-jax's default; "off" turns it off.
    own = tmp_path / "jax-own"
    theirs = _child({"JAX_COMPILATION_CACHE_DIR": str(own)}, tmp_path)
    assert theirs["dir"] == str(own)
    assert _child({"NABLA_JAX_CACHE_DIR": "off"}, tmp_path)["dir"] is None


def test_default_directory_rules(monkeypatch, tmp_path):
    monkeypatch.delenv(compilation_cache.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compilation_cache.default_directory() == tmp_path / "nabla-jax" / "xla"
    monkeypatch.setenv(compilation_cache.ENV_VAR, str(tmp_path / "mine"))
    assert compilation_cache.default_directory() == tmp_path / "mine"
    for off in ("off", "0", "", "none"):
        monkeypatch.setenv(compilation_cache.ENV_VAR, off)
        assert compilation_cache.default_directory() is None


def test_run_config_switch(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("compilation_cache: false\n")
    assert load_run_config(path)["compilation_cache"] is False
    path.write_text("compilation_cache: maybe\n")
    with pytest.raises(ConfigError, match="compilation_cache must be true or false"):
        load_run_config(path)
