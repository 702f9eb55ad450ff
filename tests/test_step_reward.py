"""A process reward model as the reward of every method (issue: PRMs drive acceptance, Best-of-N
and DTO): each head layout, read at the step ends and aggregated, against its PyTorch twin
(``tests/reference/torch_step_reward.py``) — in Best-of-N's ranking, in the decoder's acceptance
test, and as DTO's differentiable reward."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers as tr

import nabla_jax as nj
from nabla_jax.decoding.pair import check_pair, model_pair
from nabla_jax.decoding.scoring import rm_scores
from nabla_jax.decoding.stopping import default_eos_ids
from nabla_jax.functional.context import prepare_context, rm_reward
from nabla_jax.functional.dto_config import DTOConfig
from nabla_jax.functional.packing import pack
from nabla_jax.functional.refine import RefineProblem
from nabla_jax.functional.step_reward import StepReward, step_reward
from nabla_jax.models import load_process_reward_model
from nabla_jax.models.prm import MATH_PRM_SEPARATOR
from nabla_jax.text.templates import lm_prompt_ids, rm_prefix_suffix_ids
from tests import tolerances as tol
from tests.hf_models import sharpen_
from tests.reference import torch_prm
from tests.reference import torch_step_reward as twin
from tests.tokenizer_utils import make_chatml_tokenizer

PROMPTS = ["Solve for x: 3x + 5 = 20.", "Let's think step by step."]
LAYOUTS = ("token_classification", "math_prm", "sequence")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A tiny LM and one PRM per head layout, all on one ChatML tokenizer with ``<extra_0>``."""
    tok = make_chatml_tokenizer()
    tok.add_tokens([MATH_PRM_SEPARATOR])
    d = tmp_path_factory.mktemp("step_reward")
    common = dict(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        pad_token_id=0, eos_token_id=2,
    )  # fmt: skip
    models = {}
    for seed, name, make in (
        (1, "lm", lambda: tr.Qwen2ForCausalLM(tr.Qwen2Config(**common))),
        (2, "token_classification",
         lambda: tr.Qwen2ForTokenClassification(tr.Qwen2Config(num_labels=2, **common))),
        (3, "math_prm",
         lambda: torch_prm.Qwen2ForProcessRewardModel(tr.Qwen2Config(num_labels=2, **common))),
        (4, "sequence",
         lambda: tr.Qwen2ForSequenceClassification(tr.Qwen2Config(num_labels=1, **common))),
    ):  # fmt: skip
        torch.manual_seed(seed)
        models[name] = make().eval()
        sharpen_(models[name])
        models[name].save_pretrained(d / name)
        tok.save_pretrained(d / name)
    lm = nj.load_causal_lm(d / "lm")
    # The step delimiter: the character most of the tiny LM's sampled tokens hold, so that its
    # random responses have several steps (the bundled task's "\n" is one token of 301 here).
    groups = nj.decoding.samples.generate_samples(
        lm, PROMPTS, jax.random.key(0), 4, sampling=nj.SamplingConfig(temperature=1.0),
        max_length=20, stop_strings=(), eos_ids=None, system=None, batch_size=8,
    )  # fmt: skip
    tok = lm.tokenizer  # the tokenizer as the product loads it
    counts = collections.Counter(t for g in groups for s in g for t in s.tokens if t > 2)
    chars = collections.Counter()
    for t, n in counts.items():
        for c in set(tok.decode([t])) - {"\ufffd"}:
            chars[c] += n
    step_end = chars.most_common(1)[0][0]
    return dict(tok=tok, dir=d, torch=models, lm=lm, step_end=step_end)


def _reward(pair, layout, how, temperature=None):
    prm = load_process_reward_model(pair["dir"] / layout, layout=layout)
    return step_reward(prm, how, step_end=pair["step_end"], temperature=temperature)


