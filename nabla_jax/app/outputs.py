"""Output files that cannot be lost, torn or written by two runs at once.

* :class:`OutputLock` — an advisory ``fcntl.flock`` lock per results file, held in a hidden
  sidecar ``.<name>.lock`` that records the holder's pid. A second run on the same output is
  refused (:class:`OutputLockedError` names the running pid); the kernel drops the lock when the
  holder dies, even by ``kill -9``, so a stale sidecar never blocks a rerun.
* :func:`write_atomic` / :func:`atomic_path` — summaries and plots go to a temporary file in the
  same directory, then ``os.replace`` puts them in place: a reader sees the old file or the new
  one, never half of one.
* :class:`RowWriter` — JSONL rows appended and flushed one line at a time; a failed write (disk
  full, permissions) is cut back to the last whole line and named (:class:`OutputError`).
* :func:`check_writable` and :func:`check_not_input` — before any model loads, an output that
  cannot be written, or that names one of the run's inputs, is refused.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile

__all__ = [
    "OutputError",
    "OutputLock",
    "OutputLockedError",
    "Progress",
    "RowWriter",
    "atomic_path",
    "check_not_input",
    "check_writable",
    "describe_os_error",
    "lock_path",
    "write_atomic",
]


class OutputError(OSError):
    """An output file could not be written; the message names the file and the cause."""


class OutputLockedError(OutputError):
    """Another process holds the output's lock."""


def describe_os_error(path: str, e: OSError, doing: str = "write") -> str:
    """One line naming ``path`` and what went wrong (disk full and permissions spelled out)."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"cannot {doing} {path}: the disk is full (or over quota); free space and rerun"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot {doing} {path}: permission denied ({e.strerror}); choose another output"
    return f"cannot {doing} {path}: {e.strerror or e}"


def lock_path(path: str) -> str:
    """The sidecar lock file of ``path``: ``.<name>.lock`` in the same directory."""
    head, name = os.path.split(os.path.abspath(path))
    return os.path.join(head, f".{name}.lock")


class OutputLock:
    """Hold an exclusive advisory lock on ``path`` (via its sidecar) while in the ``with``.

    Raises :class:`OutputLockedError` at once when another process holds it. On release the
    sidecar is removed; a holder that died leaves it behind, and the next run takes it over.
    """

    def __init__(self, path: str):
        self.path = path
        self.sidecar = lock_path(path)
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        import fcntl

        while True:
            try:
                fd = os.open(self.sidecar, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise OutputError(describe_os_error(self.sidecar, e, "create the lock")) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise OutputLockedError(
                    f"{self.path} is being written by another nabla-jax run (pid {holder}); "
                    "wait for it to finish or choose another --output"
                ) from None
            # The holder before us may have removed the sidecar between our open and our lock:
            # then we hold a lock on a deleted file; open the current one again.
            try:
                same = os.stat(self.sidecar).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sidecar)  # while still locked, so no one else holds this inode
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc) -> None:
        self.release()


def _temp_in(path: str) -> str:
    head, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=head, prefix=f".{name}.", suffix=".tmp")
    os.close(fd)
    return tmp


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temporary path beside ``path``; on a clean exit it replaces ``path`` (after an
    fsync), on an error it is removed and ``path`` is left as it was. For writers that want a
    file name (``savefig``)."""
    try:
        tmp = _temp_in(path)
    except OSError as e:
        raise OutputError(describe_os_error(path, e)) from None
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OutputError):
            raise
        raise OutputError(describe_os_error(path, e)) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` all at once: temp file, fsync, ``os.replace``."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


class Progress:
    """How far a run got: ``done`` of ``total`` rows are in ``path`` (those of earlier runs
    included). The command line reads it when interrupted."""

    def __init__(self):
        self.path: str | None = None
        self.total = 0
        self.done = 0

    def start(self, path: str, *, total: int, done: int) -> None:
        self.path, self.total, self.done = path, int(total), int(done)

    def interrupted_message(self) -> str:
        """The line printed on Ctrl-C."""
        if self.path is None:
            return "interrupted before any row was written"
        return (
            f"interrupted: wrote {self.done} of {self.total} rows to {self.path}; rerun the "
            "same command to resume"
        )


class RowWriter:
    """Append JSON rows to a JSONL file, one whole line per write, flushed at once.

    ``write(row)`` either puts the complete line in the file or, when the write fails (disk
    full, permissions), cuts the file back to its previous end and raises :class:`OutputError`
    naming it. ``count`` is the number of rows this writer wrote; ``tracker`` (a
    :class:`Progress`), if given, counts them too.
    """

    def __init__(self, path: str, tracker: Progress | None = None):
        self.path = path
        self.count = 0
        self.tracker = tracker
        try:
            self._f = open(path, "ab")
        except OSError as e:
            raise OutputError(describe_os_error(path, e)) from None

    def write(self, row: dict) -> None:
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        f = self._f
        end = f.tell()
        try:
            f.write(line)
            f.flush()
        except OSError as e:
            # Drop what the failed write left (a torn line); keep every whole row.
            with contextlib.suppress(OSError):
                f.seek(end)
                f.truncate(end)
            raise OutputError(describe_os_error(self.path, e)) from None
        self.count += 1
        if self.tracker is not None:
            self.tracker.done += 1

    def sync(self) -> None:
        """Flush and fsync (call after each batch: a crash then loses nothing written)."""
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as e:
            raise OutputError(describe_os_error(self.path, e)) from None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._f.close()

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_writable(path: str) -> None:
    """Raise :class:`OutputError` when ``path`` exists and is not a regular file or cannot be
    opened for appending, or does not exist and its directory does not accept a new file.
    Changes nothing."""
    if os.path.exists(path):
        if not os.path.isfile(path):
            raise OutputError(
                f"{path} is not a regular file (a device, pipe or socket); an output is a file "
                "that can be resumed — give a file path"
            )
        try:
            with open(path, "ab"):
                pass
        except OSError as e:
            raise OutputError(describe_os_error(path, e)) from None
        return
    # realpath: a dangling symlink creates its target, which may lie in a missing directory.
    parent = os.path.dirname(os.path.realpath(path))
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise OutputError(describe_os_error(path, e, "create")) from None


def _same(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def check_not_input(output: str, inputs: dict[str, str | None], flag: str = "--output") -> None:
    """Refuse an output that is one of the run's input files, or a file inside an input model
    directory. ``inputs`` maps a flag (``--config``) to its path (None: not given)."""
    for name, path in inputs.items():
        if not path:
            continue
        if os.path.isdir(path):
            inside = os.path.realpath(os.path.dirname(os.path.abspath(output)))
            if inside == os.path.realpath(path):
                raise OutputError(
                    f"{flag} {output!r} is inside the {name} directory {path!r}; writing there "
                    "could overwrite the model — choose another output path"
                )
        elif _same(path, output):
            raise OutputError(
                f"{flag} {output!r} is the {name} file; writing would overwrite it — choose "
                "another output path"
            )
