"""Decoding across devices and processes, run by tests/test_scale_out.py in subprocesses.

    python -m tests.scale_out_check save DIR                  # write the tiny models (needs torch)
    python -m tests.scale_out_check meshes DIR                # 8 virtual devices: 4 meshes vs 1
    python -m tests.scale_out_check host DIR OUT N PID ADDR   # one process of a multi-host run
    python -m tests.scale_out_check single DIR OUT            # the single-process reference

The same prompts are decoded with ``NablaDecoder``; results are compared as JSON
(text, token ids, stats). Prints ``SCALE-OUT OK`` when all checks pass.
"""

from __future__ import annotations

import json
import os
import sys

PROMPTS = ["What is 2 + 2?", "Solve 3x + 5 = 20.", "Let's think step by step.", "Add 7 and 5.",
           "What is 9 - 4?"]  # fmt: skip
MESHES = [(8, 1), (4, 2), (2, 4), (1, 8)]


def save(path):
    from tests.hf_models import save_chat_pair

    save_chat_pair(f"{path}/lm", f"{path}/rm", hidden=64, heads=8, kv_heads=8, intermediate=128)


def _decoder(path, mesh=None):
    import nabla_jax as nj
    from nabla_jax.decoding import DecodeConfig, SamplingConfig

    cfg = DecodeConfig(
        max_length=10, max_n_generations=3, rollout=SamplingConfig(temperature=1.0),
        resample=SamplingConfig(temperature=1.5), grad_threshold=None,
        dto=nj.DTOConfig(num_steps=2, learning_rate=0.05), dto_window=4, batch_size=8,
    )  # fmt: skip
    lm = nj.load_causal_lm(f"{path}/lm", mesh=mesh)
    rm = nj.load_reward_model(f"{path}/rm", mesh=mesh)
    return nj.NablaDecoder(lm, rm, cfg, mesh=mesh)


def _rows(results):
    return [
        {"text": r.text, "token_ids": [int(t) for t in r.token_ids], "stats": dict(r.stats)}
        for r in results
    ]


def meshes(path) -> int:
    import jax

    import nabla_jax as nj

    key = jax.random.key(0)
    ref = _rows(_decoder(path).generate(PROMPTS, key))
    failures = 0
    for data, model in MESHES:
        mesh = nj.make_mesh({"data": data, "model": model})
        got = _rows(_decoder(path, mesh).generate(PROMPTS, key))
        same = got == ref
        failures += not same
        print(f"mesh data={data} model={model}: same responses and stats as 1 device: {same}")
        if not same:
            print("  expected:", ref, "\n  got:", got)
    # The baselines accept a mesh too (weights split over "model").
    from nabla_jax.decoding import SamplingConfig, best_of_n

    dec = _decoder(path)
    kw = dict(n=4, sampling=SamplingConfig(temperature=1.0), max_length=10)
    ref_bon = _rows(best_of_n(dec.lm, dec.rm, PROMPTS, key, **kw))
    mesh = nj.make_mesh({"data": 2, "model": 4})
    got_bon = _rows(best_of_n(dec.lm, dec.rm, PROMPTS, key, mesh=mesh, **kw))
    # Tokens and counts equal; the chosen candidate's RM score within the scoring forward's
    # rounding: the weights split over "model" reorder its contractions (at most the hidden,
    # MLP or vocabulary width n), so each score is off by γ_n-ball amounts; a closed form
    # for the score head's last dot, 2·γ_n·|score| with an 8× depth margin, plus γ_n of 1 for
    # scores near 0 (the head's inputs are RMS-normalised: O(1) terms).
    from tests import tolerances as tol

    n = tol.longest_contraction(dec.lm, dec.rm)
    scores = [(r["stats"].pop("score"), g["stats"].pop("score")) for r, g in zip(ref_bon, got_bon)]
    score_tol = lambda a: tol.BALL_SAFETY * 2 * tol.gamma(n) * (abs(a) + 1.0)  # noqa: E731
    same = got_bon == ref_bon and all(abs(a - b) <= score_tol(a) for a, b in scores)
    failures += not same
    print(f"best_of_n on mesh data=2 model=4: same as 1 device: {same}")
    return failures


def host(path, out, n, pid, addr):
    import jax

    from nabla_jax.runtime import distributed

    distributed.maybe_initialize(addr, n, pid)
    results = distributed.generate_across_hosts(_decoder(path), PROMPTS, jax.random.key(0))
    if distributed.is_main_process():
        with open(out, "w") as f:
            json.dump(_rows(results), f)
    print(f"process {pid}: {jax.process_count()} processes, {jax.device_count()} devices, "
          f"decoded {len(distributed.owned_indices(len(PROMPTS)))} prompts")  # fmt: skip


def single(path, out):
    import jax

    with open(out, "w") as f:
        json.dump(_rows(_decoder(path).generate(PROMPTS, jax.random.key(0))), f)


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "save":
        save(args[0])
    elif cmd == "meshes":
        bad = meshes(args[0])
        print("SCALE-OUT OK" if not bad else f"SCALE-OUT FAILED ({bad} meshes differ)")
        sys.exit(1 if bad else 0)
    elif cmd == "host":
        host(args[0], args[1], int(args[2]), int(args[3]), args[4])
    elif cmd == "single":
        single(args[0], args[1])
    else:
        sys.exit(f"unknown command {cmd}")
