"""The Python API's edges: a caller's mistake is named as the caller's, in one line, before any
compute — an int for a key, an empty prompt, NaN/inf in refine's start; a UTF-8 BOM in a
prompts, problems or config file is accepted; the coordinator wait is a flag and a config key."""

from __future__ import annotations

import socket
import time

import jax
import numpy as np
import pytest

import nabla_jax as nj
from nabla_jax.app import cli
from nabla_jax.app.config_io import ConfigError, load_run_config
from nabla_jax.decoding.registry import method_runner
from nabla_jax.tasks import math as math_task
from nabla_jax.tasks.problems import load_problems
from tests.tiny_decode import TINY_DECODE, load_chat_pair


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return load_chat_pair(tmp_path_factory)


@pytest.mark.parametrize("key", [0, None, 7.5])
def test_an_int_key_is_a_one_line_type_error(models, key):
    lm, rm = models
    with pytest.raises(TypeError, match=r"pass jax\.random\.key\(0\) \(not 0\)") as e:
        nj.NablaDecoder(lm, rm, TINY_DECODE).generate(["What is 2+2?"], key)
    assert "\n" not in str(e.value)
    if key is not None:  # None: the baselines' own "pass a jax.random key" ValueError
        run = method_runner("bon:2", lm, rm, TINY_DECODE)
        with pytest.raises(TypeError, match=r"jax\.random\.key\(0\)"):
            run(["What is 2+2?"], key)


def test_raw_and_typed_keys_are_accepted(models):
    from nabla_jax.decoding.keys import check_key

    check_key(jax.random.key(0), "t")
    check_key(jax.random.PRNGKey(0), "t")  # raw uint32 [2]


@pytest.mark.parametrize(
    "prompts, where", [([""], "prompt 0"), (["What is 1+1?", "  "], "prompt 1")]
)
def test_an_empty_prompt_is_refused(models, prompts, where):
    lm, rm = models
    with pytest.raises(ValueError, match=f"{where} is empty; give the text to decode"):
        nj.NablaDecoder(lm, rm, TINY_DECODE).generate(prompts, jax.random.key(0))
    with pytest.raises(ValueError, match=f"{where} is empty"):
        method_runner("cot", lm, rm, TINY_DECODE)(prompts, jax.random.key(0))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_init_is_named_as_the_callers_input(bad):
    init = np.zeros((3, 16), np.float32)
    init[1, 4] = bad
    with pytest.raises(
        ValueError,
        match=r"RefineProblem\.init holds 1 NaN/inf value.* at index \(1, 4\)\): this is your in",
    ) as e:
        nj.RefineProblem(lm_prefix_ids=[1, 2], rm_prefix_ids=[], rm_suffix_ids=[], init=init)
    assert "learning_rate" not in str(e.value)


def test_nonfinite_init_logits_of_the_article_sketch(models):
    from nabla_jax.functional.article import optimize_reasoning_sequence

    _, rm = models
    init = np.zeros((2, rm.config.vocab_size), np.float32)
    init[0, 0] = np.nan
    with pytest.raises(ValueError, match="init_logits holds 1 NaN/inf") as e:
        optimize_reasoning_sequence([1], init, None, rm, np.zeros_like(init))
    assert "learning_rate" not in str(e.value)


# -- a UTF-8 BOM ---------------------------------------------------------------------------

BOM = "\ufeff"


def test_bom_in_a_prompts_file_is_accepted(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(BOM + '{"question": "What is 2+2?", "answer": 4}\n', encoding="utf-8")
    assert [p.question for p in load_problems(path)] == ["What is 2+2?"]
    path = tmp_path / "m.json"
    path.write_text(BOM + '[{"problem": "Find $x$.", "answer": "3"}]', encoding="utf-8")
    assert [p.answer for p in math_task.load_problems(path)] == ["3"]


def test_bom_in_a_config_file_is_accepted(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(BOM + "decode: {max_length: 9}\n", encoding="utf-8")
    assert load_run_config(path)["decode"].max_length == 9


def test_problem_location_is_not_part_of_its_value(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"question": "1+1?"}\n\n{"question": "What is 2+2?"}\n', encoding="utf-8")
    _, p = load_problems(path)
    assert p.where == f"{path}: line 3"
    assert p == nj.tasks.Problem(id=p.id, question=p.question) and "where" not in p.to_dict()


# -- the coordinator wait ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fails(argv, capsys, phrase):
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert phrase in err and err.count("\n") == 1, err


def test_coordinator_wait_from_the_flag_and_the_config(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NABLA_COORDINATOR_TIMEOUT", raising=False)
    port = _free_port()
    argv = ["decode", "--prompt", "hi", "--coordinator-address", f"127.0.0.1:{port}",
            "--num-processes", "2", "--process-id", "1"]  # fmt: skip
    t0 = time.monotonic()
    _fails([*argv, "--coordinator-timeout", "1"], capsys, "within 1 s")
    cfg = tmp_path / "run.yaml"
    cfg.write_text("coordinator_timeout: 2\n")
    _fails([*argv, "--config", str(cfg)], capsys, "within 2 s")
    assert time.monotonic() - t0 < 60
    _fails([*argv, "--coordinator-timeout", "0"], capsys, "--coordinator-timeout 0.0 must be")
    cfg.write_text("coordinator_timeout: soon\n")
    with pytest.raises(ConfigError, match="coordinator_timeout must be a number of seconds"):
        load_run_config(cfg)
