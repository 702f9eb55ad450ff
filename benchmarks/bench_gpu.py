"""GPU benchmark at 7B scale: DTO step time and MFU, rollout tokens/s, ∇-Reasoner throughput.

No checkpoint is needed. The LM and the RM are randomly initialised in bfloat16 with the shapes
of Qwen2.5-7B (28 layers, hidden 3584, MLP 18944, 28/4 heads, vocab 152064, qkv bias; the RM is
the same body with a one-label score head): every parameter leaf is drawn directly in bfloat16 on
the device from ``param_shapes`` (one small jitted program per leaf; no float32 copy, no host
buffer). The tokenizer is synthetic: a word-level vocabulary of the model's size (``w<i>``
words, ChatML-like special tokens) with a chat template, so the public ``NablaDecoder`` runs
unchanged; prompts are random words.

Measured (medians of ``--repeats`` runs after a compiling run):

1. **DTO step** (``refine_batch``, paper objective, gradient caching off so every step runs LM
   and RM forward + backward): ``(t(S steps) − t(1 step)) / (S − 1)`` per step at each
   ``--dto-batch-sizes``, and MFU = step FLOPs / step time / ``--peak-tflops``. FLOPs of one
   step, counted analytically (``dto_step_flops``): LM over the window of K tokens (the prefix's
   keys/values are computed once per call, not per step) and RM over window + suffix, each a
   forward (2·params·tokens for the matmuls, 4·heads·head_dim·keys per token and layer for
   attention, the LM head 2·D·V per window token) plus a backward *with respect to the
   activations only* (the weights are constants: one matmul per linear layer, two per attention
   product), plus the backward of the one-hot embedding products (2·K·V·D per model). The run
   also compares the count with XLA's own cost analysis of a compiled LM forward and forward +
   backward w.r.t. the embeddings on K tokens (``flops_check``; on tiny CPU shapes the count is
   within 3% for the forward and 6–12% above XLA for forward + backward).
2. **Rollout** (``nabla_jax.decoding.rollout``, greedy, no EOS): tokens/s end to end and decode
   tokens/s (``(B·(N−1)) / (t(N) − t(1))``) at each ``--batch-sizes``.
3. **∇-Reasoner** (``NablaDecoder.generate``, ``DecodeConfig.batch_size`` = B, B prompts):
   prompts/s and generated tokens/s at each ``--batch-sizes``, first call (compiles) and second
   call. With random models every position is uncertain, so each prompt makes
   ``--generations`` − 1 refinements with a proposal each (a fixed, comparable workload).

``--tiny`` runs the same code with tiny shapes in float32 on any backend (the CPU test).

Example::

    python benchmarks/bench_gpu.py --output results/bench_gpu.json          # H200: bf16 7B
    python benchmarks/bench_gpu.py --tiny --output /tmp/bench_gpu_tiny.json # CPU smoke run
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

QWEN25_7B = dict(
    model_type="qwen2",
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_layers=28,
    num_heads=28,
    num_kv_heads=4,
    head_dim=128,
    max_position_embeddings=32768,
    norm_eps=1e-6,
    rope_theta=1e6,
    attention_bias=True,
)
TINY = dict(QWEN25_7B, vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
            num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=1024)  # fmt: skip
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "system", "user", "assistant")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> "
    "{% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny float32 shapes (CPU smoke run)")
    p.add_argument("--dtype", default=None, help="default bfloat16 (float32 with --tiny)")
    p.add_argument("--batch-sizes", default=None, help="rollout / decode (default 1,8,32)")
    p.add_argument("--dto-batch-sizes", default=None, help="default 1,8")
    p.add_argument("--prompt-len", type=int, default=None, help="default 128 (tiny 16)")
    p.add_argument("--new-tokens", type=int, default=None, help="rollout, default 256 (tiny 16)")
    p.add_argument("--max-length", type=int, default=None, help="decode, default 256 (tiny 16)")
    p.add_argument("--generations", type=int, default=3, help="decode max_n_generations")
    p.add_argument("--window", type=int, default=32, help="DTO window K")
    p.add_argument("--suffix-len", type=int, default=8, help="RM suffix tokens in the DTO bench")
    p.add_argument("--dto-steps", type=int, default=None, help="default 20 (tiny 4)")
    p.add_argument("--repeats", type=int, default=None, help="default 3 (tiny 1)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="H200 dense bf16 ≈ 989")
    p.add_argument("--skip-decode", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="results/bench_gpu.json")
    args = p.parse_args(argv)
    small = args.tiny
    defaults = dict(
        dtype="float32" if small else "bfloat16",
        batch_sizes="1,2" if small else "1,8,32",
        dto_batch_sizes="1,2" if small else "1,8",
        prompt_len=16 if small else 128,
        new_tokens=16 if small else 256,
        max_length=16 if small else 256,
        dto_steps=4 if small else 20,
        repeats=1 if small else 3,
    )
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.batch_sizes = [int(b) for b in str(args.batch_sizes).split(",")]
    args.dto_batch_sizes = [int(b) for b in str(args.dto_batch_sizes).split(",")]
    return args


# -------------------------------------------------------------------------------- models


def synthetic_tokenizer(vocab_size: int):
    """A word-level Hugging Face tokenizer of ``vocab_size`` ids with a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS)}
    vocab.update({f"w{i}": i for i in range(len(SPECIALS), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(list(SPECIALS[:3]))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


@functools.partial(jax.jit, static_argnames=("shape", "dtype", "kind"))
def _leaf(key, shape, dtype, kind):
    if kind == "ones":
        return jnp.ones(shape, dtype)
    if kind == "zeros":
        return jnp.zeros(shape, dtype)
    return (jax.random.normal(key, shape, dtype) * 0.02).astype(dtype)


def random_params(cfg, head: str, dtype: str, key):
    """Every leaf of ``param_shapes`` drawn on the device in ``dtype`` (norm scales 1, biases 0,
    kernels and embeddings normal(0, 0.02))."""
    import jax

    from nabla_jax.models.model import param_shapes

    shapes = param_shapes(cfg, dtype, head)
    flat, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    leaves = []
    for i, (path, s) in enumerate(flat):
        name = jax.tree_util.keystr(path)
        kind = "ones" if name.endswith("['scale']") else "zeros" if "bias" in name else "normal"
        leaves.append(_leaf(jax.random.fold_in(key, i), tuple(s.shape), s.dtype, kind))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def build_models(args):
    import jax

    import nabla_jax as nj

    tok = synthetic_tokenizer((TINY if args.tiny else QWEN25_7B)["vocab_size"])
    shape = dict(TINY if args.tiny else QWEN25_7B)
    shape.update(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, num_labels=1)
    cfg = nj.ModelConfig(**shape)
    key = jax.random.key(args.seed)
    lm = nj.CausalLM(cfg, random_params(cfg, "lm", args.dtype, key), tok, args.dtype)
    rm_key = jax.random.fold_in(key, 1)
    rm = nj.RewardModel(cfg, random_params(cfg, "score", args.dtype, rm_key), None, args.dtype)
    jax.block_until_ready((lm.params, rm.params))
    return lm, rm, tok


def count_params(tree) -> int:
    import jax

    return sum(int(x.size) for x in jax.tree.leaves(tree))


# -------------------------------------------------------------------------------- FLOPs


def forward_flops(cfg, tokens: int, keys: int, lm_head: bool) -> dict:
    """Forward FLOPs of ``tokens`` tokens attending to ``keys`` keys each (upper bound)."""
    d, f, h, kv, dh = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads,
                       cfg.num_kv_heads, cfg.head_dim)  # fmt: skip
    linear = 2 * tokens * cfg.num_layers * (d * h * dh + 2 * d * kv * dh + h * dh * d + 3 * d * f)
    attn = 2 * 2 * tokens * keys * h * dh * cfg.num_layers
    head = 2 * tokens * d * cfg.vocab_size if lm_head else 0
    return dict(linear=linear + head, attention=attn)


def dto_step_flops(cfg, batch: int, prefix: int, window: int, rm_prefix: int, suffix: int):
    """FLOPs of one full DTO step (see the module docstring)."""
    lm = forward_flops(cfg, window, prefix + window, lm_head=True)
    rm_tokens = window + suffix
    rm = forward_flops(cfg, rm_tokens, rm_prefix + rm_tokens, lm_head=False)
    fwd = lm["linear"] + lm["attention"] + rm["linear"] + rm["attention"]
    bwd = lm["linear"] + 2 * lm["attention"] + rm["linear"] + 2 * rm["attention"]
    embed_bwd = 2 * (2 * window * cfg.vocab_size * cfg.hidden_size)
    return batch * (fwd + bwd + embed_bwd)


def xla_flops_check(lm, tokens: int) -> dict:
    """The analytic count against XLA's cost analysis of the compiled LM forward, and forward +
    backward w.r.t. ``inputs_embeds``, on ``tokens`` tokens attending to themselves."""
    e = jnp.zeros((1, tokens, lm.config.hidden_size), jnp.float32)
    c = jnp.ones((1, tokens, lm.config.vocab_size), jnp.float32)

    def xla(fn, *a):
        cost = jax.jit(fn).lower(*a).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        return float(cost.get("flops", float("nan"))) if cost else float("nan")

    fwd = xla(lambda e: lm.logits(inputs_embeds=e), e)
    both = xla(jax.grad(lambda e, c: jnp.sum(lm.logits(inputs_embeds=e) * c)), e, c)
    a = forward_flops(lm.config, tokens, tokens, lm_head=True)
    ours_fwd = a["linear"] + a["attention"]
    ours_both = 2 * a["linear"] + 3 * a["attention"]
    return dict(tokens=tokens, xla_forward=fwd, analytic_forward=ours_fwd,
                xla_forward_backward=both, analytic_forward_backward=ours_both,
                forward_ratio=ours_fwd / fwd, forward_backward_ratio=ours_both / both)  # fmt: skip


# -------------------------------------------------------------------------------- benches


def _timed(fn, repeats: int) -> tuple[float, list[float]]:
    import jax

    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return first, times


def _words(rng, n: int, vocab: int) -> str:
    return " ".join(f"w{int(i)}" for i in rng.integers(len(SPECIALS), vocab, size=n))


def bench_dto(lm, rm, args) -> list[dict]:
    import jax
    import numpy as np

    import nabla_jax as nj

    rng = np.random.default_rng(args.seed)
    v, k = lm.config.vocab_size, args.window
    p_len, q_len, s_len = args.prompt_len, args.prompt_len, args.suffix_len
    rows = []
    for b in args.dto_batch_sizes:
        problems = [
            nj.RefineProblem(
                lm_prefix_ids=rng.integers(len(SPECIALS), v, size=p_len).tolist(),
                rm_prefix_ids=rng.integers(len(SPECIALS), v, size=q_len).tolist(),
                rm_suffix_ids=rng.integers(len(SPECIALS), v, size=s_len).tolist(),
                init=rng.standard_normal((k, v)).astype(np.float32),
            )
            for _ in range(b)
        ]
        timing = {}
        for steps in (1, args.dto_steps):
            cfg = nj.DTOConfig(num_steps=steps, grad_caching=False)

            def run(cfg=cfg, problems=problems, b=b):
                res = nj.refine_batch(lm, rm, problems, cfg, jax.random.key(0), batch_size=b)
                return [r.logits for r in res], res

            first, times = _timed(lambda run=run: run()[0], args.repeats)
            calls = run()[1][0].model_calls
            timing[steps] = dict(first_s=first, median_s=statistics.median(times), calls=calls)
        t1, tn = timing[1]["median_s"], timing[args.dto_steps]["median_s"]
        step_s = (tn - t1) / max(1, args.dto_steps - 1)
        flops = dto_step_flops(lm.config, b, p_len, k, q_len, s_len)
        rows.append(
            dict(
                batch=b,
                window=k,
                steps=args.dto_steps,
                step_s=step_s,
                steps_per_s=1 / step_s if step_s > 0 else None,
                call_s=tn,
                one_step_call_s=t1,
                compile_and_first_s=timing[args.dto_steps]["first_s"],
                model_calls_per_row=timing[args.dto_steps]["calls"],
                step_tflop=flops / 1e12,
                achieved_tflops=flops / step_s / 1e12 if step_s > 0 else None,
                mfu=flops / step_s / (args.peak_tflops * 1e12) if step_s > 0 else None,
            )
        )
        print(f"DTO batch {b}: {step_s * 1e3:.2f} ms/step, MFU {rows[-1]['mfu'] or 0:.2%}",
              flush=True)  # fmt: skip
    return rows


def bench_rollout(lm, args) -> list[dict]:
    import jax
    import numpy as np

    import nabla_jax as nj
    from nabla_jax.decoding import rollout

    rng = np.random.default_rng(args.seed + 1)
    greedy = nj.SamplingConfig(temperature=0.0)
    n = args.new_tokens
    rows = []
    for b in args.batch_sizes:
        prompts = rng.integers(len(SPECIALS), lm.config.vocab_size, size=(b, args.prompt_len))
        keys = jax.random.split(jax.random.key(0), b)

        def run(budget, prompts=prompts, keys=keys):
            return rollout(lm, prompts.tolist(), keys, max_new_tokens=budget, sampling=greedy,
                           eos_ids=(), return_logits=False).tokens  # fmt: skip

        first, t_all = _timed(lambda run=run: run(n), args.repeats)
        _, t_one = _timed(lambda run=run: run(1), args.repeats)
        t_all, t_one = statistics.median(t_all), statistics.median(t_one)
        rows.append(
            dict(
                batch=b,
                prompt_len=args.prompt_len,
                new_tokens=n,
                total_s=t_all,
                compile_and_first_s=first,
                tokens_per_s=b * n / t_all,
                decode_tokens_per_s=b * (n - 1) / max(t_all - t_one, 1e-9),
                prefill_s=t_one,
            )
        )
        print(f"rollout batch {b}: {rows[-1]['tokens_per_s']:.0f} tok/s", flush=True)
    return rows


def bench_decode(lm, rm, args) -> list[dict]:
    import jax
    import numpy as np

    import nabla_jax as nj

    rng = np.random.default_rng(args.seed + 2)
    rows = []
    for b in args.batch_sizes:
        cfg = nj.DecodeConfig(
            max_length=args.max_length,
            max_n_generations=args.generations,
            grad_threshold=None,
            dto=nj.DTOConfig(num_steps=args.dto_steps),
            dto_window=args.window,
            batch_size=b,
        )
        decoder = nj.NablaDecoder(lm, rm, cfg)
        prompts = [_words(rng, args.prompt_len - 8, lm.config.vocab_size) for _ in range(b)]
        key = jax.random.key(args.seed)
        t0 = time.perf_counter()
        decoder.generate(prompts, key)
        first = time.perf_counter() - t0
        times, results = [], None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            results = decoder.generate(prompts, key)
            times.append(time.perf_counter() - t0)
        t = statistics.median(times)
        tokens = sum(len(r.token_ids) for r in results)
        rows.append(
            dict(
                batch=b,
                prompts=len(prompts),
                first_call_s=first,
                seconds=t,
                prompts_per_s=len(prompts) / t,
                response_tokens_per_s=tokens / t,
                mean_generations=statistics.mean(r.stats["generations"] for r in results),
                mean_refinements=statistics.mean(r.stats["refinements"] for r in results),
                mean_model_calls=statistics.mean(r.stats["model_calls"] for r in results),
            )
        )
        print(f"∇ decode batch {b}: {rows[-1]['prompts_per_s']:.3f} prompts/s", flush=True)
    return rows


def main(argv=None) -> dict:
    args = _parse(argv)
    import jax

    dev = jax.devices()[0]
    env = dict(
        platform=platform.platform(),
        backend=jax.default_backend(),
        device=getattr(dev, "device_kind", str(dev)),
        devices=jax.device_count(),
        jax=jax.__version__,
    )
    print(f"env: {env}", flush=True)
    if jax.default_backend() == "cpu" and not args.tiny:
        print("warning: no accelerator; the 7B shapes on the CPU will take very long", flush=True)
    t0 = time.perf_counter()
    lm, rm, _ = build_models(args)
    build_s = time.perf_counter() - t0
    c = lm.config
    models = dict(
        shape="tiny" if args.tiny else "Qwen2.5-7B",
        dtype=args.dtype,
        lm_params=count_params(lm.params),
        rm_params=count_params(rm.params),
        layers=c.num_layers,
        hidden=c.hidden_size,
        vocab=c.vocab_size,
        build_s=build_s,
    )
    print(f"models: {models}", flush=True)
    check = xla_flops_check(lm, args.window)
    print(f"FLOP count / XLA cost analysis: forward {check['forward_ratio']:.3f}, forward + "
          f"backward {check['forward_backward_ratio']:.3f}", flush=True)  # fmt: skip
    dto = bench_dto(lm, rm, args)
    roll = bench_rollout(lm, args)
    dec = None if args.skip_decode else bench_decode(lm, rm, args)

    print(f"\nDTO ({args.dto_steps} full steps, window {args.window}, prefix {args.prompt_len}, "
          f"peak {args.peak_tflops} TFLOP/s)")  # fmt: skip
    print(f"{'batch':>6}{'ms/step':>10}{'TFLOP/step':>12}{'TFLOP/s':>10}{'MFU':>8}")
    for r in dto:
        print(f"{r['batch']:>6}{r['step_s'] * 1e3:>10.2f}{r['step_tflop']:>12.3f}"
              f"{r['achieved_tflops'] or 0:>10.2f}{r['mfu'] or 0:>8.2%}")  # fmt: skip
    print(f"\nRollout (greedy, prompt {args.prompt_len}, {args.new_tokens} new tokens)")
    print(f"{'batch':>6}{'tok/s':>10}{'decode tok/s':>14}")
    for r in roll:
        print(f"{r['batch']:>6}{r['tokens_per_s']:>10.0f}{r['decode_tokens_per_s']:>14.0f}")
    if dec:
        print(f"\n∇-Reasoner (max_length {args.max_length}, {args.generations} generations)")
        print(f"{'batch':>6}{'prompts/s':>11}{'resp tok/s':>12}{'first s':>9}{'calls':>8}")
        for r in dec:
            print(f"{r['batch']:>6}{r['prompts_per_s']:>11.3f}{r['response_tokens_per_s']:>12.1f}"
                  f"{r['first_call_s']:>9.1f}{r['mean_model_calls']:>8.0f}")  # fmt: skip
    result = dict(args=vars(args), env=env, models=models, flops_check=check, dto=dto,
                  rollout=roll, decode=dec)  # fmt: skip
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2, default=str)
        print(f"\nwrote {args.output}")
    return result


if __name__ == "__main__":
    main()
