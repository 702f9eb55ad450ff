"""Output files: one writer per file, atomic summaries, whole rows, named write failures, and
outputs that would overwrite an input refused — all before any model loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from nabla_jax.app import cli, evaluation, outputs
from nabla_jax.app.results_file import prepare_results_file, read_results
from tests.cli_helpers import cli_fails as _fails

MISSING = "/no/such/model/dir"


# -- the lock --------------------------------------------------------------------------------


def test_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    out = str(tmp_path / "o.jsonl")
    with outputs.OutputLock(out):
        with pytest.raises(
            outputs.OutputLockedError, match=rf"another nabla-jax run \(pid {os.getpid()}\)"
        ):
            outputs.OutputLock(out).acquire()
    # Released: the sidecar is gone and the lock can be taken again.
    assert not os.path.exists(outputs.lock_path(out))
    with outputs.OutputLock(out):
        pass


def test_lock_of_a_killed_holder_does_not_block(tmp_path):
    out = str(tmp_path / "o.jsonl")
    code = (
        "import os, sys; from nabla_jax.app.outputs import OutputLock; "
        f"OutputLock({out!r}).acquire(); os._exit(0)"  # dies holding it: no release
    )
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env=env)
    assert os.path.exists(outputs.lock_path(out))  # stale sidecar left behind
    with outputs.OutputLock(out):  # the kernel dropped the flock with the process
        pass


@pytest.mark.parametrize("command", ["decode", "bench"])
def test_cli_refuses_an_output_another_run_holds(tmp_path, capsys, command):
    out = tmp_path / "o.jsonl"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"question": "What is 2+2?"}\n')
    argv = (
        ["decode", "--prompts", str(prompts), "--output", str(out), "--lm", MISSING]
        if command == "decode"
        else ["bench", "accuracy", "--methods", "greedy", "--output", str(out), "--lm", MISSING]
    )
    with outputs.OutputLock(str(out)):
        _fails(argv, capsys, f"is being written by another nabla-jax run (pid {os.getpid()})")


# -- whole writes ----------------------------------------------------------------------------


def test_row_writer_names_a_full_disk():
    w = outputs.RowWriter("/dev/full")
    with pytest.raises(outputs.OutputError, match="cannot write /dev/full: the disk is full"):
        w.write({"a": 1})
    w.close()


def test_row_writer_cuts_a_failed_row_back(tmp_path, monkeypatch):
    path = tmp_path / "r.jsonl"
    with outputs.RowWriter(str(path)) as w:
        w.write({"a": 1})
        real = w._f.write

        def half(data):  # the disk fills up half way through the line
            real(data[: len(data) // 2])
            w._f.flush()
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(w._f, "write", half, raising=False)
        with pytest.raises(outputs.OutputError, match=f"{path}: the disk is full"):
            w.write({"b": "x" * 100})
    assert path.read_text() == '{"a": 1}\n'


def test_write_atomic_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    path.write_text("old")

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outputs.os, "fsync", full)
    with pytest.raises(outputs.OutputError, match=f"cannot write {path}: the disk is full"):
        outputs.write_atomic(str(path), "new")
    monkeypatch.undo()
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["summary.json"]  # no temporary file left
    outputs.write_atomic(str(path), "new")
    assert path.read_text() == "new"


# -- outputs checked before models load ------------------------------------------------------


def test_output_equal_to_the_config_is_refused(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("decode: {max_length: 8}\n")
    _fails(["decode", "--prompt", "hi", "--config", str(cfg), "--output", str(cfg), "--lm",
            MISSING], capsys, "is the --config file")  # fmt: skip
    assert cfg.read_text() == "decode: {max_length: 8}\n"
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"question": "What is 1+1?", "answer": 2}\n')
    _fails(["bench", "accuracy", "--methods", "greedy", "--problems", str(problems), "--output",
            str(problems), "--lm", MISSING], capsys, "is the --problems file")  # fmt: skip
    assert problems.read_text() == '{"question": "What is 1+1?", "answer": 2}\n'


def test_bench_summary_may_not_overwrite_an_input(tmp_path, capsys):
    cfg = tmp_path / "acc.summary.json"
    cfg.write_text("decode: {max_length: 8}\n")
    argv = ["bench", "accuracy", "--methods", "greedy", "--config", str(cfg), "--output",
            str(tmp_path / "acc.jsonl"), "--lm", MISSING]  # fmt: skip
    _fails(argv, capsys, "acc.summary.json' is the --config file")


def test_output_inside_a_model_directory_is_refused(tmp_path, capsys):
    (tmp_path / "lm").mkdir()
    out = tmp_path / "lm" / "config.json"
    _fails(["decode", "--prompt", "hi", "--lm", str(tmp_path / "lm"), "--output", str(out)],
           capsys, "is inside the --lm directory")  # fmt: skip


def test_dangling_symlink_output_is_refused_before_models_load(tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    out.symlink_to("/no/such/dir/o.jsonl")
    _fails(["decode", "--prompt", "hi", "--lm", MISSING, "--output", str(out)], capsys,
           f"cannot create {out}")  # fmt: skip


def test_an_output_that_is_not_a_regular_file_is_refused(capsys):
    _fails(["decode", "--prompt", "hi", "--lm", MISSING, "--output", "/dev/full"], capsys,
           "/dev/full is not a regular file")  # fmt: skip


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only files")
def test_read_only_output_is_refused_before_models_load(tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    out.write_text("")
    out.chmod(0o444)
    _fails(["decode", "--prompt", "hi", "--lm", MISSING, "--output", str(out)], capsys,
           "permission denied")  # fmt: skip


# -- decode outputs: provenance, refused when not this run's --------------------------------


def _prompts(tmp_path, n=3, name="p.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps({"question": f"What is {i}+{i}?"}) + "\n" for i in range(n)))
    return path


def test_decode_refuses_a_file_that_is_not_a_decode_output(tmp_path, capsys):
    prompts = _prompts(tmp_path)
    notes = tmp_path / "notes.jsonl"
    notes.write_text('{"my": "data"}\n')
    argv = ["decode", "--prompts", str(prompts), "--lm", MISSING, "--output"]
    _fails([*argv, str(notes)], capsys, "has rows but no provenance record")
    assert notes.read_text() == '{"my": "data"}\n'
    bench = tmp_path / "acc.jsonl"
    bench.write_text(json.dumps({"_provenance": {"seed": 0}}) + '\n{"method": "greedy"}\n')
    _fails([*argv, str(bench)], capsys, "is a nabla-jax bench accuracy output, not a decode")


def test_decode_refuses_the_output_of_other_prompts_or_settings(tmp_path, capsys):
    from nabla_jax.app.bundled import bundled_decode_config
    from nabla_jax.app.decode_cmd import decode_provenance, read_prompt_items
    from nabla_jax.tasks import get_task

    prompts = _prompts(tmp_path)
    args = cli.build_parser().parse_args(["decode", "--prompts", str(prompts), "--lm", MISSING])
    task = get_task()
    prov = decode_provenance(args, bundled_decode_config(), {}, task, read_prompt_items(args, task))
    out = tmp_path / "o.jsonl"
    out.write_text(json.dumps({"_provenance": prov}) + '\n{"id": "p-0", "response": "4"}\n')
    before = out.read_text()
    argv = ["decode", "--lm", MISSING, "--output", str(out), "--prompts"]
    _fails([*argv, str(_prompts(tmp_path, 4, "q.jsonl"))], capsys, "prompts.count: file 3 vs now 4")
    _fails([*argv, str(prompts), "--seed", "1"], capsys, "seed: file 0 vs now 1")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("decode: {max_length: 9}\n")
    _fails([*argv, str(prompts), "--config", str(cfg)], capsys, "decode.max_length: file")
    assert out.read_text() == before


# -- bench results: de-duplication, extension, what differs ---------------------------------


def _prov(problems):
    from nabla_jax.app.bundled import bundled_decode_config

    return evaluation.provenance(
        seed=0, methods=["greedy"], cfg=bundled_decode_config(), lm="bundled", rm="bundled",
        dtype="float32", problems=list(problems),
    )  # fmt: skip


def _row(pid, correct=True):
    return {"method": "greedy", "problem_id": pid, "correct": correct, "model_calls": 3,
            "wall_seconds": 0.1}  # fmt: skip


def _write(path, prov, rows):
    lines = [json.dumps({"_provenance": prov})] + [json.dumps(r) for r in rows]
    path.write_text("".join(line + "\n" for line in lines))


def test_resume_removes_duplicate_rows(tmp_path):
    path = tmp_path / "r.jsonl"
    _write(path, _prov("ab"), [_row("a"), _row("a", False), _row("b"), _row("b")])
    assert evaluation.summarize(str(path))["greedy"]["n"] == 2  # the summary counts each once
    notes = prepare_results_file(str(path), _prov("ab"))
    assert notes == [f"{path}: removed 2 duplicate row(s)"]
    _, rows = read_results(str(path))
    assert [(r["problem_id"], r["correct"]) for r in rows] == [("a", True), ("b", True)]


def test_a_bench_can_be_extended_to_more_problems(tmp_path):
    path = tmp_path / "r.jsonl"
    _write(path, _prov("ab"), [_row("a"), _row("b")])
    notes = prepare_results_file(str(path), _prov("abcd"))
    assert notes == [f"{path}: extending the recorded run from 2 to 4 problems"]
    header, rows = read_results(str(path))
    assert header["problems"] == list("abcd") and len(rows) == 2
    prepare_results_file(str(path), _prov("abcd"))  # the extended run now resumes as itself


def test_problem_mismatch_says_what_differs(tmp_path):
    path = tmp_path / "r.jsonl"
    ids = [f"p-{i}" for i in range(8)]
    _write(path, _prov(ids), [_row("p-0")])
    with pytest.raises(
        evaluation.ResultsFileError,
        match=r"problems: file has 8, now 3 \(the file's list is longer",
    ):
        prepare_results_file(str(path), _prov(ids[:3]))
    other = ids[:5] + ["q-5", "q-6", "q-7"]
    with pytest.raises(
        evaluation.ResultsFileError, match=r'first differ at position 5: file "p-5" vs now "q-5"'
    ):
        prepare_results_file(str(path), _prov(other))


def test_a_file_from_before_paired_ablation_keys_is_not_resumed(tmp_path):
    path = tmp_path / "r.jsonl"
    old = {k: v for k, v in _prov("ab").items() if k != "random_streams"}
    _write(path, old, [_row("a")])
    with pytest.raises(evaluation.ResultsFileError, match="random_streams"):
        prepare_results_file(str(path), _prov("ab"))


def test_nabla_ablations_draw_nablas_random_numbers():
    import jax

    data = lambda m, seed=0: jax.random.key_data(evaluation.method_key(seed, m)).tolist()
    for ablation in ("nabla-nodto", "nabla-norej", "nabla-nocache"):
        assert data(ablation) == data("nabla")
    assert data("greedy") != data("nabla") != data("bon:8")
    assert data("nabla", 1) != data("nabla", 0)


def test_a_header_without_rows_is_replaced(tmp_path):
    path = tmp_path / "r.jsonl"
    _write(path, _prov("ab"), [])
    assert prepare_results_file(str(path), _prov("xyz")) == []
    assert read_results(str(path))[0]["problems"] == list("xyz")


# -- interrupts ------------------------------------------------------------------------------


def test_ctrl_c_before_rows_is_one_line_and_exit_130(monkeypatch, capsys):
    def interrupted(args):
        args.progress_tracker = outputs.Progress()
        args.progress_tracker.start("out.jsonl", total=30, done=8)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_decode", interrupted)
    parser = cli.build_parser
    monkeypatch.setattr(
        cli, "build_parser",
        lambda: _with_func(parser(), interrupted),
    )  # fmt: skip
    assert cli.main(["decode", "--prompt", "hi"]) == 130
    err = capsys.readouterr().err
    assert err == (
        "nabla-jax: interrupted: wrote 8 of 30 rows to out.jsonl; rerun the same command to "
        "resume\n"
    )


def _with_func(parser, func):
    for action in parser._subparsers._group_actions:
        action.choices["decode"].set_defaults(func=func)
    return parser
