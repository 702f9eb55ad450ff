"""What the CLI tests share: the one-line-error check and the tiny run config."""

from __future__ import annotations

import json

import pytest

from nabla_jax.app import cli

#: A run config small enough for every stage of a decode to run in seconds on tiny models.
SMALL_RUN = """\
decode:
  max_length: 8
  max_n_generations: 2
  batch_size: 2
  grad_threshold: null
  dto: {num_steps: 2, learning_rate: 1e-2}
baselines: {temperature: 0.8}
"""


def cli_fails(argv, capsys, phrase) -> str:
    """Run ``nabla-jax argv``: it must exit with code 2 and one line ``nabla-jax: error: ...``
    containing ``phrase``. Returns that line."""
    capsys.readouterr()  # drop what fixtures printed (e.g. save_pretrained's progress bar)
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert phrase in err, err
    assert err.startswith("nabla-jax: error: ") and err.count("\n") == 1, err
    return err


def model_args(root, lm=None, rm=None) -> list[str]:
    """``--lm``, ``--rm`` (default ``root/lm``, ``root/rm``) and ``--config root/small.yaml``."""
    return ["--lm", str(lm or root / "lm"), "--rm", str(rm or root / "rm"), "--config",
            str(root / "small.yaml")]  # fmt: skip


def small_pair(root):
    """A tiny random chat pair in ``root/lm``, ``root/rm`` and :data:`SMALL_RUN` in
    ``root/small.yaml``; returns ``root``."""
    from tests.hf_models import save_chat_pair

    save_chat_pair(root / "lm", root / "rm")
    (root / "small.yaml").write_text(SMALL_RUN)
    return root


def results_rows(path):
    """``(provenance, rows)`` of a results file (JSON lines, the provenance line first)."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return lines[0]["_provenance"], lines[1:]
