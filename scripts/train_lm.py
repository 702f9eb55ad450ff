"""Train the bundled small causal LM for the arithmetic task (JAX + optax, CPU-friendly).

What it does
  * Renders train-split problems (``nabla_jax.tasks.generate("train", ...)``) with the bundled
    tokenizer's ChatML template: user question → assistant step-by-step solution + ``<|im_end|>``.
    The loss is next-token cross-entropy on the assistant tokens only.
  * Trains a Qwen2-architecture model (default: hidden 128, 4 layers, 4 heads / 2 KV heads, MLP
    512, tied embeddings, vocab 304, 128 positions; about 1.0 M parameters, 4 MB in fp32) with AdamW
    and a linear-warmup + cosine learning-rate schedule, in one jitted train step that takes the
    parameters as an argument.
  * Every ``--eval-every`` steps measures greedy accuracy on ``--val-problems`` validation
    problems (jitted KV-cache greedy decoder) and saves a checkpoint (HF directory) under
    ``--work-dir``.
  * Picks the checkpoint whose validation accuracy is closest to ``--target-acc`` inside
    ``[--min-acc, --max-acc]`` ("capable but fallible": headroom for test-time methods), exports
    it with the bundled tokenizer to ``--out`` and reports its greedy accuracy on
    ``--test-problems`` test-split problems. A JSON summary is written to ``--out/training.json``.

How long it takes
  About 15-25 minutes on 2 shared CPU cores with the defaults (see nabla_jax/assets/README.md for
  the measured run).

What it produced
  ``nabla_jax/assets/lm`` (the numbers are in nabla_jax/assets/README.md and training.json).

Usage
  nice python scripts/train_lm.py --steps 3000 --out nabla_jax/assets/lm
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

import nabla_jax as nj  # noqa: E402
from nabla_jax.models.export import save_pretrained  # noqa: E402
from nabla_jax.tasks import generate, grade  # noqa: E402
from nabla_jax.text.templates import lm_prompt_ids  # noqa: E402
from nabla_jax.text.tokenizer import load_bundled_tokenizer  # noqa: E402

PAD_ID = 3
EOS_ID = 2


def lm_config(args, tok) -> dict:
    """The Hugging Face Qwen2 config dict of the model to train."""
    return {
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
        "vocab_size": len(tok),
        "hidden_size": args.hidden,
        "intermediate_size": args.hidden * 4,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads,
        "num_key_value_heads": args.kv_heads,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
        "bos_token_id": None,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
    }


def prompt_ids(tok, question: str) -> list[int]:
    return lm_prompt_ids(tok, question)


def encode_examples(tok, problems, max_len: int):
    """Right-padded ``ids [N, T]``, ``attention mask [N, T]`` and ``loss mask [N, T]`` (1 where
    the token at t+1 is an assistant token: the mask is aligned with the *prediction* at t)."""
    n = len(problems)
    ids = np.full((n, max_len), PAD_ID, np.int32)
    att = np.zeros((n, max_len), np.int32)
    lmask = np.zeros((n, max_len), np.float32)
    for i, p in enumerate(problems):
        pr = prompt_ids(tok, p.question)
        resp = tok.encode(p.solution + "<|im_end|>", add_special_tokens=False)
        seq = pr + resp
        if len(seq) > max_len:
            raise ValueError(f"example of {len(seq)} tokens exceeds --max-len {max_len}")
        ids[i, : len(seq)] = seq
        att[i, : len(seq)] = 1
        lmask[i, len(pr) - 1 : len(seq) - 1] = 1.0
    return ids, att, lmask


def left_pad(prompts: list[list[int]]):
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), PAD_ID, np.int32)
    mask = np.zeros((len(prompts), width), np.int32)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = p
        mask[i, width - len(p) :] = 1
    return ids, mask


@functools.partial(jax.jit, static_argnames=("max_new",))
def sample_decode(lm, ids, mask, key, temperature, max_new: int):
    """Batched KV-cache decoding; ``temperature == 0`` is greedy. Returns tokens ``[B, max_new]``
    (pad after each row's EOS)."""
    b, p = ids.shape
    cache = lm.init_cache(b, p + max_new)
    key_mask = jnp.concatenate([mask, jnp.zeros((b, max_new), mask.dtype)], axis=1)
    pos = nj.models.default_positions(mask)
    out = lm.forward(ids, mask, position_ids=pos, cache=cache, write_index=0, key_mask=key_mask)
    logits = lm.head_logits(out.hidden[:, -1])
    next_pos = pos[:, -1] + 1

    def pick(logits, k):
        greedy = jnp.argmax(logits, -1)
        t = jnp.maximum(temperature, 1e-6)
        sampled = jax.random.categorical(k, logits / t, axis=-1)
        return jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32)

    def step(carry, i):
        cache, key_mask, logits, done, k = carry
        k, sub = jax.random.split(k)
        tok = pick(logits, sub)
        tok = jnp.where(done, PAD_ID, tok)
        key_mask = key_mask.at[:, p + i].set(1)
        o = lm.forward(
            tok[:, None],
            jnp.ones((b, 1), jnp.int32),
            position_ids=(next_pos + i)[:, None],
            cache=cache,
            write_index=p + i,
            key_mask=key_mask,
        )
        new_logits = lm.head_logits(o.hidden[:, -1])
        done = done | (tok == EOS_ID)
        return (o.cache, key_mask, new_logits, done, k), tok

    init = (out.cache, key_mask, logits, jnp.zeros((b,), bool), key)
    _, toks = jax.lax.scan(step, init, jnp.arange(max_new))
    return toks.T


