"""Reruns on tiny random models: ``decode --output`` resumes after the rows already written and
gives the rows a fresh run gives; every prompt is checked before the first model call; a bench
is extended to more problems without repeating a row; loading failures are named."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from nabla_jax.app import cli
from tests.cli_helpers import cli_fails as _fails
from tests.cli_helpers import model_args as _common
from tests.cli_helpers import small_pair

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return small_pair(tmp_path_factory.mktemp("pair"))


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_decode_resumes_after_the_rows_already_written(pair, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"question": f"Add {i} and {i}."}) + "\n"
                               for i in range(3)))  # fmt: skip
    out = tmp_path / "o.jsonl"
    argv = ["decode", "--prompts", str(prompts), "--output", str(out), *_common(pair)]
    assert cli.main(argv) == 0
    full = out.read_text()
    # A run killed after its first row (the rest lost, the last line torn mid-write).
    head, first, *_ = full.splitlines(keepends=True)
    out.write_text(head + first + '{"id": "p-1", "pro')
    capsys.readouterr()
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "removed a torn last line" in captured.err
    assert "wrote 2 responses" in captured.out and "(1 already there)" in captured.out
    assert out.read_text() == full  # the same rows a run from scratch wrote, none twice
    # Everything there: a rerun decodes nothing and changes nothing.
    assert cli.main(argv) == 0
    assert "wrote 0 responses" in capsys.readouterr().out
    assert out.read_text() == full


def test_every_prompt_is_checked_before_the_first_model_call(pair, tmp_path, capsys):
    lines = [json.dumps({"question": f"What is {i}+1?"}) for i in range(11)]
    lines.insert(3, "")  # a blank line: the file line is not the prompt index
    lines.append(json.dumps({"id": "long-one", "question": "word " * 300}))  # line 13
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(lines) + "\n")
    out = tmp_path / "o.jsonl"
    argv = ["decode", "--prompts", str(prompts), "--output", str(out), *_common(pair)]
    err = _fails(argv, capsys, f"{prompts}: line 13 (id 'long-one'): its LM input")
    assert "prompt 11" not in err
    # Nothing was decoded, and the output holds no row.
    assert not out.exists() or all("_provenance" in r for r in _lines(out))


def test_bench_is_extended_to_more_problems(pair, tmp_path, capsys):
    out = tmp_path / "acc.jsonl"
    argv = ["bench", "accuracy", "--methods", "greedy", "--output", str(out), "--no-progress",
            *_common(pair), "--num-problems"]  # fmt: skip
    assert cli.main([*argv, "2"]) == 0
    first = _lines(out)[1:]
    capsys.readouterr()
    assert cli.main([*argv, "3"]) == 0
    assert "extending the recorded run from 2 to 3 problems" in capsys.readouterr().err
    header, *rows = _lines(out)
    assert len(header["_provenance"]["problems"]) == 3
    assert rows[:2] == first and len(rows) == 3
    assert len({r["problem_id"] for r in rows}) == 3
    summary = json.loads((tmp_path / "acc.summary.json").read_text())
    assert summary["greedy"]["n"] == 3


# -- loading failures named ------------------------------------------------------------------


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_tokenizer_json_is_named(pair, tmp_path, capsys):
    lm = _copy(pair / "lm", tmp_path / "lm")
    os.remove(lm / "tokenizer.json")
    _fails(["decode", "--prompt", "hi", *_common(pair, lm=lm)], capsys,
           f"{os.path.join(lm, 'tokenizer.json')} is missing")  # fmt: skip
    rm = _copy(pair / "rm", tmp_path / "rm")
    os.remove(rm / "tokenizer.json")
    err = _fails(["decode", "--prompt", "hi", *_common(pair, rm=rm)], capsys,
                 f"{os.path.join(rm, 'tokenizer.json')} is missing")  # fmt: skip
    assert "mismatch" not in err and "do not share" not in err
    bare = _copy(pair / "lm", tmp_path / "bare")
    for name in os.listdir(bare):
        if "token" in name or name == "special_tokens_map.json":
            os.remove(bare / name)
    _fails(["decode", "--prompt", "hi", *_common(pair, lm=bare)], capsys,
           "has no tokenizer (no tokenizer.json)")  # fmt: skip


def test_config_vocab_size_that_disagrees_with_the_weights_is_named(pair, tmp_path, capsys):
    import nabla_jax as nj

    lm = _copy(pair / "lm", tmp_path / "lm")
    cfg = json.loads((lm / "config.json").read_text())
    cfg["vocab_size"] += 7
    (lm / "config.json").write_text(json.dumps(cfg))
    err = _fails(["decode", "--prompt", "hi", *_common(pair, lm=lm)], capsys,
                 f"config.json says vocab_size={cfg['vocab_size']} but the weights")  # fmt: skip
    assert "RM" not in err
    with pytest.raises(ValueError, match=f"config.json says vocab_size={cfg['vocab_size']}"):
        nj.load_causal_lm(lm)


def test_truncated_safetensors_is_named(pair, tmp_path):
    import nabla_jax as nj

    lm = _copy(pair / "lm", tmp_path / "lm")
    weights = lm / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])  # header intact, data cut short
    with pytest.raises(
        ValueError, match=rf"{weights}: not a readable safetensors file .*truncated"
    ):
        nj.load_causal_lm(lm)


def test_bench_ctrl_c_says_how_far_it_got(pair, tmp_path, capsys, monkeypatch):
    from types import SimpleNamespace

    from nabla_jax.decoding import registry

    calls = []

    def runner(*args, **kw):
        def run(prompts, key):
            calls.append(len(prompts))
            if len(calls) > 1:  # Ctrl-C during the second batch
                raise KeyboardInterrupt
            return [
                SimpleNamespace(text="Answer: 1", stats={"model_calls": 1}, trace=None)
                for _ in prompts
            ]

        return run

    monkeypatch.setattr(registry, "method_runner", runner)
    out = tmp_path / "acc.jsonl"
    argv = ["bench", "accuracy", "--methods", "greedy", "--num-problems", "4", "--batch-size",
            "2", "--output", str(out), "--no-progress", *_common(pair)]  # fmt: skip
    capsys.readouterr()
    assert cli.main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"nabla-jax: interrupted: wrote 2 of 4 rows to {out}; rerun the same command to resume"
    )
    assert len(_lines(out)) == 1 + 2
    assert not os.path.exists(tmp_path / ".acc.jsonl.lock")  # the lock went with the run
