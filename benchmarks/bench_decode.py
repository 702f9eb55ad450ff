"""Decoding speed: the batched ∇-Reasoner decoder, and ``rollout`` vs PyTorch ``generate``.

Models: the bundled pair (``nabla_jax/assets/lm``, ``nabla_jax/assets/rm``) when present, else a
random Qwen2 LM / reward model of the bundled LM's shape (hidden 128, 4 layers, tied embeddings;
the RM has 2 layers) with the bundled tokenizer, saved with ``save_pretrained`` so that JAX and
PyTorch load the same weights from the same directory. Everything runs on this machine's CPU.

1. ``NablaDecoder.generate`` on a batch of ``--batch`` arithmetic prompts (one call) vs the same
   prompts one call each: prompts/s of identical re-runs (median; every program compiled);
   the first run's extra time (compile / warm-up; compilation caches are cleared before each
   mode) is reported separately. The responses of the two modes are compared (a prompt decodes
   the same alone or in company).
2. Greedy generation at batch 1 and ``--batch``: prefill tokens/s (prompt tokens / time of a
   1-token generation) and decode tokens/s (further tokens / extra time of a ``--new-tokens``
   generation) for ``nabla_jax.decoding.generate_padded`` and Hugging Face ``generate`` (EOS
   suppressed, ``min_new_tokens``), medians of ``--repeats`` runs after a warm-up; greedy token
   agreement between the two is reported. torch runs with ``--torch-threads`` (default 1).

Example::

    python benchmarks/bench_decode.py --output results/bench_decode.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lm", default=None, help="LM directory (default: bundled, else random)")
    p.add_argument("--rm", default=None, help="RM directory (default: bundled, else random)")
    p.add_argument("--random", action="store_true", help="use random models even if bundled")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-length", type=int, default=64, help="decoder max_length")
    p.add_argument("--max-generations", type=int, default=4, help="decoder max_n_generations")
    p.add_argument("--dto-steps", type=int, default=20)
    p.add_argument(
        "--grad-threshold",
        type=float,
        default=None,
        help="default: off, as in the bundled config (configs/arithmetic.yaml); the paper's 4.0 "
        "selects no position with these small models, so nothing would be refined",
    )
    p.add_argument("--prompt-len", type=int, default=32, help="section 2 prompt tokens")
    p.add_argument("--new-tokens", type=int, default=64, help="section 2 generated tokens")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per section-2 case")
    p.add_argument("--decoder-repeats", type=int, default=3, help="timed runs per decoder mode")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads (0: torch's default). On a small shared CPU, multithreaded "
        "torch spins and runs tiny models >10x slower, so 1 is the default",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="results/bench_decode.json")
    return p.parse_args(argv)


def _random_models(tmp: str, seed: int):
    import transformers as tr

    from nabla_jax.tasks.tokenizer import load_bundled_tokenizer

    tok = load_bundled_tokenizer()
    common = dict(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=512,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    tr.set_seed(seed)
    lm_dir, rm_dir = os.path.join(tmp, "lm"), os.path.join(tmp, "rm")
    lm_cfg = tr.Qwen2Config(num_hidden_layers=4, **common)
    tr.Qwen2ForCausalLM(lm_cfg).save_pretrained(lm_dir)
    rm_cfg = tr.Qwen2Config(num_hidden_layers=2, num_labels=1, **common)
    tr.Qwen2ForSequenceClassification(rm_cfg).save_pretrained(rm_dir)
    tok.save_pretrained(lm_dir)
    tok.save_pretrained(rm_dir)
    return lm_dir, rm_dir


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# -------------------------------------------------------------------------------- section 1


def bench_decoder(lm, rm, args) -> dict:
    import jax

    import nabla_jax as nj
    from nabla_jax.decoding import DecodeConfig, NablaDecoder, SamplingConfig
    from nabla_jax.tasks import format_prompt, generate

    cfg = DecodeConfig(
        max_length=args.max_length,
        max_n_generations=args.max_generations,
        rollout=SamplingConfig(temperature=0.6, top_p=0.95),
        resample=SamplingConfig(temperature=0.5, top_p=0.95),
        grad_threshold=args.grad_threshold,
        dto=nj.DTOConfig(num_steps=args.dto_steps, learning_rate=0.01),
        dto_window=32,
        batch_size=args.batch,
    )
    prompts = [format_prompt(p) for p in generate("test", args.batch, seed=args.seed)]
    decoder = NablaDecoder(lm, rm, cfg)
    key = jax.random.key(args.seed)

    def batched():
        return decoder.generate(prompts, key)

    def one_by_one():
        return [decoder.generate([p], key)[0] for p in prompts]

    out = {"config": {k: str(v) for k, v in vars(cfg).items()}, "prompts": len(prompts)}
    for name, fn in (("batched", batched), ("one_at_a_time", one_by_one)):
        jax.clear_caches()  # each mode's first run pays its own compiles
        t0 = time.perf_counter()
        first = fn()
        t_first = time.perf_counter() - t0
        times = []
        for _ in range(args.decoder_repeats):
            t0 = time.perf_counter()
            second = fn()
            times.append(time.perf_counter() - t0)
            assert [r.token_ids for r in first] == [r.token_ids for r in second], "nondeterministic"
        t_second = statistics.median(times)
        out[name] = {
            "first_run_s": t_first,
            "steady_s": t_second,
            "steady_runs_s": times,
            "warmup_overhead_s": t_first - t_second,
            "prompts_per_s": len(prompts) / t_second,
            "results": second,
        }
    b, s = out["batched"].pop("results"), out["one_at_a_time"].pop("results")
    out["speedup"] = out["batched"]["prompts_per_s"] / out["one_at_a_time"]["prompts_per_s"]
    out["same_responses_batched_vs_alone"] = sum(
        x.token_ids == y.token_ids for x, y in zip(b, s, strict=True)
    )
    keys = ("generations", "model_calls", "generated_tokens", "refinements", "rejections")
    out["mean_stats"] = {k: statistics.mean(r.stats[k] for r in b) for k in keys}
    out["same_stats_batched_vs_alone"] = sum(x.stats == y.stats for x, y in zip(b, s, strict=True))
    return out


# -------------------------------------------------------------------------------- section 2


def bench_generate(lm, lm_dir: str, args) -> list[dict]:
    import jax.numpy as jnp
    import numpy as np
    import torch
    import transformers as tr

    from nabla_jax.decoding import SamplingConfig, generate_padded

    greedy = SamplingConfig(temperature=0.0)
    hf = tr.AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32).eval()
    rng = np.random.default_rng(args.seed)
    p_len, n_new = args.prompt_len, args.new_tokens
    specials = {lm.config.pad_token_id, *lm.config.eos_token_ids}
    vocab = [t for t in range(lm.config.vocab_size) if t not in specials]
    rows = []
    for batch in sorted({1, args.batch}):
        ids = rng.choice(vocab, size=(batch, p_len)).astype(np.int32)
        mask = np.ones_like(ids)

        def jax_run(budget, ids=ids, mask=mask, batch=batch):
            out = generate_padded(
                lm,
                jnp.asarray(ids),
                jnp.asarray(mask),
                None,
                max_new_tokens=np.full((batch,), budget, np.int32),
                sampling=greedy,
                eos_ids=(),
                buffer_len=n_new,
                return_logits=False,
            )
            return np.asarray(out.tokens)

        t_ids, t_mask = torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(mask)

        def hf_run(budget, t_ids=t_ids, t_mask=t_mask):
            with torch.inference_mode():
                out = hf.generate(
                    input_ids=t_ids,
                    attention_mask=t_mask,
                    max_new_tokens=budget,
                    min_new_tokens=budget,
                    do_sample=False,
                    pad_token_id=lm.config.pad_token_id,
                )
            return out[:, p_len:].numpy()

        t0 = time.perf_counter()
        jax_tokens = jax_run(n_new)  # compiles (budget is a run-time array: one program)
        compile_s = time.perf_counter() - t0
        hf_tokens = hf_run(n_new)
        agree = float(np.mean(jax_tokens[:, :n_new] == hf_tokens[:, :n_new]))
        first_diff = [
            int(np.argmax(a != b)) if (a != b).any() else n_new
            for a, b in zip(jax_tokens, hf_tokens, strict=True)
        ]
        for name, fn in (("nabla_jax rollout", jax_run), ("HF torch generate", hf_run)):
            t_pre = _median_time(lambda fn=fn: fn(1), args.repeats)
            t_all = _median_time(lambda fn=fn: fn(n_new), args.repeats)
            rows.append(
                {
                    "impl": name,
                    "batch": batch,
                    "prompt_len": p_len,
                    "new_tokens": n_new,
                    "prefill_s": t_pre,
                    "total_s": t_all,
                    "prefill_tok_per_s": batch * p_len / t_pre,
                    "decode_tok_per_s": batch * (n_new - 1) / max(t_all - t_pre, 1e-9),
                    "end_to_end_tok_per_s": batch * n_new / t_all,
                    "compile_s": compile_s if name.startswith("nabla") else None,
                    "greedy_token_agreement": agree,
                    "first_divergence": first_diff,
                }
            )
    return rows


# -------------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    args = _parse(argv)
    import jax
    import torch

    import nabla_jax as nj

    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    assets = os.path.join(ROOT, "nabla_jax", "assets")
    tmp = tempfile.TemporaryDirectory()
    lm_dir, rm_dir = args.lm, args.rm
    source = "given"
    if lm_dir is None or rm_dir is None:
        b_lm, b_rm = os.path.join(assets, "lm"), os.path.join(assets, "rm")
        bundled = all(os.path.isfile(os.path.join(d, "model.safetensors")) for d in (b_lm, b_rm))
        if bundled and not args.random:
            lm_dir, rm_dir, source = b_lm, b_rm, "bundled"
        else:
            lm_dir, rm_dir = _random_models(tmp.name, args.seed)
            source = "random (bundled shape, bundled tokenizer)"
    lm = nj.load_causal_lm(lm_dir, dtype="float32")
    rm = nj.load_reward_model(rm_dir, dtype="float32")
    c = lm.config
    env = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
    }
    models = {
        "source": source,
        "lm": f"{c.family} hidden {c.hidden_size}, {c.num_layers} layers, vocab {c.vocab_size}",
        "rm": f"{rm.config.family} hidden {rm.config.hidden_size}, {rm.config.num_layers} layers",
    }
    print(f"models: {models}\nenv: {env}", flush=True)

    dec = bench_decoder(lm, rm, args)
    gen = bench_generate(lm, lm_dir, args)

    print(f"\n1. NablaDecoder, {dec['prompts']} prompts (max_length {args.max_length}, "
          f"max_n_generations {args.max_generations}, {args.dto_steps} DTO steps, "
          f"grad_threshold {args.grad_threshold})")  # fmt: skip
    print(f"{'mode':<16}{'prompts/s':>11}{'steady s':>11}{'first run s':>13}{'warm-up s':>11}")
    for mode in ("batched", "one_at_a_time"):
        r = dec[mode]
        print(
            f"{mode:<16}{r['prompts_per_s']:>11.3f}{r['steady_s']:>11.2f}"
            f"{r['first_run_s']:>13.2f}{r['warmup_overhead_s']:>11.2f}"
        )
    print(
        f"speedup batched / one-at-a-time: {dec['speedup']:.2f}x; identical responses: "
        f"{dec['same_responses_batched_vs_alone']}/{dec['prompts']}, identical stats: "
        f"{dec['same_stats_batched_vs_alone']}/{dec['prompts']}; mean stats {dec['mean_stats']}"
    )
    print(f"\n2. Greedy generation, prompt {args.prompt_len} tokens, {args.new_tokens} new tokens")
    print(
        f"{'impl':<20}{'batch':>6}{'prefill tok/s':>15}{'decode tok/s':>14}"
        f"{'e2e tok/s':>11}{'agree':>7}"
    )
    for r in gen:
        print(
            f"{r['impl']:<20}{r['batch']:>6}{r['prefill_tok_per_s']:>15.0f}"
            f"{r['decode_tok_per_s']:>14.0f}{r['end_to_end_tok_per_s']:>11.0f}"
            f"{r['greedy_token_agreement']:>7.2f}"
        )
    result = {"args": vars(args), "env": env, "models": models, "decoder": dec, "generate": gen}
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2, default=str)
        print(f"\nwrote {args.output}")
    tmp.cleanup()
    return result


if __name__ == "__main__":
    main()
