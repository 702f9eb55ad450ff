"""Process reward models: each head layout loads strictly from its Hugging Face keys and matches
its PyTorch twin at the step ends (fp32); step-end positions are fixed-shape and lose nothing."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers as tr

from nabla_jax.models.convert import CheckpointMismatchError, read_safetensors
from nabla_jax.models.prm import (
    MATH_PRM_SEPARATOR,
    ProcessRewardModel,
    head_layout,
    layout_of_architecture,
    load_process_reward_model,
    separator_mask,
    step_end_positions,
)
from tests import tolerances as tol
from tests.hf_models import VOCAB, hf_config, hf_model, sharpen_
from tests.reference import torch_prm as ref
from tests.tokenizer_utils import make_chatml_tokenizer

B, T, S = 2, 14, 6
SEP = 7  # the step separator id of the token-classification and outcome-RM tests


def _ids(separator: int, seed: int = 0, vocab: int = VOCAB):
    """``[B, T]`` ids in ``[3, vocab)`` (no pad) with the separator at a few positions."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, vocab, size=(B, T))
    ids[ids == separator] = 3
    ids[0, [2, 6, 13]] = separator
    ids[1, [4, 5, 9]] = separator
    return ids


def _compare(prm, ids, want_rows, what, attention_mask=None):
    """Step scores of ``prm`` at the ``SEP`` positions vs the twin's, within the derived bound."""
    positions, mask, counts = step_end_positions(separator_mask(ids, prm_sep(prm)), S)
    np.testing.assert_array_equal(counts, [len(w) for w in want_rows])

    def run(m):
        return m.step_scores(positions, mask, jnp.asarray(ids), attention_mask)

    got = np.asarray(run(prm))
    # Another reduction order of the same model: its sensitivity inside float32's
    # backward-error ball (tests/tolerances.py), its longest contraction the model's widest.
    rel = tol.gamma(tol.longest_contraction(prm.backbone))
    bound = tol.ball_tolerance(run, prm, rel, prm.config.hidden_size)
    for b, want in enumerate(want_rows):
        k = len(want)
        tol.assert_within(got[b, :k], want.numpy(), bound, f"{what} row {b}")
        assert np.all(got[b, k:] == 0.0)
    spread = np.ptp(np.concatenate([w.numpy() for w in want_rows]))
    assert spread > 1e-3, f"{what}: the twin's step scores barely differ ({spread:.2g})"


def prm_sep(prm):
    return prm.separator_id if prm.separator_id is not None else SEP


# ------------------------------------------------------------------------ token classification


@pytest.fixture(scope="module")
def token_dir(tmp_path_factory):
    torch.manual_seed(3)
    model = tr.Qwen2ForTokenClassification(hf_config("qwen2", num_labels=2)).eval()
    sharpen_(model)
    d = tmp_path_factory.mktemp("token_prm")
    model.save_pretrained(d)
    return d, model


def test_token_classification_matches_transformers(token_dir):
    d, model = token_dir
    prm = load_process_reward_model(d)
    assert prm.layout == "token_classification" and prm.separator_id is None
    ids = _ids(SEP)
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(ids)).logits
    want = ref.step_probabilities(logits, torch.from_numpy(ids), SEP)
    _compare(prm, ids, want, "token-classification PRM")


def test_token_classification_without_bias(tmp_path):
    torch.manual_seed(4)
    cfg = hf_config("qwen2", num_labels=2, token_classification_bias=False)
    model = tr.Qwen2ForTokenClassification(cfg).eval()
    sharpen_(model)
    model.save_pretrained(tmp_path)
    prm = load_process_reward_model(tmp_path)
    assert set(prm.head) == {"kernel"}
    ids = _ids(SEP, seed=1)
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(ids)).logits
    _compare(prm, ids, ref.step_probabilities(logits, torch.from_numpy(ids), SEP), "no bias")


# ------------------------------------------------------------------------ Qwen2.5-Math-PRM layout


