"""The compiled decode loop: program counts, host reads, run-time hyperparameters, slots.

Structural facts only (no wall-clock): how many programs are lowered as the work grows, how many
times the host reads the device, and that results do not depend on how the loop is chunked or
which slot a prompt lands in.
"""

from __future__ import annotations

import dataclasses

import jax
import pytest

from nabla_jax.decoding import NablaDecoder, SamplingConfig
from nabla_jax.runtime import profiling
from nabla_jax.runtime.buckets import bucket_length
from nabla_jax.text.templates import lm_prompt_ids
from tests.tiny_decode import TINY_DECODE, load_chat_pair

CFG = TINY_DECODE
# Prompts of different lengths that share one prompt bucket (16 tokens and fewer).
WORDS = ["Hi?", "What is 2 + 2?", "Solve 3x + 5 = 20.", "Why?", "Add 7 and 8.", "Go on."]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return load_chat_pair(tmp_path_factory)


def _tracked(decoder, prompts, key=0, **kw):
    with profiling.track() as t:
        res = decoder.generate(prompts, jax.random.key(key), **kw)
    return res, t


def test_programs_do_not_grow_with_the_work(models):
    lm, rm = models
    dec = NablaDecoder(lm, rm, CFG)
    buckets = {bucket_length(len(lm_prompt_ids(lm.tokenizer, p))) for p in WORDS}
    assert len(buckets) == 1
    _, first = _tracked(dec, WORDS[:2])
    # The loop, its empty state, and the few small host-side programs of the first call.
    assert 1 <= first.lowered <= 4
    for batch in (WORDS[2:5], WORDS, WORDS + WORDS[::-1]):  # mixed lengths, growing counts
        res, t = _tracked(dec, batch, key=len(batch))
        assert t.lowered == 0, "a new batch of the same bucket must reuse the programs"
        assert len(res) == len(batch)


def test_host_reads_stay_flat(models):
    lm, rm = models
    dec = NablaDecoder(lm, rm, CFG)
    for prompts in (WORDS[:2], WORDS + WORDS):
        with jax.transfer_guard_device_to_host("disallow"):  # no implicit host reads at all
            res, t = _tracked(dec, prompts)
        # One read per return of the loop: at most one per finished prompt, never per iteration.
        assert 1 <= t.transfers <= len(prompts)
        assert sum(r.stats["iterations"] for r in res) > t.transfers


def test_hyperparameters_are_run_time_values(models):
    lm, rm = models
    NablaDecoder(lm, rm, CFG).generate(WORDS[:2], jax.random.key(0))
    sweep = [
        dataclasses.replace(CFG, confidence_threshold=0.5),
        dataclasses.replace(CFG, max_n_generations=2),
        dataclasses.replace(CFG, resample=SamplingConfig(temperature=0.7)),
        dataclasses.replace(CFG, dto=dataclasses.replace(CFG.dto, learning_rate=0.3)),
        dataclasses.replace(CFG, dto=dataclasses.replace(CFG.dto, nll_coeff=0.5, tau=2.0)),
    ]
    outputs = set()
    for cfg in sweep:
        res, t = _tracked(NablaDecoder(lm, rm, cfg), WORDS[:2])
        assert t.lowered == 0, f"changing a number must not recompile: {cfg}"
        outputs.add(tuple(tuple(r.token_ids) + (r.stats["model_calls"],) for r in res))
    assert len(outputs) > 1  # the numbers do reach the program
    # Structure does recompile: a different window is a different program.
    _, t = _tracked(NablaDecoder(lm, rm, dataclasses.replace(CFG, dto_window=3)), WORDS[:2])
    assert t.lowered >= 1


def test_results_do_not_depend_on_chunking_or_slots(models):
    lm, rm = models
    dec = NablaDecoder(lm, rm, CFG)
    whole = dec.generate(WORDS, jax.random.key(3))
    stepwise = dec.generate(WORDS, jax.random.key(3), chunk_iterations=1)
    alone = [dec.generate([p], jax.random.key(3))[0] for p in WORDS[:3]]
    reordered = dec.generate(WORDS[::-1], jax.random.key(3))[::-1]
    for a, b, c in zip(whole, stepwise, reordered, strict=True):
        assert a.token_ids == b.token_ids == c.token_ids
        assert a.stats == b.stats == c.stats
        assert a.trace == b.trace
    for a, b in zip(whole, alone, strict=False):
        assert a.token_ids == b.token_ids and a.stats == b.stats
    assert any(r.stats["generations"] > 1 for r in whole)  # proposals happened
