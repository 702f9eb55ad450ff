"""FLOPs of a ∇-Reasoner decode (nabla_jax.decoding.flops.nabla_flops): the counters times the
analytic per-call counts that tests/test_search_flops.py checks against XLA's cost analysis."""

from __future__ import annotations

import dataclasses

import jax

import nabla_jax as nj
from nabla_jax.decoding.flops import call_flops, nabla_flops, sequence_flops, token_flops
from tests.tiny_decode import PROMPTS, TINY_DECODE, load_chat_pair


def test_nabla_flops_add_up(tmp_path_factory):
    lm, rm = load_chat_pair(tmp_path_factory)
    key = jax.random.key(0)
    res = nj.NablaDecoder(lm, rm, TINY_DECODE).generate(PROMPTS[:2], key)
    cfg = TINY_DECODE
    kw = dict(prompt=32, rm_prefix=32, rm_suffix=8, length=cfg.max_length, window=cfg.window,
              paper_objective=True)  # fmt: skip
    for r in res:
        s = r.stats
        assert s["flops"] > 0
        calls_only = call_flops(lm.config, rm.config, rollout_calls=s["rollout_calls"],
                                cache_slots=32 + cfg.max_length + cfg.window,
                                score_calls=s["score_calls"],
                                rm_width=32 + cfg.max_length + 8)  # fmt: skip
        no_dto = {**s, "dto_calls": 0, "probe_calls": 0}
        assert nabla_flops(lm.config, rm.config, no_dto, **kw) == calls_only
        steps = s["dto_calls"] // cfg.dto.calls_per_full_step
        per_step = 3 * (cfg.window * token_flops(lm.config, 32 + cfg.max_length + cfg.window)
                        + (cfg.max_length + 8) * token_flops(
                            rm.config, 32 + 2 * cfg.max_length + 8, head=False))  # fmt: skip
        assert nabla_flops(lm.config, rm.config, s, **kw) == calls_only + steps * per_step
    assert sequence_flops(rm.config, 4) < sequence_flops(rm.config, 8)
    off = nj.NablaDecoder(lm, rm, dataclasses.replace(cfg, use_dto=False)).generate(
        PROMPTS[:1], key
    )[0]
    assert off.stats["dto_calls"] == 0 and off.stats["flops"] > 0