def _bound(run, reward):
    """Another evaluation order of the same reward: its sensitivity in float32's backward-error
    ball (tests/tolerances.py), the longest contraction the backbone's widest."""
    rel = tol.gamma(tol.longest_contraction(reward.prm.backbone))
    return tol.ball_tolerance(run, reward, rel, reward.config.hidden_size)


def _assert_twin(got, pair, reward, layout, how, prompt, responses, temperature=None):
    """``got`` (the scores a method reports for ``responses``) equal the twin's rewards within
    the derived bound of scoring those RM inputs; returns the step counts of the inputs."""
    tok = pair["tok"]
    lm_ends = reward.bound_to(tok).lm_end_ids
    prefix, _ = rm_prefix_suffix_ids(tok, prompt)
    seqs, want, steps = [], [], []
    for r in responses:
        ids, start = twin.rm_input(prefix, r, lm_end_ids=lm_ends, separator=reward.separator_id,
                                   eos_ids=default_eos_ids(pair["lm"]))  # fmt: skip
        seqs.append(ids)
        steps.append(len(twin.step_ends(ids, start, reward.rm_end_ids)))
        with torch.no_grad():
            want.append(float(twin.token_reward(pair["torch"][layout], layout, ids, start,
                                                reward.rm_end_ids, how, temperature)))  # fmt: skip
    starts = [len(prefix)] * len(seqs)
    bound = _bound(lambda m: rm_scores(m, seqs, starts=starts, batch_size=8), reward)
    tol.assert_within(np.asarray(got), np.asarray(want), bound, f"{layout}/{how} scores")
    return np.asarray(want), steps


@pytest.mark.parity
@pytest.mark.parametrize(
    "layout,how", [("token_classification", "min"), ("math_prm", "product"),
                   ("sequence", "last"), ("math_prm", "mean")],
)  # fmt: skip
def test_best_of_n_ranks_by_the_step_reward(pair, layout, how):
    reward = _reward(pair, layout, how)
    results = nj.best_of_n(
        pair["lm"], reward, PROMPTS, jax.random.key(1), n=4,
        sampling=nj.SamplingConfig(temperature=1.0), max_length=20,
    )  # fmt: skip
    many_steps = 0
    for prompt, res in zip(PROMPTS, results, strict=True):
        got = [e["score"] for e in res.trace]
        want, steps = _assert_twin(got, pair, reward, layout, how, prompt,
                                   [e["token_ids"] for e in res.trace])  # fmt: skip
        many_steps += sum(n > 1 for n in steps)
        assert res.stats["chosen"] == int(np.argmax(got))
        assert np.ptp(want) > 1e-4, "the samples' rewards barely differ: the test ranks nothing"
    assert many_steps >= 2, "too few multi-step responses to test the aggregation"


def test_weighted_best_of_n_and_beam_search_read_the_step_reward(pair):
    """The weighted vote's scores and beam search's node values are the step reward's."""
    reward = _reward(pair, "token_classification", "min")
    res = nj.weighted_best_of_n(
        pair["lm"], reward, PROMPTS[:1], jax.random.key(2), n=3, answer_extractor=lambda t: t[:2],
        sampling=nj.SamplingConfig(temperature=1.0), max_length=16,
    )  # fmt: skip
    _assert_twin([e["score"] for e in res[0].trace], pair, reward, "token_classification",
                 "min", PROMPTS[0], [e["token_ids"] for e in res[0].trace])  # fmt: skip
    beam = nj.beam_search(pair["lm"], reward, PROMPTS[:1], jax.random.key(3), beams=2,
                          expansions=2, sampling=nj.SamplingConfig(temperature=1.0),
                          max_length=16, step_delimiter=pair["step_end"])  # fmt: skip
    _assert_twin([beam[0].stats["score"]], pair, reward, "token_classification", "min",
                 PROMPTS[0], [beam[0].token_ids])  # fmt: skip


