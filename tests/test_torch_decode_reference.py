"""The whole ∇-Reasoner decode loop against its eager PyTorch twin (reference/torch_decode.py).

Bundled pair, bundled settings except greedy resampling (τ 0, so both sides draw the same tokens
with no shared random stream) and a DTO learning rate large enough that refined tokens change:
the same committed ids and the same counters, with proposals both accepted and rejected.
"""

from __future__ import annotations

import jax
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import nabla_jax as nj  # noqa: E402
from nabla_jax.app.bundled import BUNDLED_LM, BUNDLED_RM, bundled_decode_config, load_bundled  # noqa: E402
from nabla_jax.decoding.sampling import SamplingConfig  # noqa: E402
from nabla_jax.tasks import format_prompt, fresh_test_problems  # noqa: E402
from tests.reference.torch_decode import TorchNablaDecoder, load_hf_pair  # noqa: E402

COUNTERS = (
    "generations",
    "rejections",
    "model_calls",
    "rollout_calls",
    "dto_calls",
    "score_calls",
    "generated_tokens",
    "optimized_tokens",
    "rewarded_tokens",
    "iterations",
    "refinements",
)


@pytest.mark.slow
@pytest.mark.parametrize(
    "explore",
    [
        dict(resample_excludes_current=False, accept_margin=None),  # the paper's loop
        dict(resample_excludes_current=True, accept_margin=0.05),  # the bundled exploration
    ],
    ids=["paper", "exclude-current-margin"],
)
def test_decode_matches_torch_twin(explore):
    cfg = bundled_decode_config(
        resample=SamplingConfig(temperature=0.0),
        dto=nj.DTOConfig(num_steps=10, learning_rate=0.3),
        batch_size=4,
        **explore,
    )
    prompts = [format_prompt(p) for p in fresh_test_problems(4, seed=1)]
    torch.set_num_threads(1)
    twin = TorchNablaDecoder(*load_hf_pair(BUNDLED_LM, BUNDLED_RM), cfg).generate(prompts)
    lm, rm = load_bundled()
    ours = nj.NablaDecoder(lm, rm, cfg).generate(prompts, jax.random.key(0))

    for t, o in zip(twin, ours, strict=True):
        assert o.token_ids == t.token_ids, t.prompt
        assert o.text == t.text
        assert {k: o.stats[k] for k in COUNTERS} == {k: t.stats[k] for k in COUNTERS}, t.prompt
        assert o.stats["stop_reason"] == t.stats["stop_reason"]
        assert o.stats["refinement_end"] == t.stats["refinement_end"]
        assert [(e["position"], e["new_token"], e["accepted"]) for e in o.trace] == [
            (e["position"], e["new_token"], e["accepted"]) for e in t.trace
        ]
    # The comparison covers the propose / accept / reject paths.
    events = [e for r in twin for e in r.trace if e["proposed"]]
    assert any(e["accepted"] for e in events), "no proposal accepted"
    assert any(not e["accepted"] for e in events), "no proposal rejected"
    assert sum(r.stats["generations"] for r in twin) > len(prompts)