@pytest.fixture(scope="module")
def math_dir(tmp_path_factory):
    tok = make_chatml_tokenizer()
    tok.add_tokens([MATH_PRM_SEPARATOR])
    cfg = hf_config("qwen2", num_labels=2)  # the published config keeps HF's default, 2
    cfg.vocab_size = len(tok)
    torch.manual_seed(5)
    model = ref.Qwen2ForProcessRewardModel(cfg).eval()
    sharpen_(model)
    d = tmp_path_factory.mktemp("math_prm")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d, model, tok


def test_math_prm_layout_matches_twin(math_dir):
    d, model, tok = math_dir
    assert json.loads((d / "config.json").read_text())["architectures"] == [
        "Qwen2ForProcessRewardModel"
    ]
    prm = load_process_reward_model(d)
    sep = tok.convert_tokens_to_ids(MATH_PRM_SEPARATOR)
    assert prm.layout == "math_prm" and prm.separator_id == sep
    ids = _ids(sep, seed=2, vocab=len(tok) - 1)
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(ids))
    want = ref.step_probabilities(logits, torch.from_numpy(ids), sep)
    _compare(prm, ids, want, "Qwen2.5-Math-PRM layout")


def test_math_prm_left_padded_batch(math_dir):
    """Left padding (as a batch of prompts has it): pads masked out, positions counted from
    each row's first real token, on both sides."""
    d, model, tok = math_dir
    prm = load_process_reward_model(d)
    sep = prm.separator_id
    ids = _ids(sep, seed=4, vocab=len(tok) - 1)
    attn = np.ones_like(ids)
    ids[1, :3], attn[1, :3] = 0, 0  # three pads; row 1's separators sit at 4, 5, 9
    positions = np.maximum(attn.cumsum(-1) - 1, 0)
    with torch.no_grad():
        logits = model(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(attn),
            position_ids=torch.from_numpy(positions),
        )
    want = ref.step_probabilities(logits, torch.from_numpy(ids), sep)
    _compare(prm, ids, want, "left-padded Qwen2.5-Math-PRM", attention_mask=jnp.asarray(attn))


def test_math_prm_loading_is_strict(math_dir, tmp_path):
    d, model, tok = math_dir
    with pytest.raises(CheckpointMismatchError, match=r"token_classification layout: unknown"):
        load_process_reward_model(d, layout="token_classification")
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "score.2.bias"}
    model.save_pretrained(tmp_path, state_dict=state)
    tok.save_pretrained(tmp_path)
    assert "score.2.bias" not in read_safetensors(str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError, match=r"with no key \['score.2.bias'\]"):
        load_process_reward_model(tmp_path)
    with pytest.raises(ValueError, match=r"'<sep>' is not a token"):
        load_process_reward_model(d, separator="<sep>")
    with pytest.raises(ValueError, match=r"separator '<extra_0>' is not a token"):
        load_process_reward_model(d, tokenizer=False)


# ------------------------------------------------------------------------ outcome RM at step ends


def test_outcome_rm_read_at_every_step_end(tmp_path):
    model = hf_model("qwen3", "score", seed=6)
    model.save_pretrained(tmp_path)
    prm = load_process_reward_model(tmp_path)
    assert prm.layout == "sequence"
    ids = _ids(SEP, seed=3)
    ends = [np.flatnonzero(row == SEP).tolist() for row in ids]
    with torch.no_grad():
        want = ref.orm_prefix_scores(model, torch.from_numpy(ids), ends)
    _compare(prm, ids, want, "outcome RM per prefix")


def test_layouts_and_architectures():
    assert layout_of_architecture(["Qwen2ForTokenClassification"]) == "token_classification"
    assert layout_of_architecture(["Qwen2ForProcessRewardModel"]) == "math_prm"
    assert layout_of_architecture(["Qwen3ForSequenceClassification"]) == "sequence"
    with pytest.raises(ValueError, match=r"\['Qwen2ForCausalLM'\] name no process-reward head"):
        layout_of_architecture(["Qwen2ForCausalLM"])
    with pytest.raises(ValueError, match="PRM layout must be one of token_classification"):
        head_layout("mlp", 8)
    with pytest.raises(ValueError, match="layout must be one of"):
        ProcessRewardModel(None, {}, "mlp")


