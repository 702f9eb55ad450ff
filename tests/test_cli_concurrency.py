"""Real processes on one ``decode --output``: a second run is refused while the first writes,
Ctrl-C stops with one line and exit 130, ``kill -9`` loses at most the row being written, and
rerunning the same command finishes the file with every prompt once. Bounded in time: each
process is killed with its group if it outlives its limit (tests/subproc.py)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from nabla_jax.app.outputs import lock_path
from tests.hf_models import save_chat_pair
from tests.subproc import Running, run

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

#: Slow enough per prompt (sampled rollouts, DTO steps) that a run is still going when the
#: test signals it after its first chunk of rows.
CONFIG = """\
decode:
  max_length: 24
  max_n_generations: 3
  batch_size: 2
  grad_threshold: null
  dto: {num_steps: 3, learning_rate: 1e-2}
"""

N = 48  # prompts: 6 chunks of 8 (4 × batch_size) rows


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines()[1:]:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written (or torn by kill -9)
            pass
    return rows


def _wait_for(cond, proc: Running, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.proc.poll() is not None:
            res = proc.wait(1)
            pytest.fail(f"the run ended (rc {res.returncode}) before {what}: {res.stderr[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_two_runs_ctrl_c_kill_and_resume(tmp_path):
    save_chat_pair(tmp_path / "lm", tmp_path / "rm")
    (tmp_path / "run.yaml").write_text(CONFIG)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"question": f"What is {i} + {i}?"}) + "\n"
                               for i in range(N)))  # fmt: skip
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "nabla_jax.app.cli", "decode", "--prompts", str(prompts),
           "--output", str(out), "--lm", str(tmp_path / "lm"), "--rm", str(tmp_path / "rm"),
           "--config", str(tmp_path / "run.yaml")]  # fmt: skip
    # A compilation cache shared by the runs: the later ones load the decoder's programs.
    env = dict(os.environ, PYTHONPATH=str(ROOT), NABLA_JAX_CACHE_DIR=str(tmp_path / "xla"))

    first = Running(cmd, env=env, cwd=ROOT)
    sidecar = Path(lock_path(str(out)))
    _wait_for(lambda: sidecar.exists() and sidecar.read_text().strip(), first, 120, "the lock")
    assert sidecar.read_text().strip() == str(first.proc.pid)

    # Two runs at once: the second is refused in one line naming the first, and writes nothing.
    second = run(cmd, env=env, cwd=ROOT, timeout=120)
    assert second.returncode == 2, second.stderr
    assert second.stderr.strip().splitlines() == [
        f"nabla-jax: error: {out} is being written by another nabla-jax run (pid "
        f"{first.proc.pid}); wait for it to finish or choose another --output"
    ]

    # Ctrl-C after the first rows: one line, exit 130, the rows kept.
    _wait_for(lambda: len(_rows(out)) >= 1, first, 300, "the first rows")
    os.kill(first.proc.pid, signal.SIGINT)
    res = first.wait(120)
    assert res.returncode == 130, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    kept = _rows(out)
    assert 1 <= len(kept) < N
    assert res.stderr.strip().splitlines()[-1] == (
        f"nabla-jax: interrupted: wrote {len(kept)} of {N} rows to {out}; rerun the same "
        "command to resume"
    )
    assert not sidecar.exists()

    # kill -9 after at least one more row: the lock dies with the process.
    killed = Running(cmd, env=env, cwd=ROOT)
    _wait_for(lambda: len(_rows(out)) > len(kept), killed, 300, "a resumed row")
    os.kill(killed.proc.pid, signal.SIGKILL)
    assert killed.wait(60).returncode == -signal.SIGKILL
    after_kill = _rows(out)
    assert after_kill[: len(kept)] == kept

    # The same command again finishes the file: every prompt once, in order, no torn line.
    done = run(cmd, env=env, cwd=ROOT, timeout=500)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _rows(out)
    assert [r["id"] for r in rows] == [f"p-{i}" for i in range(N)]
    assert rows[: len(after_kill)] == after_kill
    assert out.read_text().endswith("\n") and len(out.read_text().splitlines()) == N + 1
    assert f"wrote {N - len(after_kill)} responses to {out} ({len(after_kill)} already there)" in (
        done.stdout
    )
