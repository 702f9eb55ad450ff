"""Multi-device sharding check, run by tests/test_sharding.py in a subprocess with 8 CPU devices.

    python -m tests.sharding_check [MODELS_DIR]   # sets the XLA flags below unless XLA_FLAGS is set

MODELS_DIR (optional) holds ``lm/`` and ``rm/`` written by ``save_models``; the pytest wrapper
writes them in its own process (torch already imported there) to keep the subprocess lean.

For meshes (data, model) = (8, 1), (4, 2), (2, 4), (1, 8) it loads a tiny random Qwen2 LM
(kv heads 8) and reward model (kv heads 4: k/v replicated at model=8) straight into their sharded
layout, checks every shard's shape and the per-device bytes, and checks that ``refine_batch`` on
the mesh reproduces the single-device run (tokens equal, logits within the derived bound). Prints
one line per check and ``SHARDING-CHECK OK`` at the end; exits with status 1 and the failures
otherwise.

Tolerance: derived, not fitted (tests/tolerances.py). The refinement uses Adam, whose
per-coordinate normalisation turns float32 summation-order noise in near-zero gradients into logit
differences of order ``learning_rate · 1e-3``; a mesh is another summation order, so the bound is
the refinement's own sensitivity inside float32's backward-error ball (``refine_bounds``, measured
on one device), and the probe's the same ball (``forward_tolerance``).
LLVM optimisation is turned down (``--xla_backend_optimization_level=0``) to halve compile time;
both runs being compared use the same flags.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0",
)

import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

FLAG = "--xla_force_host_platform_device_count=8"
MESHES = ((8, 1), (4, 2), (2, 4), (1, 8))
VOCAB, HIDDEN, HEADS, INTER, LAYERS = 128, 64, 8, 128, 2
FAILURES: list[str] = []


def check(ok: bool, what: str):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        FAILURES.append(what)


def save_models(root: Path, layers: int = LAYERS):
    import torch
    import transformers as tr

    def cfg(kv):
        return tr.Qwen2Config(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            intermediate_size=INTER,
            num_hidden_layers=layers,
            num_attention_heads=HEADS,
            num_key_value_heads=kv,
            max_position_embeddings=128,
            pad_token_id=0,
            eos_token_id=2,
            bos_token_id=1,
            num_labels=1,
            tie_word_embeddings=False,
        )

    for name, kv, cls, seed in (
        ("lm", 8, tr.Qwen2ForCausalLM, 1),
        ("rm", 4, tr.Qwen2ForSequenceClassification, 2),
    ):
        torch.manual_seed(seed)
        model = cls(cfg(kv)).eval()
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim == 1:  # non-trivial norms and biases
                    p.add_(0.1 * torch.randn_like(p))
        model.save_pretrained(root / name)


def problems(n=8):
    from nabla_jax.functional.refine import RefineProblem

    rng = np.random.RandomState(0)
    return [
        RefineProblem(
            lm_prefix_ids=rng.randint(3, VOCAB, 5 + i % 4).tolist(),
            rm_prefix_ids=rng.randint(3, VOCAB, 4).tolist(),
            rm_suffix_ids=rng.randint(3, VOCAB, 2).tolist(),
            # small logits, so that the refinement changes tokens within a few steps
            init=(rng.randn(4, VOCAB) * 0.02).astype(np.float32),
        )
        for i in range(n)
    ]


def expected_shard_shape(shape, spec, sizes):
    out = list(shape)
    for axis, name in enumerate(tuple(spec)):
        if name is not None:
            out[axis] //= sizes[name]
    return tuple(out)


def check_layout(tag, model, reference, mesh):
    from nabla_jax import sharding

    sizes = dict(mesh.shape)
    specs = sharding.param_partition_specs(model.config, model.params, mesh)
    flat_p = jax.tree_util.tree_leaves_with_path(model.params)
    flat_s = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    flat_r = jax.tree.leaves(reference.params)
    per_device: dict = {d: 0 for d in mesh.devices.flat}
    total = replicated = 0
    bad_shapes, bad_values = [], []
    for (path, leaf), spec, ref in zip(flat_p, flat_s, flat_r):
        name = jax.tree_util.keystr(path)
        want = expected_shard_shape(leaf.shape, spec, sizes)
        if leaf.sharding.spec != spec and tuple(leaf.sharding.spec) != tuple(spec):
            bad_shapes.append(f"{name}: sharding {leaf.sharding.spec} != rule {spec}")
        for shard in leaf.addressable_shards:
            if shard.data.shape != want:
                bad_shapes.append(f"{name} on {shard.device}: {shard.data.shape} != {want}")
            per_device[shard.device] += shard.data.nbytes
        if not np.array_equal(np.asarray(leaf), np.asarray(ref)):
            bad_values.append(name)
        total += leaf.nbytes
        if all(a is None for a in tuple(spec)):
            replicated += leaf.nbytes
    check(not bad_shapes, f"{tag}: every shard has its rule's shape {bad_shapes[:5]}")
    check(not bad_values, f"{tag}: sharded load equals the unsharded load {bad_values[:5]}")
    m = sizes["model"]
    budget = (total - replicated) / m + replicated
    worst = max(per_device.values())
    check(
        worst <= budget,
        f"{tag}: max bytes on a device {worst} <= total/{m} + replicated = "
        f"{total}/{m} + slack {replicated} = {budget:.0f}",
    )
    return total, replicated, worst


def main(models_dir: str | None = None) -> int:
    """Run every check; ``models_dir`` holds ``lm/`` and ``rm/`` from ``save_models``."""
    t0 = time.time()
    n = jax.device_count()
    if n != 8:
        print(f"FAIL need 8 devices, got {n}: run with XLA_FLAGS=" + FLAG)
        return 1
    import nabla_jax as nj
    from nabla_jax import sharding
    from nabla_jax.decoding import SamplingConfig, rollout
    from nabla_jax.functional.refine import refine_batch, window_grad_norms
    from tests import tolerances as tol

    cfg = nj.DTOConfig(num_steps=6, learning_rate=0.01, update_postfix=True)
    probs = problems()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(models_dir or tmp)
        if models_dir is None:
            save_models(root)
        lm0 = nj.load_causal_lm(root / "lm")
        rm0 = nj.load_reward_model(root / "rm")
        key = jax.random.key(0)
        base = refine_batch(lm0, rm0, probs, cfg, key, batch_size=8)
        base_tokens = np.stack([np.asarray(r.tokens) for r in base])
        base_logits = np.stack([np.asarray(r.logits) for r in base])
        changed = int(sum(np.asarray(r.trace.tokens_changed).sum() for r in base))
        base_norms = np.stack(window_grad_norms(lm0, rm0, probs, cfg, key, batch_size=8))
        # A mesh splits the batch and the weights' contractions: other reduction orders of the
        # same refinement, bounded by its own γ ball around the weights (tests/tolerances.py),
        # measured here on one device.
        logit_tol = max(tol.refine_bounds(lm0, rm0, cfg, probs, key, batch_size=8)["logits"])
        norm_run = lambda ms: np.stack(  # noqa: E731
            window_grad_norms(ms[0], ms[1], probs, cfg, key, batch_size=8)
        )
        extra = max(len(p.lm_prefix_ids) + len(p.rm_prefix_ids) + len(p.rm_suffix_ids)
                    + np.shape(p.init)[0] for p in probs)  # fmt: skip
        norm_tol = tol.forward_tolerance(norm_run, (lm0, rm0), extra=extra)
        greedy = SamplingConfig(temperature=0.0)
        prompts = [list(p.lm_prefix_ids) for p in probs]
        base_roll = rollout(lm0, prompts, None, max_new_tokens=6, sampling=greedy).tokens
        print(f"baseline: {changed} token changes over the refinement ({time.time() - t0:.1f}s)")
        check(
            changed > 0, "the baseline refinement changes tokens (the token check is not vacuous)"
        )
        for shape in MESHES:
            t1 = time.time()
            tag = f"mesh data={shape[0]},model={shape[1]}"
            mesh = sharding.make_mesh({"data": shape[0], "model": shape[1]})
            lm = nj.load_causal_lm(root / "lm", mesh=mesh)
            rm = nj.load_reward_model(root / "rm", mesh=mesh)
            total, rep, worst = check_layout(tag + " LM", lm, lm0, mesh)
            if shape[1] == 8:
                # The LM's only replicated leaves are its norms: a tiny slack.
                check(rep <= 0.01 * total, f"{tag} LM: replicated {rep} B <= 1% of {total} B")
                check(worst < total / 4, f"{tag} LM: a device holds {worst} of {total} B")
            check_layout(tag + " RM", rm, rm0, mesh)
            kv = rm.params["layers"]["self_attn"]["k_proj"]["kernel"].sharding.spec
            want_kv = shape[1] <= 4
            check(
                (tuple(kv) != ()) == want_kv and all(a is None for a in tuple(kv)) != want_kv,
                f"{tag} RM: k_proj spec {kv} (4 kv heads: split iff model axis <= 4)",
            )
            if shape[0] > 1:
                try:
                    refine_batch(lm, rm, probs, cfg, key, batch_size=shape[0] + 1, mesh=mesh)
                    msg = "no error"
                except ValueError as e:
                    msg = str(e)
                check(
                    "not divisible by the mesh's data axis" in msg,
                    f"{tag}: batch_size={shape[0] + 1} is refused: {msg}",
                )
            res = refine_batch(lm, rm, probs, cfg, key, batch_size=8, mesh=mesh)
            tokens = np.stack([np.asarray(r.tokens) for r in res])
            logits = np.stack([np.asarray(r.logits) for r in res])
            diff = float(np.max(np.abs(logits - base_logits)))
            check(
                np.array_equal(tokens, base_tokens),
                f"{tag}: tokens equal the single-device run "
                f"(mismatched rows {np.nonzero((tokens != base_tokens).any(-1))[0].tolist()})",
            )
            check(
                diff <= logit_tol,
                f"{tag}: max |logits - single-device| = {diff:.2e} <= {logit_tol:.2e} (derived)",
            )
            norms = np.stack(window_grad_norms(lm0, rm0, probs, cfg, key, batch_size=8, mesh=mesh))
            check(
                float(np.max(np.abs(norms - base_norms))) <= norm_tol,
                f"{tag}: window_grad_norms(mesh=) equals the single-device probe",
            )
            roll = rollout(lm0, prompts, None, max_new_tokens=6, sampling=greedy, mesh=mesh)
            check(
                np.array_equal(np.asarray(roll.tokens), np.asarray(base_roll)),
                f"{tag}: rollout(mesh=) gives the single-device tokens",
            )
            out_sharding = res[0].logits.sharding
            print(f"   {tag}: {time.time() - t1:.1f}s; result sharding {out_sharding}")
    print(f"total {time.time() - t0:.1f}s")
    if FAILURES:
        print(f"SHARDING-CHECK FAILED ({len(FAILURES)}):")
        for f in FAILURES:
            print("  " + f)
        return 1
    print("SHARDING-CHECK OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else None))
