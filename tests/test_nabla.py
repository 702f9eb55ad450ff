"""The ∇-Reasoner loop (nabla_jax.decoding.nabla) on tiny random models sharing a tokenizer."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

import nabla_jax as nj
from nabla_jax.decoding import DecodeConfig, NablaDecoder
from nabla_jax.functional.refine import window_grad_norms
from nabla_jax.text.templates import rm_prefix_suffix_ids
from tests import tolerances as tol
from tests.tiny_decode import PROMPTS, TINY_DECODE, load_chat_pair
from tests.tokenizer_utils import make_chatml_tokenizer

BASE = TINY_DECODE
DTO = BASE.dto


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return load_chat_pair(tmp_path_factory)


def _decode(models, cfg=BASE, prompts=PROMPTS, key=0, **kw):
    lm, rm = models
    return NablaDecoder(lm, rm, cfg, **kw).generate(list(prompts), jax.random.key(key))


def _check_counts(res, cfg):
    st = res.stats
    parts = st["rollout_calls"] + st["dto_calls"] + st["probe_calls"] + st["score_calls"]
    assert st["model_calls"] == parts
    assert st["rollout_calls"] == st["generated_tokens"]
    assert st["probe_calls"] == 4 * st["probes"]
    assert 1 <= st["generations"] <= cfg.max_n_generations
    if cfg.rejection_sampling:
        assert st["score_calls"] == 2 * (st["generations"] - 1)
    assert st["rejections"] <= st["generations"] - 1
    steps = cfg.dto.num_steps
    assert 4 * st["refinements"] <= st["dto_calls"] <= 4 * steps * st["refinements"]
    assert st["optimized_tokens"] <= st["refinements"] * cfg.dto_window * steps
    assert len(res.trace) <= st["iterations"]
    assert st["refinements"] == (len(res.trace) if cfg.use_dto else 0)
    assert len(res.token_ids) <= cfg.max_length
    assert st["stop_reason"] in ("eos", "stop_string", "length")


def test_counts_and_committed_tokens_are_consistent(models):
    for res in _decode(models):
        _check_counts(res, BASE)
        positions = [e["position"] for e in res.trace]
        assert positions == sorted(set(positions))  # one decided token per refinement
        for e in res.trace:
            if e["position"] < len(res.token_ids):
                want = e["new_token"] if e["accepted"] else e["old_token"]
                assert res.token_ids[e["position"]] == want
            assert (e["new_token"] != e["old_token"]) == e["proposed"]
        eos = NablaDecoder(*models, BASE).eos_ids  # the LM config's (2) and tokenizer's (0)
        ends = [i for i, t in enumerate(res.token_ids) if t in eos]
        if res.stats["stop_reason"] == "length":
            assert len(res.token_ids) == BASE.max_length and not ends
        else:
            assert res.stats["stop_reason"] == "eos" and ends == [len(res.token_ids) - 1]
        body = res.token_ids[: ends[0]] if ends else res.token_ids
        assert res.text == models[0].tokenizer.decode(body)


def test_without_dto_resamples_the_rollout_logits(models):
    cfg = dataclasses.replace(BASE, use_dto=False)
    for res in _decode(models, cfg):
        _check_counts(res, cfg)
        assert res.stats["dto_calls"] == res.stats["optimized_tokens"] == 0
        assert res.trace and res.stats["refinements"] == 0


def test_batch_equals_alone_and_key_determinism(models):
    together = _decode(models)
    for i, prompt in enumerate(PROMPTS):
        alone = _decode(models, prompts=[prompt])[0]
        assert alone.text == together[i].text
        assert alone.token_ids == together[i].token_ids
        assert alone.stats == together[i].stats
    again = _decode(models)
    assert [(r.token_ids, r.stats) for r in again] == [(r.token_ids, r.stats) for r in together]
    other = _decode(models, key=1)
    assert [r.token_ids for r in other] != [r.token_ids for r in together]


def test_budgets_stop_the_loop(models):
    cfg = dataclasses.replace(BASE, max_n_generations=2, confidence_threshold=1.0)
    for res in _decode(models, cfg):
        _check_counts(res, cfg)
        assert res.stats["generations"] <= 2
    cfg = dataclasses.replace(BASE, max_length=4, eos_ids=(299,))
    for res in _decode(models, cfg):
        assert len(res.token_ids) == 4 and res.stats["stop_reason"] == "length"
    one = dataclasses.replace(BASE, max_n_generations=1)
    for res in _decode(models, one):
        assert res.stats["generations"] == 1 and res.stats["refinements"] == 0
        assert res.stats["refinement_end"] in ("max_generations", "stopped")


def test_rejected_proposals_commit_the_old_token(models):
    initial = _decode(models, dataclasses.replace(BASE, max_n_generations=1))
    rejecting = _decode(models, scorer=lambda seqs: [0.0] * len(seqs))
    assert any(r.stats["generations"] > 1 for r in rejecting)
    for first, res in zip(initial, rejecting, strict=True):
        assert res.token_ids == first.token_ids  # every revision was rejected
        assert res.stats["rejections"] == res.stats["generations"] - 1
        assert all(e["accepted"] is False for e in res.trace if e["proposed"])


def test_acceptance_follows_the_score_and_renders_alike(models):
    lm, _ = models
    prefix, suffix = rm_prefix_suffix_ids(lm.tokenizer, PROMPTS[0])

    def low_ids(seqs):  # score: a fixed pseudo-random function of the response's ids
        for s in seqs:
            assert s[: len(prefix)] == prefix and s[len(s) - len(suffix) :] == suffix
        return [sum(t * 37 % 11 for t in s[len(prefix) : len(s) - len(suffix)]) for s in seqs]

    cfg = dataclasses.replace(BASE, max_n_generations=8, eos_ids=(299,))
    initial = _decode(models, dataclasses.replace(cfg, max_n_generations=1), prompts=PROMPTS[:1])
    res = _decode(models, cfg, prompts=PROMPTS[:1], scorer=low_ids)[0]
    current = low_ids([prefix + initial[0].token_ids + suffix])[0]
    accepted = 0
    for e in res.trace:
        if not e["proposed"]:
            continue
        assert e["score_current"] == current  # the state is the last accepted response
        assert e["accepted"] == (e["score_proposed"] > e["score_current"])
        if e["accepted"]:
            current, accepted = e["score_proposed"], accepted + 1
    assert low_ids([prefix + res.token_ids + suffix])[0] == current
    assert res.stats["generations"] > 1
    # Both verdicts happen here, so the state update after an acceptance is exercised too.
    assert accepted > 0 and res.stats["rejections"] > 0
    assert res.stats["rejections"] + accepted == sum(e["proposed"] for e in res.trace)


def test_stop_strings_are_trimmed(models):
    lm, _ = models
    one = dataclasses.replace(BASE, max_n_generations=1, eos_ids=(299,))
    plain = _decode(models, one, prompts=PROMPTS[:1])[0]
    words = [lm.tokenizer.decode([t]) for t in plain.token_ids[2:]]
    stop = next(w for w in words if w.strip() and w.isprintable())
    res = _decode(models, dataclasses.replace(one, stop_strings=(stop,)), prompts=PROMPTS[:1])[0]
    assert res.stats["stop_reason"] == "stop_string"
    assert res.text == plain.text[: plain.text.find(stop)]
    full = _decode(models, dataclasses.replace(BASE, stop_strings=(stop,)))
    for r in full:
        assert stop not in r.text
        if r.stats["stop_reason"] == "stop_string":
            assert stop in lm.tokenizer.decode(r.token_ids)


def test_grad_probe_is_counted_and_selects(models):
    never = dataclasses.replace(BASE, grad_threshold=1e9, confidence_threshold=1.0)
    for res in _decode(models, never):
        n = len(res.token_ids)
        assert res.stats["refinement_end"] == "converged" and res.stats["generations"] == 1
        assert res.stats["probes"] == -(-n // never.dto_window)
        assert res.stats["probe_calls"] == 4 * res.stats["probes"] == res.stats["model_calls"] - n
    always = dataclasses.replace(BASE, grad_threshold=0.0, confidence_threshold=1.0)
    for res in _decode(models, always, prompts=PROMPTS[:1]):
        _check_counts(res, always)
        assert res.stats["probes"] == res.stats["iterations"] >= res.stats["refinements"] > 0


@pytest.mark.parity
def test_window_grad_norms_match_the_torch_twin(models, tmp_path_factory):
    """The gradient probe ``‖∂loss/∂y_k‖₂`` against PyTorch autograd of the twin's DTO loss
    (tests/reference/torch_dto.paper_forward) on the same checkpoints."""
    import torch
    import transformers as tr

    from nabla_jax.models.export import save_pretrained
    from tests.reference import torch_dto as td

    lm, rm = models
    d = tmp_path_factory.mktemp("probe")
    lm_t = tr.AutoModelForCausalLM.from_pretrained(save_pretrained(lm, d / "lm"))
    rm_t = tr.AutoModelForSequenceClassification.from_pretrained(save_pretrained(rm, d / "rm"))
    cfg = DTO  # the decoding tests' config: the probe program is shared
    rng = np.random.default_rng(0)
    lm_prefix, rm_prefix = rng.integers(3, 290, 20).tolist(), rng.integers(3, 290, 19).tolist()
    prob = nj.RefineProblem(
        lm_prefix_ids=lm_prefix,
        rm_prefix_ids=rm_prefix,
        rm_suffix_ids=[2, 10],
        init=rng.normal(size=(5, lm.config.vocab_size)).astype(np.float32),
    )
    got = window_grad_norms(lm, rm, [prob], cfg, batch_size=BASE.batch_size)[0]
    y = torch.nn.functional.one_hot(
        torch.as_tensor(np.argmax(prob.init, -1)), lm.config.vocab_size
    ).float()
    y.requires_grad_(True)
    loss, _, _ = td.paper_forward(
        y, lm_t.float(), rm_t.float(), lm_prefix, rm_prefix, [2, 10], nll_coeff=cfg.nll_coeff
    )
    loss.backward()
    want = y.grad.norm(dim=-1).numpy()
    # the twin's autograd against our probe: two evaluation orders of one forward/backward
    # through both models, within its ball around their weights (tests/tolerances.py)
    run = lambda ms: window_grad_norms(ms[0], ms[1], [prob], cfg, batch_size=BASE.batch_size)[0]  # noqa: E731
    bound = tol.forward_tolerance(run, (lm, rm), extra=20 + 19 + 2 + 5)
    tol.assert_within(got, want, bound, "window gradient norms")
    assert np.ptp(want) > 0  # the positions differ: the check can tell them apart


def test_config_and_constructor_errors(models):
    lm, rm = models
    for kwargs, field in [
        (dict(max_length=0), "max_length"),
        (dict(max_n_generations=0), "max_n_generations"),
        (dict(confidence_threshold=1.5), "confidence_threshold"),
        (dict(grad_threshold=-1.0), "grad_threshold"),
        (dict(dto_window=0), "dto_window"),
        (dict(stop_strings="x"), "stop_strings"),
        (dict(rollout=0.6), "rollout"),
        (dict(dto={}), "dto"),
        (dict(batch_size=0), "batch_size"),
    ]:
        with pytest.raises(ValueError, match=f"DecodeConfig.{field}"):
            DecodeConfig(**kwargs)
    with pytest.raises(TypeError, match="RewardModel"):
        NablaDecoder(lm, lm, BASE)
    bare = nj.CausalLM(lm.config, lm.params, make_chatml_tokenizer(chat_template=None))
    with pytest.raises(nj.ChatTemplateError, match="chat_template"):
        NablaDecoder(bare, rm, BASE)
    small = make_chatml_tokenizer(vocab_size=280)
    other = nj.RewardModel(rm.config, rm.params, small)
    with pytest.raises(nj.VocabMismatchError):
        NablaDecoder(lm, other, BASE)
