"""Batched rollouts: HF greedy parity, logits/hidden vs full forward, per-row keys, stopping,
stop strings, compile counts, errors."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
import transformers as tr

import nabla_jax as nj
from nabla_jax.decoding import continuation as ro
from nabla_jax.decoding.generate import generate_padded, rollout
from nabla_jax.decoding.sampling import SamplingConfig
from nabla_jax.decoding.stopping import default_eos_ids
from nabla_jax.runtime.buckets import bucket_length
from tests import tolerances as tol
from tests.hf_models import PAD, hf_model
from tests.tokenizer_utils import make_chatml_tokenizer

FAMILIES = ["llama", "qwen2", "qwen3", "mistral", "gpt2"]
GREEDY = SamplingConfig(temperature=0.0)
SAMPLE = SamplingConfig(temperature=1.0)
EOS = 2


def _forward_bounds(lm, seqs):
    """Derived bounds (forward_tolerance: the γ ball of the longest contraction around the
    weights) for the logits and hidden states of a no-cache forward of ``seqs``: a cached
    decode of the same tokens is another evaluation order of it."""
    width = max(len(q) for q in seqs)
    ids, mask = np.zeros((len(seqs), width), np.int32), np.zeros((len(seqs), width), np.int32)
    for b, q in enumerate(seqs):
        ids[b, : len(q)], mask[b, : len(q)] = q, 1

    def run(m):
        h = m.hidden_states(ids, mask)
        return np.asarray(m.head_logits(h))[mask > 0], np.asarray(h)[mask > 0]

    return tol.forward_tolerance(run, lm, extra=width)


_CACHE: dict = {}


def _models(family: str, tmp_path_factory):
    """(HF torch model, converted CausalLM), built once per family."""
    if family not in _CACHE:
        model = hf_model(family, "lm", seed=11)
        path = tmp_path_factory.mktemp(family)
        model.save_pretrained(path)
        _CACHE[family] = (model, nj.load_causal_lm(path, tokenizer=None))
    return _CACHE[family]


def _hf_greedy(model, prompts, n, eos=EOS):
    """HF generate with left padding; per row the generated ids up to and including EOS."""
    p = max(len(x) for x in prompts)
    ids = np.full((len(prompts), p), PAD, np.int64)
    mask = np.zeros_like(ids)
    for b, x in enumerate(prompts):
        ids[b, p - len(x) :] = x
        mask[b, p - len(x) :] = 1
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            do_sample=False,
            max_new_tokens=n,
            eos_token_id=eos,
            pad_token_id=PAD,
        )
    rows = []
    for row in out[:, p:].numpy().tolist():
        rows.append(row[: row.index(eos) + 1] if eos in row else row)
    return rows


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_matches_hf_generate(family, tmp_path_factory):
    model, lm = _models(family, tmp_path_factory)
    n = 12
    batch = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [20, 21, 22, 23]]
    want = _hf_greedy(model, batch, n)
    res = rollout(lm, batch, None, max_new_tokens=n, sampling=GREEDY, eos_ids=(EOS,))
    assert res.tokens.shape == (2, bucket_length(n))
    for b in range(2):
        assert res.row_tokens(b) == want[b]
        assert res.stop_reason[b] == ("eos" if want[b][-1] == EOS else "length")
    np.testing.assert_array_equal(res.model_calls, res.lengths)


@pytest.mark.parity
def test_logits_and_hidden_match_full_forward(tmp_path_factory):
    _, lm = _models("qwen2", tmp_path_factory)
    prompts = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [20, 21, 22]]
    keys = jax.random.split(jax.random.key(3), 2)
    res = rollout(
        lm, prompts, keys, max_new_tokens=10, sampling=SAMPLE, eos_ids=(), return_hidden=True
    )
    assert res.logits.shape == (2, 16, lm.config.vocab_size)
    assert res.hidden.shape == (2, 16, lm.config.hidden_size)
    # No-cache forward of prompt ++ generated, right-padded into one batch.
    seqs = [p + res.row_tokens(b) for b, p in enumerate(prompts)]
    ids, mask = np.zeros((2, 32), np.int32), np.zeros((2, 32), np.int32)
    for b, seq in enumerate(seqs):
        ids[b, : len(seq)], mask[b, : len(seq)] = seq, 1
    full_hidden = lm.hidden_states(ids, mask)
    full_logits = np.asarray(lm.head_logits(full_hidden))
    b_logits, b_hidden = _forward_bounds(lm, seqs)
    for b, prompt in enumerate(prompts):
        n = int(res.lengths[b])
        assert n == 10
        pos = np.arange(len(prompt) - 1, len(prompt) - 1 + n)
        tol.assert_within(res.logits[b, :n], full_logits[b, pos], b_logits, "logits")
        tol.assert_within(res.hidden[b, :n], full_hidden[b, pos], b_hidden, "hidden states")
        assert np.all(np.asarray(res.logits[b, n:]) == 0)


def test_rows_do_not_depend_on_batch_company(tmp_path_factory):
    _, lm = _models("qwen2", tmp_path_factory)
    prompts = [[5, 6, 7, 8, 9], [40, 41, 42, 43, 44, 45, 46, 47]]
    keys = jax.random.split(jax.random.key(7), 2)
    # Same program as the logits test (B=2, sampled, hidden kept): no extra compile.
    kw = dict(max_new_tokens=12, sampling=SAMPLE, eos_ids=(), return_hidden=True)
    batch = rollout(lm, prompts, keys, **kw)
    for b in range(2):
        alone = rollout(lm, [prompts[b]], keys[b : b + 1], **kw)
        assert alone.row_tokens(0) == batch.row_tokens(b)
    # Reordered batch: same tokens per prompt.
    swapped = rollout(lm, prompts[::-1], keys[::-1], **kw)
    assert swapped.row_tokens(0) == batch.row_tokens(1)
    assert swapped.row_tokens(1) == batch.row_tokens(0)
    # Same keys, same tokens; other keys, other tokens.
    again = rollout(lm, prompts, keys, **kw)
    np.testing.assert_array_equal(again.tokens, batch.tokens)
    other = rollout(lm, prompts, jax.random.split(jax.random.key(8), 2), **kw)
    assert not np.array_equal(other.tokens, batch.tokens)


def test_eos_stops_row_and_budget_per_row(tmp_path_factory):
    _, lm = _models("qwen2", tmp_path_factory)
    prompts = [[5, 6, 7, 8, 9], [40, 41, 42]]
    keys = jax.random.split(jax.random.key(1), 2)
    kw = dict(sampling=SAMPLE, return_hidden=True)  # the logits test's program
    free = rollout(lm, prompts, keys, max_new_tokens=12, eos_ids=(), **kw)
    assert free.stop_reason == ["length", "length"]
    row0 = free.row_tokens(0)
    stop_tok = row0[5]
    first = row0.index(stop_tok)
    res = rollout(lm, prompts, keys, max_new_tokens=12, eos_ids=(stop_tok,), **kw)
    assert int(res.lengths[0]) == first + 1
    assert res.row_tokens(0) == row0[: first + 1]
    assert res.stop_reason[0] == "eos"
    assert np.all(np.asarray(res.tokens[0, first + 1 :]) == PAD)
    np.testing.assert_array_equal(res.model_calls, res.lengths)
    # Per-row budgets.
    res = rollout(lm, prompts, keys, max_new_tokens=[3, 7], eos_ids=(), **kw)
    np.testing.assert_array_equal(res.lengths, [3, 7])
    assert res.row_tokens(0) == row0[:3] and res.row_tokens(1) == free.row_tokens(1)[:7]
    assert res.stop_reason == ["length", "length"]


def test_stop_strings_trim_text(tmp_path):
    tok = make_chatml_tokenizer()
    hf_cfg = tr.Qwen2Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    tr.Qwen2ForCausalLM(hf_cfg).save_pretrained(tmp_path)  # faster than an eager Flax init
    lm = nj.load_causal_lm(tmp_path, tokenizer=tok)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 2?"}], add_generation_prompt=True, tokenize=False
    )
    prompt = tok.encode(text, add_special_tokens=False)
    keys = jax.random.split(jax.random.key(5), 1)
    kw = dict(max_new_tokens=24, sampling=SAMPLE)
    free = rollout(lm, [prompt], keys, eos_ids=(), **kw)
    gen = free.row_tokens(0)
    assert free.texts[0] == tok.decode(gen)
    # A stop string that is generated with its own tokenization: stopped on device.
    special = set(tok.all_special_ids)
    for k in range(3, 20):
        s = tok.decode(gen[k : k + 2])
        if tok.encode(s, add_special_tokens=False) == gen[k : k + 2] and not special & {*s}:
            if "\ufffd" not in s and not set(gen[k : k + 2]) & special:
                break
    else:
        pytest.skip("no round-tripping two-token stop string in this sample")
    res = rollout(lm, [prompt], keys, eos_ids=(), stop_strings=[s], **kw)
    full = free.texts[0]
    assert res.texts[0] == full[: full.find(s)]
    assert res.stop_reason == ["stop_string"]
    assert int(res.lengths[0]) <= k + 2
    assert res.row_tokens(0)[-2:] == gen[k : k + 2]
    assert res.row_tokens(0) == gen[: int(res.lengths[0])]
    # A stop string that is only found in the decoded text (the host trims it).
    sub = full[len(full) // 2 : len(full) // 2 + 1]
    res = rollout(lm, [prompt], keys, eos_ids=(), stop_strings=["\x00never", sub], **kw)
    assert res.texts[0] == full[: full.find(sub)]
    assert res.stop_reason == ["stop_string"]
    # EOS is cut from the text; default EOS ids are the config's and the tokenizer's.
    stop_tok = gen[4]
    res = rollout(lm, [prompt], keys, eos_ids=(stop_tok,), **kw)
    first = gen.index(stop_tok)
    assert res.stop_reason == ["eos"] and res.texts[0] == tok.decode(gen[:first])
    assert default_eos_ids(lm, tok) == (0, 2)


def test_one_compile_per_bucket(tmp_path_factory):
    _, lm = _models("qwen3", tmp_path_factory)
    before = ro.TRACE_COUNTS["generate"]
    cfg = SamplingConfig(temperature=0.7, top_k=20, top_p=0.9)
    for n in range(9, 17):  # 8 prompt lengths, all in the 16 bucket; budgets in the 32 bucket
        prompt = list(range(3, 3 + n))
        keys = jax.random.split(jax.random.key(n), 1)
        res = rollout(lm, [prompt], keys, max_new_tokens=n + 8, sampling=cfg, eos_ids=[n])
        assert res.prompt_pad == 16 and res.tokens.shape == (1, 32)
        if res.stop_reason == ["eos"]:  # stopped at its EOS id, which ends the row
            assert res.row_tokens(0)[-1] == n and n not in res.row_tokens(0)[:-1]
        else:  # ran its whole budget without the EOS id
            assert int(res.lengths[0]) == n + 8 and n not in res.row_tokens(0)
    assert ro.TRACE_COUNTS["generate"] - before == 1


def test_generate_padded_right_padding_and_buckets(tmp_path_factory):
    _, lm = _models("qwen2", tmp_path_factory)
    prompts = [[5, 6, 7, 8, 9], [20, 21, 22]]
    left = rollout(lm, prompts, None, max_new_tokens=6, sampling=GREEDY, eos_ids=())
    ids = np.zeros((2, 16), np.int32)
    mask = np.zeros((2, 16), np.int32)
    for b, p in enumerate(prompts):
        ids[b, : len(p)], mask[b, : len(p)] = p, 1
    out = generate_padded(lm, ids, mask, None, max_new_tokens=6, sampling=GREEDY)
    np.testing.assert_array_equal(out.tokens, left.tokens)
    # right against left padding: the same decode in other positions of the cache
    b_logits, _ = _forward_bounds(lm, [p + left.row_tokens(b) for b, p in enumerate(prompts)])
    tol.assert_within(out.logits, left.logits, b_logits, "logits")
    assert out.hidden is None


def test_bucket_length():
    assert [bucket_length(n) for n in (1, 8, 9, 33, 100, 129, 300)] == [8, 8, 16, 64, 128, 256, 384]
    assert [bucket_length(n, 32) for n in (1, 32, 33)] == [32, 32, 64]
    assert bucket_length(20, (8, 24, 64)) == 24
    with pytest.raises(ValueError, match="exceeds every bucket"):
        bucket_length(65, (8, 24, 64))
    with pytest.raises(ValueError, match="length >= 1"):
        bucket_length(0)


def test_errors(tmp_path_factory):
    _, lm = _models("qwen2", tmp_path_factory)  # 128 positions, vocab 101
    kw = dict(max_new_tokens=4, sampling=GREEDY)
    with pytest.raises(ValueError, match="at least one prompt"):
        rollout(lm, [], None, **kw)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        rollout(lm, [[5, 6], []], None, **kw)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        rollout(lm, [[5, 6]], None, max_new_tokens=0, sampling=GREEDY)
    with pytest.raises(ValueError, match="128 positions"):
        rollout(lm, [[5] * 130], None, **kw)
    with pytest.raises(ValueError, match="128 positions"):
        rollout(lm, [[5] * 100], None, max_new_tokens=29, sampling=GREEDY)
    with pytest.raises(ValueError, match="one PRNG key per row"):
        rollout(lm, [[5], [6]], jax.random.split(jax.random.key(0), 3), **kw)
    with pytest.raises(ValueError, match="needs keys"):
        rollout(lm, [[5]], None, max_new_tokens=4, sampling=SAMPLE)
    with pytest.raises(ValueError, match="need a tokenizer"):
        rollout(lm, [[5]], None, stop_strings=["x"], **kw)
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        rollout(lm, [[5, 101]], None, **kw)
    with pytest.raises(ValueError, match="at least one real token"):
        generate_padded(lm, np.ones((1, 4)), np.zeros((1, 4)), None, **kw)
