"""FLOPs of model calls (nabla_jax.decoding.flops) against XLA's cost analysis."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from nabla_jax.decoding import SamplingConfig
from nabla_jax.decoding.beam import beam_search
from nabla_jax.decoding.flops import call_flops, sequence_flops, token_flops
from nabla_jax.decoding.scoring import score_inputs
from nabla_jax.decoding.search_rows import prompt_groups
from tests.tiny_decode import PROMPTS, load_chat_pair


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return load_chat_pair(tmp_path_factory)


def _xla_flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def _elementwise_bound(c, tokens: int, context: int, head: bool) -> int:
    """Most FLOPs XLA's cost model can charge outside the matrix products (one per output
    element of each elementwise op): per layer and token, at most 16 ops over each H-wide
    or q/k/v-wide vector (two norms with their squares, means and scales, RoPE's products and
    sums on q and k, biases, residual adds), 4 over the MLP width (activation and its product),
    and 8 over each head's ``context`` scores (mask, scale, max, subtract, exp, sum, divide,
    select); the final norm, and 4 per vocabulary entry for the head."""
    qkv = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
    per = 16 * (c.hidden_size + qkv) + 4 * c.intermediate_size + 8 * c.num_heads * context
    return tokens * (c.num_layers * per + 16 * c.hidden_size + (4 * c.vocab_size if head else 0))


@pytest.mark.parametrize("slots", [32, 128])
def test_token_flops_match_cost_analysis(models, slots):
    lm, _ = models
    c = lm.config
    b = 2

    def step(lm, ids, cache):
        out = lm.forward(
            ids, jnp.ones((b, 1), jnp.int32), position_ids=jnp.zeros((b, 1), jnp.int32),
            cache=cache, write_index=jnp.zeros((b,), jnp.int32),
            key_mask=jnp.ones((b, slots), jnp.int32),
        )  # fmt: skip
        return lm.head_logits(out.hidden[:, 0])

    got = _xla_flops(step, lm, jnp.zeros((b, 1), jnp.int32), lm.init_cache(b, slots))
    want = b * token_flops(c, slots)
    assert want <= got <= want + _elementwise_bound(c, b, slots, head=True)


def test_sequence_flops_match_cost_analysis(models):
    _, rm = models
    c = rm.config
    width = 48
    ids, mask = jnp.zeros((1, width), jnp.int32), jnp.ones((1, width), jnp.int32)
    got = _xla_flops(lambda m, i, k: score_inputs(m, i, k), rm, ids, mask)
    want = sequence_flops(c, width)
    assert want <= got <= want + _elementwise_bound(c, width, width, head=False)


def test_search_results_carry_their_flops(models):
    lm, rm = models
    res = beam_search(lm, rm, PROMPTS[:1], jax.random.key(0), beams=2, expansions=2,
                      sampling=SamplingConfig(temperature=1.5), max_length=8,
                      step_delimiter=" ")  # fmt: skip
    st = res[0].stats
    # The shapes the program ran at: the prompt group's widths (search_rows.prompt_groups).
    grp = prompt_groups(lm, rm, rm.tokenizer, PROMPTS[:1], group=1, max_length=8, system=None)[0]
    slots = grp.lm_ids.shape[1] + 8 + 1
    width = grp.frame.prefix_ids.shape[1] + 8 + grp.frame.suffix_ids.shape[1]
    parts = dict(rollout_calls=st["rollout_calls"], score_calls=st["score_calls"])
    assert st["flops"] == call_flops(lm.config, rm.config, cache_slots=slots, rm_width=width,
                                     **parts)  # fmt: skip
    assert st["flops"] == (
        st["rollout_calls"] * token_flops(lm.config, slots)
        + st["score_calls"] * sequence_flops(rm.config, width)
    )


def test_sampled_baselines_carry_their_flops(models):
    lm, rm = models
    from nabla_jax.decoding import best_of_n, greedy_cot
    from nabla_jax.decoding.weighted import weighted_best_of_n
    from nabla_jax.runtime.buckets import bucket_length
    from nabla_jax.text.templates import lm_prompt_ids

    greedy = greedy_cot(lm, PROMPTS, max_length=8)
    width = bucket_length(max(len(lm_prompt_ids(lm.tokenizer, p)) for p in PROMPTS))
    for r in greedy:
        assert r.stats["flops"] == len(r.token_ids) * token_flops(lm.config, width + 8 + 1)
    kw = dict(n=2, sampling=SamplingConfig(temperature=1.5), max_length=8)
    bon = best_of_n(lm, rm, PROMPTS, jax.random.key(1), **kw)
    wbon = weighted_best_of_n(lm, rm, PROMPTS, jax.random.key(1), answer_extractor=len, **kw)
    for b, w in zip(bon, wbon, strict=True):  # the same samples and scorings
        assert (
            b.stats["flops"]
            == w.stats["flops"]
            > b.stats["rollout_calls"] * token_flops(lm.config, width + 9)
        )
