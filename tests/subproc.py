"""Subprocesses for tests: killed with all their children on timeout, pipes drained safely.

``run`` starts the command in its own session (process group) and, when the wall-clock limit
passes, kills the whole group — a hung JAX child or a grandchild it spawned does not outlive
the test. Output goes to temporary files rather than pipes, so several processes can run at
once without one blocking on a full pipe while another is being waited on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from dataclasses import dataclass


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


class Running:
    """A started command; ``wait(timeout)`` returns its ``Result`` or kills its process group
    and raises ``subprocess.TimeoutExpired``."""

    def __init__(self, cmd, **kw):
        self._out = tempfile.TemporaryFile("w+")
        self._err = tempfile.TemporaryFile("w+")
        self.cmd = cmd
        self.proc = subprocess.Popen(
            cmd, stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL, text=True,
            start_new_session=True, **kw,
        )  # fmt: skip

    def kill(self) -> None:
        _kill_group(self.proc)

    def wait(self, timeout: float) -> Result:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        finally:
            # A child that exited may have left grandchildren in its group.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._out.seek(0)
        self._err.seek(0)
        res = Result(self.proc.returncode, self._out.read(), self._err.read())
        self._out.close()
        self._err.close()
        return res


def run(cmd, *, timeout: float, **kw) -> Result:
    """``subprocess.run``-like: wait up to ``timeout`` s, else kill the group and raise."""
    return Running(cmd, **kw).wait(timeout)