@pytest.mark.parametrize("layout", ["math_prm", "token_classification"])
def test_decoder_accepts_by_the_step_reward(pair, layout):
    """Every acceptance test compares step rewards; the final response's reward is the twin's."""
    reward = _reward(pair, layout, "min", temperature=0.2)
    cfg = nj.DecodeConfig(
        max_length=16,
        batch_size=2,
        max_n_generations=4,
        dto_window=8,
        confidence_threshold=None,
        entropy_threshold=1e-3,
        grad_threshold=None,
    )
    results = nj.NablaDecoder(pair["lm"], reward, cfg).generate(PROMPTS, jax.random.key(4))
    tested = 0
    for prompt, res in zip(PROMPTS, results, strict=True):
        final = res.trace[0]["score_current"] if res.trace else None
        for e in res.trace:
            if e["accepted"] is None:
                continue
            tested += 1
            assert e["accepted"] == (e["score_proposed"] > e["score_current"])
            if e["accepted"]:
                final = e["score_proposed"]
        if final is None:
            continue
        _assert_twin([final], pair, reward, layout, "min", prompt, [res.token_ids])
    assert tested >= 2, "no acceptance test ran"


@pytest.mark.parity
@pytest.mark.parametrize(
    "layout,how,tau",
    [
        ("math_prm", "min", 0.2),
        ("token_classification", "mean", None),
        ("sequence", "soft_min", 0.5),
    ],
)
def test_dto_reward_and_gradient_match_twin(pair, layout, how, tau):
    """DTO's reward of a relaxed window ``y`` (prefix cached, tail and closing separator after
    it): the aggregate of the window's and the tail's steps — ``min`` as the soft minimum — and
    its gradient in ``y``, against PyTorch autograd through the twin."""
    lm, tok = pair["lm"], pair["tok"]
    reward = _reward(pair, layout, how, tau)
    checked = check_pair(lm, reward, "the test")
    models = model_pair(lm, reward, checked.vocabulary)
    bound_reward = models.rm
    lm_ends = list(bound_reward.lm_end_ids)
    v = lm.config.vocab_size
    rng = np.random.RandomState(7)
    committed = [int(t) for t in rng.randint(3, v - 1, size=5)]
    committed[1] = lm_ends[0]  # a committed step end: the prefix's step, a constant for DTO
    tail = [int(t) for t in rng.randint(3, v - 1, size=4)]
    tail[2] = lm_ends[-1]
    k = 4
    z = rng.randn(k, v).astype(np.float32) * 2.0
    z[1, lm_ends[0]] = 12.0  # window position 1 ends a step (its argmax)
    prefix, _ = rm_prefix_suffix_ids(tok, PROMPTS[0])
    rm_ids = np.arange(v) if models.rm_ids is None else np.asarray(models.rm_ids)
    rm_prefix = prefix + [int(rm_ids[t]) for t in committed]
    rm_suffix = [int(rm_ids[t]) for t in tail] + bound_reward.frame_suffix()
    problem = RefineProblem(
        lm_prefix_ids=lm_prompt_ids(tok, PROMPTS[0]) + committed,
        rm_prefix_ids=rm_prefix,
        rm_suffix_ids=rm_suffix,
        init=z,
    )
    dto = DTOConfig(hard=False)
    batch = pack(lm, [problem], dto)
    prog = dto.program()
    kk = batch.window_mask.shape[1]
    y = np.zeros((1, kk, v), np.float32)
    y[0, :k] = np.asarray(jax.nn.softmax(jnp.asarray(z), -1))

    def run(r):
        ctx = prepare_context(lm, r, batch, prog, rm_table=models.rm_table)
        return jax.value_and_grad(lambda y: rm_reward(r, ctx, batch, y, prog)[0])(jnp.asarray(y))

    value, grad = run(bound_reward)
    model = pair["torch"][layout]
    embed = model.get_input_embeddings().weight
    yt = torch.from_numpy(y[0, :k].copy()).requires_grad_(True)
    table = embed[torch.from_numpy(rm_ids.copy())]
    embeds = torch.cat([embed[torch.as_tensor(rm_prefix)], yt @ table,
                        embed[torch.as_tensor(rm_suffix)]])  # fmt: skip
    q, ends_set = len(rm_prefix), set(bound_reward.rm_end_ids)
    window_ends = [q + j for j in range(k) if int(np.argmax(z[j])) in set(lm_ends)]
    suffix_ends = [q + k + j for j, t in enumerate(rm_suffix) if t in ends_set]
    ends = sorted(set(window_ends + suffix_ends + [q + k + len(rm_suffix) - 1]))
    assert len(ends) >= 2
    want = twin.reward(model, layout, embeds, ends, "soft_min" if how == "min" else how, tau)
    want.backward()
    bound_v, bound_g = tol.ball_tolerance(
        run, bound_reward, tol.gamma(tol.longest_contraction(bound_reward.prm.backbone, extra=v)),
        (bound_reward.config.hidden_size, v),
    )  # fmt: skip
    tol.assert_within(value, want.item(), bound_v, f"{layout} DTO reward")
    tol.assert_within(np.asarray(grad)[0, :k], yt.grad.numpy(), bound_g, f"{layout} d reward/dy")
    assert np.abs(yt.grad.numpy()).max() > 1e-4  # the reward does depend on the window


