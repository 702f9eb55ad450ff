"""DTO on the selected rows only (``DecodeConfig.dto_rows``): the rows that selected a position
are gathered into sub-batches and the results scattered back — the same tokens, counters and
trace as one DTO pass over the whole batch (the KL diagnostic within float32 rounding)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

import nabla_jax as nj
from tests import tolerances as tol
from tests.tiny_decode import PROMPTS, TINY_DECODE, load_chat_pair


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return load_chat_pair(tmp_path_factory)


def _decode(models, **kw):
    cfg = dataclasses.replace(TINY_DECODE, **kw)
    return nj.NablaDecoder(*models, cfg).generate(PROMPTS * 2, jax.random.key(0))


@pytest.mark.parametrize(
    "extra,sizes",
    [({}, (1, 3)), ({"dto_lr_gap": 2.0}, (3,))],  # 3: the last pass is partial
)
def test_compacted_dto_changes_nothing(models, extra, sizes):
    whole = _decode(models, **extra)
    assert sum(r.stats["dto_calls"] for r in whole) > 0, "no DTO ran: the test compares nothing"
    for rows in sizes:
        got = _decode(models, dto_rows=rows, **extra)
        assert [r.token_ids for r in got] == [r.token_ids for r in whole]
        assert [r.stats for r in got] == [r.stats for r in whole]
        for rg, rw in zip(got, whole, strict=True):
            assert len(rg.trace) == len(rw.trace)
            for eg, ew in zip(rg.trace, rw.trace, strict=True):
                assert {k: v for k, v in eg.items() if k != "kl"} == {
                    k: v for k, v in ew.items() if k != "kl"
                }
                # The KL sums V float32 terms p·(log p − log q) of refined logits that another
                # batch width may round differently: within γ_V of its terms' scale (|log p| of
                # the tiny vocabulary's probabilities, below log V + a logit range of 10).
                v = models[0].config.vocab_size
                bound = tol.gamma(v) * (np.log(v) + 10.0)
                assert abs(eg["kl"] - ew["kl"]) <= bound, (eg["kl"], ew["kl"], bound)


def test_dto_rows_is_checked():
    for bad in (0, 5, 2.0, True):
        with pytest.raises(ValueError, match=r"dto_rows=.*must be None or an int in \[1, batch"):
            dataclasses.replace(TINY_DECODE, dto_rows=bad)
    # The whole batch is one pass: the same compiled program as no setting.
    assert dataclasses.replace(TINY_DECODE, dto_rows=4).program() == TINY_DECODE.program()
    assert dataclasses.replace(TINY_DECODE, dto_rows=2).program() != TINY_DECODE.program()