def test_wrong_label_count_is_refused(tmp_path):
    model = tr.Qwen2ForTokenClassification(hf_config("qwen2", num_labels=3)).eval()
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"token_classification PRM has 2 label.*num_labels 3"):
        load_process_reward_model(tmp_path)
    with pytest.raises(CheckpointMismatchError, match=r"math_prm layout: unknown head keys"):
        load_process_reward_model(tmp_path, layout="math_prm")


# ------------------------------------------------------------------------ step ends


def test_step_end_positions():
    is_end = np.zeros((2, 8), bool)
    is_end[0, [1, 4, 7]] = True
    is_end[1, [0]] = True
    pos, mask, counts = step_end_positions(is_end, 4)
    np.testing.assert_array_equal(pos, [[1, 4, 7, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(counts, [3, 1])
    jitted = jax.jit(step_end_positions, static_argnums=1)(jnp.asarray(is_end), 2)
    np.testing.assert_array_equal(jitted[2], [3, 1])  # under jit: counts tell of the overflow
    with pytest.raises(ValueError, match="a row has 3 step ends but max_steps is 2"):
        step_end_positions(is_end, 2)
    with pytest.raises(ValueError, match="max_steps must be a positive int"):
        step_end_positions(is_end, 0)
    with pytest.raises(ValueError, match=r"is_end must be \[B, T\]"):
        step_end_positions(is_end[0], 4)
    np.testing.assert_array_equal(
        separator_mask(np.array([[5, 7, 9, 7]]), [7, 9]), [[False, True, True, True]]
    )


def test_math_prm_reward_gradient_matches_twin(math_dir):
    """A PRM as DTO's reward: soft minimum of the step scores of ``y @ E`` (a relaxed one-hot),
    differentiated in ``y``, against PyTorch autograd through the twin."""
    from nabla_jax.functional.step_scores import soft_min_steps
    from tests.reference.torch_step_scores import aggregate

    d, model, tok = math_dir
    prm = load_process_reward_model(d)
    sep, v = prm.separator_id, prm.config.vocab_size
    ids = _ids(sep, seed=5, vocab=v - 1)
    rng = np.random.RandomState(6)
    z = np.eye(v, dtype=np.float32)[ids] * 4.0 + rng.randn(B, T, v).astype(np.float32)
    y = np.asarray(jax.nn.softmax(jnp.asarray(z), -1))
    positions, mask, _ = step_end_positions(separator_mask(ids, sep), S)
    tau = 0.2

    def reward(m, y):
        embeds = jnp.einsum("btv,vd->btd", y, m.embed_matrix())
        return soft_min_steps(m.step_scores(positions, mask, inputs_embeds=embeds), mask, tau)

    def run(m):
        return jax.grad(lambda y: reward(m, y).sum())(jnp.asarray(y))

    got = np.asarray(run(prm))
    yt = torch.from_numpy(y.copy()).requires_grad_(True)
    logits = model(inputs_embeds=yt @ model.model.embed_tokens.weight)
    probs = torch.softmax(logits, -1)[..., 1]
    picked = torch.gather(probs, 1, torch.from_numpy(np.array(positions)).long())
    aggregate(picked, torch.from_numpy(np.array(mask)), "soft_min", tau).sum().backward()
    want = yt.grad.numpy()
    # The gradient of the same computation in another order: its sensitivity inside float32's
    # backward-error ball, the longest contraction being the vocabulary of y @ E.
    rel = tol.gamma(tol.longest_contraction(prm.backbone))
    bound = tol.ball_tolerance(run, prm, rel, v)
    tol.assert_within(got, want, bound, "d reward / d y")
    assert np.abs(want).max() > 1e-3  # the reward does depend on y


def test_bad_paths_and_positions(token_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; pass a local directory"):
        load_process_reward_model(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_process_reward_model(tmp_path)
    prm = load_process_reward_model(token_dir[0])
    ids = jnp.asarray(_ids(SEP))
    with pytest.raises(ValueError, match=r"step positions hold 2..14, outside the 14 positions"):
        prm.step_scores(jnp.array([[2, 14], [3, 0]]), jnp.array([[1, 1], [1, 0]]), ids)
    with pytest.raises(ValueError, match=r"must both be \[B, S\] with B = 2"):
        prm.step_scores(jnp.zeros((3, 2), jnp.int32), jnp.zeros((3, 2)), ids)