def test_separator_replaces_step_delimiters_only_in_the_rm_input(pair):
    lm = pair["lm"]
    reward = _reward(pair, "math_prm", "min")
    checked = check_pair(lm, reward, "the test")
    models = model_pair(lm, reward, checked.vocabulary)
    ends = list(models.rm.lm_end_ids)
    table = np.asarray(models.rm_ids)
    assert set(table[ends]) == {reward.separator_id}
    others = np.setdiff1d(np.arange(len(table)), ends)
    np.testing.assert_array_equal(table[others], others)  # every other id reads as itself
    np.testing.assert_array_equal(  # and DTO embeds a delimiter as the separator
        np.asarray(models.rm_table[ends[0]]), np.asarray(reward.embed_matrix()[reward.separator_id])
    )
    assert reward.frame_suffix() == [reward.separator_id]
    task_reward = _reward(pair, "token_classification", "min")
    assert task_reward.frame_suffix() == []
    assert check_pair(lm, task_reward, "t").vocabulary.vocab_map is None  # no table needed


def test_step_reward_errors(pair):
    prm = load_process_reward_model(pair["dir"] / "token_classification")
    with pytest.raises(TypeError, match="reads a ProcessRewardModel"):
        step_reward(pair["lm"], "min")
    with pytest.raises(ValueError, match="aggregate must be one of last, min"):
        step_reward(prm, "max")
    with pytest.raises(ValueError, match="soft_min needs a temperature"):
        step_reward(prm, "soft_min")
    with pytest.raises(ValueError, match="temperature applies to min and soft_min only"):
        step_reward(prm, "mean", temperature=0.1)
    with pytest.raises(ValueError, match="temperature must be a number > 0"):
        step_reward(prm, "min", temperature=0)
    with pytest.raises(ValueError, match="no token of the PRM's tokenizer contains"):
        step_reward(prm, "min", step_end="\x07\x07\x07")
    with pytest.raises(ValueError, match="does not know the LM's step-end tokens"):
        step_reward(prm, "min").lm_ends(jnp.zeros((1, 2), jnp.int32))
    with pytest.raises(ValueError, match="decodes on one device for now"):
        mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
        nj.NablaDecoder(pair["lm"], step_reward(prm, "min"), nj.DecodeConfig(), mesh=mesh)
    from nabla_jax.tasks import arithmetic
    from nabla_jax.tasks.oracle import OracleScorer
    from nabla_jax.tasks.registry import get_task

    with pytest.raises(ValueError, match="use the PRM itself for acceptance"):
        OracleScorer(get_task("arithmetic"), arithmetic.fresh_test_problems(2, seed=0),
                     pair["lm"], _reward(pair, "math_prm", "min"))  # fmt: skip
    assert isinstance(
        jax.tree.map(lambda x: x, step_reward(prm, "min", temperature=0.3)), StepReward
    )  # a pytree: it passes through jit and tree maps
