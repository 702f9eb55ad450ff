"""The test-subprocess helper kills the whole process group on timeout and never blocks on a
full pipe."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.subproc import run


def test_timeout_kills_children_and_grandchildren(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(60)\n"
    )
    t0 = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        run([sys.executable, "-c", script], timeout=3)
    assert time.monotonic() - t0 < 30
    grandchild = int(pidfile.read_text())
    for _ in range(50):
        if not _alive(grandchild):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"grandchild {grandchild} outlived the timeout")


def _alive(pid: int) -> bool:
    """Running (a killed process that nobody reaped yet is a zombie: not alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_large_output_does_not_deadlock():
    # 4 MB on each stream: far more than a pipe buffer (64 KB).
    code = "import sys; sys.stdout.write('x' * 4_000_000); sys.stderr.write('y' * 4_000_000)"
    res = run([sys.executable, "-c", code], timeout=60)
    assert res.returncode == 0 and len(res.stdout) == len(res.stderr) == 4_000_000
