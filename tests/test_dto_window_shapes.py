"""How many window shapes the DTO step is compiled for (``DecodeConfig.dto_window_shapes``).

One shape (the default) runs every DTO on the window plus the whole rest of the response,
masked where a row's rest is shorter; three add a window-only and a half-window shape for rows
near their end. Masked slots change nothing but float32 rounding, so both give the same tokens
and counters, and the compiled loop with one shape holds one copy of the DTO step instead of
three (counted in its jaxpr, not timed).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.extend
import numpy as np
import pytest

import nabla_jax as nj
from nabla_jax.decoding.windows import window_buckets
from tests import tolerances as tol
from tests.tiny_decode import PROMPTS, TINY_DECODE, load_chat_pair


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return load_chat_pair(tmp_path_factory)


def _decode(models, shapes):
    cfg = dataclasses.replace(TINY_DECODE, dto_window_shapes=shapes)
    return nj.NablaDecoder(*models, cfg).generate(PROMPTS * 2, jax.random.key(0))


def test_tiny_settings_have_three_shapes():
    # Otherwise the comparison below would compare one program with itself.
    assert len(window_buckets(TINY_DECODE.window, TINY_DECODE.max_length)) == 3


def test_one_shape_gives_the_tokens_of_three(models):
    three = _decode(models, 3)
    assert sum(r.stats["dto_calls"] for r in three) > 0, "no DTO ran: the test compares nothing"
    one = _decode(models, 1)
    assert [r.token_ids for r in one] == [r.token_ids for r in three]
    assert [r.stats for r in one] == [r.stats for r in three]
    v = models[0].config.vocab_size
    # The KL sums V float32 terms p·(log p − log q) of refined logits whose attention and
    # reward reductions ran over more (masked, zero-weight) slots: another summation order,
    # within γ_V of the terms' scale (|log p| below log V + a logit range of 10).
    bound = tol.gamma(v) * (np.log(v) + 10.0)
    for r1, r3 in zip(one, three, strict=True):
        assert len(r1.trace) == len(r3.trace)
        for e1, e3 in zip(r1.trace, r3.trace, strict=True):
            assert {k: v for k, v in e1.items() if k != "kl"} == {
                k: v for k, v in e3.items() if k != "kl"
            }
            assert abs(e1["kl"] - e3["kl"]) <= bound, (e1["kl"], e3["kl"], bound)


def _count_scans(jaxpr) -> int:
    """``scan`` equations in ``jaxpr`` and every sub-jaxpr (the DTO step is one scan)."""
    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name == "scan"
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            n += _count_scans(sub)
    return n


class _Captured(Exception):
    pass


def _loop_scans(models, shapes, monkeypatch) -> int:
    """Scans in the jaxpr of the decode loop for ``shapes``, traced with the argument shapes
    of a real ``generate`` call (captured on its way to the compiled loop)."""
    from nabla_jax.decoding import loop, nabla

    seen = []

    def capture(m, state, **kw):
        static = {k: kw[k] for k in ("prog", "scorer", "pad_id", "oracle") if k in kw}
        traced = {k: v for k, v in kw.items() if k not in static}
        shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), (m, state, traced))
        seen.append((*shapes, static))
        raise _Captured  # the loop's arguments are all the test needs: skip its compile

    monkeypatch.setattr(nabla, "run_chunk", capture)
    cfg = dataclasses.replace(TINY_DECODE, dto_window_shapes=shapes)
    with pytest.raises(_Captured):
        nj.NablaDecoder(*models, cfg).generate(PROMPTS[:1], jax.random.key(0))
    m, state, kw, static = seen[0]
    order = ("inserts", "key", "hyper", "tables", "limits")
    fn = jax.make_jaxpr(lambda *a: loop.chunk_state(*a, **static))
    return _count_scans(fn(m, state, *(kw[k] for k in order)).jaxpr)


def test_one_shape_compiles_one_dto_step(models, monkeypatch):
    one, three = _loop_scans(models, 1, monkeypatch), _loop_scans(models, 3, monkeypatch)
    # Each shape holds the same DTO scan(s); two shapes fewer remove two copies of them.
    per_shape = (three - one) / 2
    assert per_shape >= 1 and per_shape == int(per_shape), (one, three)
    assert one < three
    print(f"scans in the loop: {one} with one shape, {three} with three")


def test_dto_window_shapes_is_checked():
    for bad in (0, 4, 1.0, True, None):
        with pytest.raises(ValueError, match=r"dto_window_shapes=.*must be an int in \[1, 3\]"):
            dataclasses.replace(TINY_DECODE, dto_window_shapes=bad)
    assert TINY_DECODE.program() != dataclasses.replace(TINY_DECODE, dto_window_shapes=3).program()
