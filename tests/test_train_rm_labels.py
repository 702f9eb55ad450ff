"""The reward-model training script's labels (scripts/train_rm.py): outcome, per-step and
per-token "no error yet" labels, and the synthetic corruptions they are computed on."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
train_rm = pytest.importorskip("train_rm")

from nabla_jax.tasks import generate, grade  # noqa: E402
from nabla_jax.text.tokenizer import load_bundled_tokenizer  # noqa: E402

QUESTION = "Compute 16*3*9+6"
SOLUTION = "16*3=48\n48*9=432\n432+6=438\nAnswer: 438"
# second step's result truncated (432 -> 43), chain continued consistently from it
WRONG = "16*3=48\n48*9=43\n43+6=49\nAnswer: 49"


def test_prefix_labels_mark_each_step_until_the_first_error():
    assert train_rm.prefix_labels(SOLUTION, SOLUTION) == [(7, 1), (16, 1), (26, 1)]
    assert train_rm.prefix_labels(WRONG, SOLUTION) == [(7, 1), (15, 0), (23, 0)]
    # a wrong answer line alone leaves every step label at 1 (the outcome label catches it)
    only_answer = SOLUTION.replace("Answer: 438", "Answer: 439")
    assert [lab for _, lab in train_rm.prefix_labels(only_answer, SOLUTION)] == [1, 1, 1]


@pytest.mark.parametrize("process", ["steps", "tokens"])
def test_encoded_process_labels(process):
    tok = load_bundled_tokenizer()
    ids, mask, labels, step_labels, step_mask = train_rm.encode_rm(
        tok, [(QUESTION, SOLUTION, 1, SOLUTION), (QUESTION, WRONG, 0, SOLUTION)], 112, process
    )
    assert labels.tolist() == [1.0, 0.0]
    prefix, suffix = train_rm.rm_prefix_suffix_ids(tok, QUESTION)
    for row, text in enumerate([SOLUTION, WRONG]):
        resp = tok.encode(text, add_special_tokens=False)
        assert ids[row, : mask[row].sum()].tolist() == prefix + resp + suffix
        where = np.flatnonzero(step_mask[row])
        got = [(tok.decode([int(ids[row, t])]), int(step_labels[row, t])) for t in where]
        if process == "steps":
            want = (
                [("\n", 1), ("\n", 1), ("\n", 1)] if row == 0 else [("\n", 1), ("\n", 0), ("\n", 0)]
            )
        else:
            ref = tok.encode(SOLUTION, add_special_tokens=False)
            first_bad = next((j for j, (a, b) in enumerate(zip(resp, ref)) if a != b), len(resp))
            want = [(tok.decode([t]), int(j < first_bad)) for j, t in enumerate(resp)]
        assert got == want
    # the wrong row's token labels turn 0 exactly at the newline that ends "48*9=43"
    if process == "tokens":
        bad = [
            tok.decode([int(ids[1, t])])
            for t in np.flatnonzero(step_mask[1] * (1 - step_labels[1]))
        ]
        assert bad[0] == "\n" and len(bad) == len(tok.encode(WRONG[15:], add_special_tokens=False))


def test_corruptions_are_wrong_and_well_formed():
    rng = np.random.default_rng(0)
    for p in generate("train", 50, seed=5):
        bad = train_rm.corrupt_solution(p.solution, rng)
        lines = bad.split("\n")
        assert lines[-1].startswith("Answer: ") and len(lines) == len(p.solution.split("\n"))
        assert all(train_rm._STEP_RE.match(line) for line in lines[:-1])
        assert bad != p.solution
        if not grade(bad, p.answer):
            assert (
                0 in [lab for _, lab in train_rm.prefix_labels(bad, p.solution)]
                or lines[:-1] == p.solution.split("\n")[:-1]
            )


def test_first_error_targets_name_the_first_wrong_token_and_its_fix():
    rm_loss = pytest.importorskip("rm_gradient_loss")
    tok = load_bundled_tokenizer()
    samples = [(QUESTION, SOLUTION, 1, SOLUTION), (QUESTION, WRONG, 0, SOLUTION)]
    pos, right = rm_loss.first_error_targets(tok, samples, 112)
    ids = train_rm.encode_rm(tok, samples, 112, "tokens")[0]
    ref = tok.encode(SOLUTION, add_special_tokens=False)
    got = tok.encode(WRONG, add_special_tokens=False)
    j = next(i for i, (a, b) in enumerate(zip(got, ref)) if a != b)
    prefix, _ = train_rm.rm_prefix_suffix_ids(tok, QUESTION)
    assert pos[0] == -1  # the reference itself: nothing to correct
    assert pos[1] == len(prefix) + j and right[1] == ref[j] and ids[1, pos[1]] == got[j]
    assert rm_loss.first_error_targets(tok, samples[1:], len(prefix) + j)[0][0] == -1  # cut


def test_gradient_alignment_loss_is_the_cross_entropy_of_directional_derivatives():
    """The swap estimates are the score's directional derivatives along e_v − e_c at the
    position (checked with forward-mode jvp, an independent computation)."""
    import jax
    import jax.numpy as jnp

    import nabla_jax as nj
    from tests.hf_models import hf_config

    rm_loss = pytest.importorskip("rm_gradient_loss")
    rm = nj.init_reward_model(hf_config("qwen2", num_labels=1), jax.random.key(0))
    ids = jnp.asarray(np.random.RandomState(0).randint(3, 60, (2, 9)), jnp.int32)
    mask = jnp.ones_like(ids)
    position, right = jnp.asarray([4, -1]), jnp.asarray([7, 0])
    cands = jnp.asarray([[7, 11, 12], [1, 2, 3]])
    loss = rm_loss.gradient_alignment_loss(rm, ids, mask, position, right, cands, 0.5)
    table, emb = rm.embed_matrix(), rm.embed(ids)

    def est(v):
        d = jnp.zeros_like(emb).at[0, 4].set(table[v] - emb[0, 4])
        f = lambda e: rm.score(inputs_embeds=e, attention_mask=mask)[0]  # noqa: E731
        return jax.jvp(f, (emb,), (d,))[1]

    swaps = [int(ids[0, 4]), 7, 11, 12]  # keeping the current token (estimate 0) and the rest
    s = jnp.asarray([0.0] + [est(v) for v in swaps[1:]]) / 0.5
    want = -(s[1] - jax.nn.logsumexp(s))  # the right token is 7; row 1 has no target
    # float32: the reverse- and forward-mode derivatives differ by rounding of O(D·T) sums
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-4, atol=1e-5)
    rank = rm_loss.right_swap_rank(rm, ids, mask, position, right, cands)
    assert int(rank[1]) == -1 and int(rank[0]) == int(jnp.sum(s > s[1]))
