"""Multi-host runs: ``jax.distributed`` initialisation, prompt ownership, gathering in input order.

Each process decodes the prompts it owns (prompt ``i`` belongs to process ``i % process_count``)
on its local devices; the results travel back as JSON through a cross-process all-gather and are
returned on every process in the input order. Because a prompt's randomness derives from the
call's key and the prompt itself (never its batch position), the gathered results equal a
single-process run.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import jax
import numpy as np

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "ENV_VARS",
    "CoordinatorUnreachableError",
    "allgather_json",
    "generate_across_hosts",
    "is_main_process",
    "maybe_initialize",
    "owned_indices",
    "wait_for_coordinator",
]

ENV_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


#: Seconds a process waits for the coordinator before giving up (env ``NABLA_COORDINATOR_TIMEOUT``).
DEFAULT_CONNECT_TIMEOUT = 120.0


class CoordinatorUnreachableError(RuntimeError):
    """No coordinator answered at the given address within the timeout."""


def wait_for_coordinator(address: str, timeout: float) -> None:
    """Poll a TCP connection to ``host:port`` until it opens, for at most ``timeout`` seconds.

    Without this, a process whose coordinator never starts waits ~300 s inside
    ``jax.distributed.initialize`` and then aborts the interpreter from C++ (exit 134).
    """
    import socket
    import time

    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"coordinator address {address!r} must be host:port, e.g. 10.0.0.1:1234")
    host = host.strip("[]")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=min(5.0, timeout)):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise CoordinatorUnreachableError(
                    f"no coordinator answered at {address} within {timeout:.0f} s ({e}); start "
                    "process 0 (it runs the coordinator) with the same --coordinator-address, or "
                    "check the address and firewall (NABLA_COORDINATOR_TIMEOUT sets the wait)"
                ) from None
            time.sleep(0.5)


def maybe_initialize(
    coordinator_address=None, num_processes=None, process_id=None, connect_timeout=None
) -> bool:
    """Call ``jax.distributed.initialize`` when a multi-process run is requested.

    The three settings come from the arguments or, failing those, the environment variables
    ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``. All three must be
    given together. Returns True when initialised, False for a single-process run.
    Processes other than 0 first wait up to ``connect_timeout`` seconds (default
    ``NABLA_COORDINATOR_TIMEOUT`` or 120) for the coordinator to accept connections, and raise
    ``CoordinatorUnreachableError`` if it never does.
    """
    env = os.environ
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    given = [coordinator_address is not None, num_processes is not None, process_id is not None]
    if not any(given):
        return False
    if not all(given):
        raise ValueError(
            "a multi-process run needs all of --coordinator-address, --num-processes and "
            "--process-id (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)"
        )
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(f"process id {process_id} is not in [0, num_processes={num_processes})")
    if num_processes == 1:
        return False
    if connect_timeout is None:
        connect_timeout = float(env.get("NABLA_COORDINATOR_TIMEOUT", DEFAULT_CONNECT_TIMEOUT))
    if process_id != 0:
        wait_for_coordinator(coordinator_address, connect_timeout)
    # Cross-process collectives on the CPU backend (no effect on accelerators). Asking which
    # backend is in use would initialise it, which must not happen before initialize().
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )
    return True


def is_main_process() -> bool:
    return jax.process_index() == 0


def owned_indices(n: int, process_index: int | None = None, process_count: int | None = None):
    """Indices of the prompts this process decodes (round robin)."""
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    return list(range(pi, n, pc))


def allgather_json(obj) -> list:
    """Every process's ``obj`` (JSON-serialisable), in process order."""
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.asarray([data.size], np.int32))
    lengths = np.asarray(lengths).reshape(-1)
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: data.size] = data
    gathered = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(lengths), -1)
    return [json.loads(bytes(row[:n]).decode()) for row, n in zip(gathered, lengths)]


def generate_across_hosts(decoder, prompts, key, mesh=None):
    """``decoder.generate`` over ``prompts`` split among processes; results in input order.

    With one process this is ``decoder.generate(prompts, key)``. Otherwise each process decodes
    its own prompts and the results (text, token ids, stats) are all-gathered.
    """
    if jax.process_count() == 1:
        return decoder.generate(prompts, key)
    mine = owned_indices(len(prompts))
    local = decoder.generate([prompts[i] for i in mine], key) if mine else []
    payload = [
        {"i": i, "text": r.text, "token_ids": [int(t) for t in r.token_ids], "stats": dict(r.stats)}
        for i, r in zip(mine, local)
    ]
    rows = [row for part in allgather_json(payload) for row in part]
    rows.sort(key=lambda r: r["i"])
    if [r["i"] for r in rows] != list(range(len(prompts))):
        raise RuntimeError("multi-host gather lost prompts: every process must see the same list")
    return [
        SimpleNamespace(text=r["text"], token_ids=r["token_ids"], stats=r["stats"]) for r in rows
    ]