def decode_texts(tok, toks) -> list[str]:
    texts = []
    for row in np.asarray(toks):
        row = list(row)
        if EOS_ID in row:
            row = row[: row.index(EOS_ID)]
        texts.append(tok.decode([t for t in row if t != PAD_ID], skip_special_tokens=False))
    return texts


def generate_texts(lm, tok, questions, *, key=None, temperature=0.0, max_new=64, batch=128):
    """Responses (text before EOS) for ``questions``; batched, keyed when sampling."""
    key = jax.random.key(0) if key is None else key
    out = []
    for s in range(0, len(questions), batch):
        chunk = questions[s : s + batch]
        prompts = [prompt_ids(tok, q) for q in chunk]
        n = len(prompts)
        prompts += [prompts[-1]] * (batch - n)  # one compiled shape per prompt width
        ids, mask = left_pad(prompts)
        toks = sample_decode(
            lm, ids, mask, jax.random.fold_in(key, s), jnp.float32(temperature), max_new
        )
        out += decode_texts(tok, toks)[:n]
    return out


def accuracy(lm, tok, problems, batch=128) -> float:
    batch = min(batch, len(problems))
    texts = generate_texts(lm, tok, [p.question for p in problems], batch=batch)
    return float(np.mean([grade(t, p.answer) for t, p in zip(texts, problems)]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-problems", type=int, default=40000)
    ap.add_argument("--val-problems", type=int, default=100)
    ap.add_argument("--test-problems", type=int, default=200)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=96)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--eval-from", type=int, default=750)
    ap.add_argument("--max-minutes", type=float, default=0, help="time budget (0: none)")
    ap.add_argument("--stop-above", type=float, default=0.8, help="stop once val acc exceeds this")
    ap.add_argument("--target-acc", type=float, default=0.55)
    ap.add_argument("--min-acc", type=float, default=0.35)
    ap.add_argument("--max-acc", type=float, default=0.75)
    ap.add_argument("--init", default=None, help="HF directory to continue training from")
    ap.add_argument("--work-dir", default="runs/train_lm")
    ap.add_argument("--out", default="nabla_jax/assets/lm")
    args = ap.parse_args(argv)

    t0 = time.time()
    tok = load_bundled_tokenizer()
    train = generate("train", args.train_problems, args.seed)
    val = generate("validation", args.val_problems, args.seed)
    test = generate("test", args.test_problems, args.seed)
    ids, att, lmask = encode_examples(tok, train, args.max_len)
    print(f"{len(train)} train examples encoded in {time.time() - t0:.1f}s", flush=True)

    key = jax.random.key(args.seed)
    key, init_key = jax.random.split(key)
    if args.init:  # continue from a saved checkpoint (its architecture wins over --hidden etc.)
        lm = nj.load_causal_lm(args.init, tokenizer=tok)
    else:
        lm = nj.init_causal_lm(lm_config(args, tok), init_key, tokenizer=tok)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(lm.params))
    print(f"model: {lm}", flush=True)

    sched = optax.warmup_cosine_decay_schedule(
        0.0, args.lr, min(args.warmup, args.steps // 2), args.steps, end_value=args.lr * 0.05
    )
    opt = optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=args.weight_decay)
    )
    params = lm.params
    opt_state = opt.init(params)
    cls, cfg = lm.__class__, lm.config

    def loss_fn(params, x, m, lm_mask):
        model = cls(cfg, params, None, "float32")
        logits = model.logits(x, m)[:, :-1]
        targets = x[:, 1:]
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        w = lm_mask[:, :-1]
        return jnp.sum(nll * w) / jnp.maximum(jnp.sum(w), 1.0)

    @jax.jit
    def train_step(params, opt_state, x, m, lm_mask):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, m, lm_mask)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(args.seed)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    history, order, cursor = [], rng.permutation(len(train)), 0
    t_train = time.time()
    losses = []

    def checkpoint(step, params) -> float:
        """Validation greedy accuracy of ``params``, saved to ``work/stepNNNNN`` and recorded."""
        model = cls(cfg, params, tok, "float32")
        acc = accuracy(model, tok, val)
        ck = work / f"step{step:05d}"
        save_pretrained(model, ck, tokenizer=tok)
        history.append(
            {
                "step": step,
                "val_acc": acc,
                "loss": float(np.mean(losses[-50:])),
                "elapsed_s": round(time.time() - t_train, 1),
                "dir": str(ck),
            }
        )
        return acc

    for step in range(1, args.steps + 1):
        if cursor + args.batch > len(order):
            order, cursor = rng.permutation(len(train)), 0
        idx = order[cursor : cursor + args.batch]
        cursor += args.batch
        # Trim the batch to its longest example (few distinct shapes: multiples of 8).
        width = int(att[idx].sum(1).max())
        width = min(args.max_len, -(-width // 8) * 8)
        params, opt_state, loss = train_step(
            params, opt_state, ids[idx, :width], att[idx, :width], lmask[idx, :width]
        )
        losses.append(float(loss))
        if step % 50 == 0:
            el = time.time() - t_train
            print(f"step {step} loss {np.mean(losses[-50:]):.4f} ({el:.0f}s)", flush=True)
        if step % args.eval_every == 0 and step >= args.eval_from or step == args.steps:
            acc = checkpoint(step, params)
            print(
                f"== step {step}: val greedy acc {acc:.3f} ({history[-1]['elapsed_s']}s)",
                flush=True,
            )
            if acc > args.stop_above:
                break
        if args.max_minutes and time.time() - t_train > 60 * args.max_minutes:
            if not history or history[-1]["step"] != step:
                acc = checkpoint(step, params)
                print(f"== step {step}: val greedy acc {acc:.3f} (time budget)", flush=True)
            break
    train_s = time.time() - t_train

    ok = [h for h in history if args.min_acc <= h["val_acc"] <= args.max_acc]
    pool = ok or history
    best = min(pool, key=lambda h: (abs(h["val_acc"] - args.target_acc), -h["step"]))
    print(f"picked step {best['step']} (val acc {best['val_acc']:.3f})", flush=True)
    chosen = nj.load_causal_lm(best["dir"], tokenizer=tok)
    test_acc = accuracy(chosen, tok, test)
    print(f"test greedy acc ({len(test)} problems): {test_acc:.3f}", flush=True)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    save_pretrained(chosen, out, tokenizer=tok)
    summary = {
        "command": "python scripts/train_lm.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "args": vars(args),
        "params": n_params,
        "picked_step": best["step"],
        "val_acc": best["val_acc"],
        "val_problems": len(val),
        "test_acc": test_acc,
        "test_problems": len(test),
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.time() - t0, 1),
        "history": history,
    }
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=1))


if __name__ == "__main__":
    main()
