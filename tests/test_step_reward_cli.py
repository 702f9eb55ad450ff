"""``models.rm_steps`` from a run config: the CLI reads the RM as a process reward model at the
task's step ends, in ``decode`` (∇) and ``bench accuracy`` (∇ and Best-of-N), records it in the
provenance (a resume with another reading is refused), and names what is wrong in one line."""

from __future__ import annotations

import pytest

from nabla_jax.app import cli
from tests.cli_helpers import SMALL_RUN, cli_fails, model_args, results_rows, small_pair

STEPS = "models:\n  rm_steps: {aggregate: min, temperature: 0.2}\n"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = small_pair(tmp_path_factory.mktemp("prm_pair"))
    (root / "small.yaml").write_text(SMALL_RUN + STEPS)
    (root / "plain.yaml").write_text(SMALL_RUN)
    return root


@pytest.mark.slow
def test_decode_and_bench_read_the_rm_per_step(pair, tmp_path, capsys):
    out = tmp_path / "decode.jsonl"
    argv = ["decode", "--prompt", "2+3=?", "--output", str(out), *model_args(pair)]
    assert cli.main(argv) == 0
    prov, rows = results_rows(out)
    assert prov["rm_steps"] == {"aggregate": "min", "temperature": 0.2} and len(rows) == 1
    # The same file with the RM read as one score is another run's file.
    plain = [a if a != str(pair / "small.yaml") else str(pair / "plain.yaml") for a in argv]
    cli_fails(plain, capsys, "rm_steps: file")
    acc = tmp_path / "acc.jsonl"
    bench = [
        "bench",
        "accuracy",
        "--methods",
        "nabla,bon:2",
        "--num-problems",
        "2",
        "--batch-size",
        "2",
        "--output",
        str(acc),
        "--no-progress",
        *model_args(pair),
    ]
    assert cli.main(bench) == 0
    prov, rows = results_rows(acc)
    assert prov["rm_steps"]["aggregate"] == "min" and len(rows) == 4


def test_rm_steps_errors(pair, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMALL_RUN + "models:\n  rm_steps: {aggregate: min, separator: '<nope>'}\n")
    base = ["decode", "--prompt", "2+3=?", "--lm", str(pair / "lm"), "--rm", str(pair / "rm")]
    cli_fails([*base, "--config", str(bad)], capsys, "'<nope>' is not a token of the PRM")
    cli_fails([*base, "--config", str(pair / "small.yaml"), "--mesh", "data=1"], capsys,
              "runs on one device for now")  # fmt: skip
