"""Counting what a run costs besides arithmetic: compilations and device→host transfers.

``with track() as t:`` counts, while it is open, every program JAX lowers (``t.lowered``: one per
compiled program, whether XLA compiled it or the persistent cache supplied it), the backend
compilations (``t.compiles``, ``t.compile_seconds``), persistent-cache hits (``t.cache_hits``),
and the host reads that nabla-jax makes through :func:`device_get` (``t.transfers``). The
decoding loops read the device only through :func:`device_get`, so ``t.transfers`` is the number
of times a decode waited on the device; tests hold it flat as the work grows.
"""

from __future__ import annotations

import contextlib
import dataclasses

import jax

__all__ = ["Tracked", "device_get", "track"]

_TRACE = "/jax/core/compile/jaxpr_trace_duration"
_LOWER = "/jax/core/compile/jaxpr_to_mlir_module_duration"
_COMPILE = "/jax/core/compile/backend_compile_duration"
_HIT = "/jax/compilation_cache/cache_hits"


@dataclasses.dataclass
class Tracked:
    """What happened inside one :func:`track` block.

    ``seconds_by_program`` maps each program JAX traced, lowered or compiled (its function's
    name, e.g. ``"jit(run_chunk)"``; tracing reports the bare name) to
    ``{"trace": s, "lower": s, "compile": s}`` — where a cold or cached start spends its time.
    """

    lowered: int = 0
    compiles: int = 0
    compile_seconds: float = 0.0
    cache_hits: int = 0
    transfers: int = 0
    seconds_by_program: dict = dataclasses.field(default_factory=dict)


_ACTIVE: list[Tracked] = []


def device_get(tree):
    """``jax.device_get`` that counts one transfer in every open :func:`track` block."""
    for t in _ACTIVE:
        t.transfers += 1
    return jax.device_get(tree)


@contextlib.contextmanager
def track():
    """Count lowerings, compilations, cache hits and nabla-jax's host reads inside the block."""
    t = Tracked()

    def on_duration(event, seconds, **kw):
        phase = {_TRACE: "trace", _LOWER: "lower", _COMPILE: "compile"}.get(event)
        if phase is None:
            return
        if event == _LOWER:
            t.lowered += 1
        elif event == _COMPILE:
            t.compiles += 1
            t.compile_seconds += seconds
        name = str(kw.get("fun_name", "?"))
        if name.startswith("jit(") and name.endswith(")"):
            name = name[4:-1]  # one key per program, whichever phase reported it
        times = t.seconds_by_program.setdefault(name, {"trace": 0.0, "lower": 0.0, "compile": 0.0})
        times[phase] += seconds

    def on_event(event, **_):
        if event == _HIT:
            t.cache_hits += 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)
    _ACTIVE.append(t)
    try:
        yield t
    finally:
        _ACTIVE.remove(t)
        jax.monitoring.unregister_event_duration_listener(on_duration)
        jax.monitoring.unregister_event_listener(on_event)
