"""Train the bundled reward model for the arithmetic task from the bundled LM's own samples.

What it does
  * Samples ``--k`` responses per problem from the trained LM (``--lm``, default
    ``nabla_jax/assets/lm``) at ``--temperature`` (batched KV-cache decoding, keyed by
    ``--seed``) for ``--train-problems`` train-split and ``--val-problems`` validation-split
    problems, and labels each with the task grader (``nabla_jax.tasks.grade``): 1 = correct
    final answer.
  * ``--synth-problems N``: also renders N more train-split problems as synthetic responses — the
    exact solution (1) and ``--synth-neg`` corrupted ones each (one step wrong, chain continued
    consistently; or only the answer wrong), graded (0 unless the corruption cancels out). Each
    batch takes ``--lm-frac`` of its rows from the LM samples, the rest synthetic.
    ``--eval-every`` steps the validation AUROC is measured and the best checkpoint is exported.
    ``--init-rm DIR`` continues from an exported reward model.
  * Trains a Qwen2 sequence-classification model whose body is initialised from the LM's
    embeddings, final norm and first ``--layers`` blocks (the LM already "reads" arithmetic), with a
    fresh score head. Input = the RM chat template around the response
    (``nabla_jax.templates.rm_prefix_suffix_ids``: prompt, then the response as the assistant
    turn); loss = class-balanced binary cross-entropy on the score at the last real token.
  * Reports AUROC on the held-out validation-problem samples, exports the model with the bundled
    tokenizer to ``--out`` and writes ``--out/training.json``.

How long it takes
  About 10-15 minutes on 2 shared CPU cores with the defaults (sampling about half of it).

What it produced
  ``nabla_jax/assets/rm`` (numbers in nabla_jax/assets/README.md and training.json).

Usage
  nice python scripts/train_rm.py --lm nabla_jax/assets/lm --out nabla_jax/assets/rm
"""

from __future__ import annotations

import argparse
import json
import re
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_lm import PAD_ID, generate_texts  # noqa: E402

import nabla_jax as nj  # noqa: E402
from nabla_jax.models.export import save_pretrained  # noqa: E402
from nabla_jax.tasks import generate, grade  # noqa: E402
from nabla_jax.tasks.tokenizer import load_bundled_tokenizer  # noqa: E402
from nabla_jax.templates import rm_prefix_suffix_ids  # noqa: E402


def auroc(scores, labels) -> float:
    """Area under the ROC curve (ties count one half)."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    pos, neg = scores[labels], scores[~labels]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def sample_set(lm, tok, problems, k, temperature, key, batch):
    """``[(question, response, label)]``: ``k`` samples per problem."""
    questions = [p.question for p in problems for _ in range(k)]
    texts = generate_texts(lm, tok, questions, key=key, temperature=temperature, batch=batch)
    answers = [p.answer for p in problems for _ in range(k)]
    return [(q, t, int(grade(t, a))) for q, t, a in zip(questions, texts, answers, strict=True)]


_STEP_RE = re.compile(r"^(-?\d+)([+*-])(\d+)=(-?\d+)$")


def _apply(op, a, b):
    return a + b if op == "+" else a - b if op == "-" else a * b


def _perturb(value, rng):
    """A plausible wrong value near ``value`` (small offset, digit slip, tens slip, digit swap)."""
    for _ in range(20):
        kind = rng.random()
        if kind < 0.45:
            small = int(rng.choice([1, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9]))
            wrong = value + int(rng.choice([-1, 1])) * small
        elif kind < 0.7:
            wrong = value + int(rng.choice([-1, 1])) * int(rng.choice([10, 10, 20, 100]))
        elif kind < 0.85 and abs(value) >= 10:
            d = list(str(abs(value)))
            i = int(rng.integers(len(d) - 1))
            d[i], d[i + 1] = d[i + 1], d[i]
            wrong = int("".join(d)) * (1 if value >= 0 else -1)
        else:
            d = list(str(abs(value)))
            i = int(rng.integers(len(d)))
            d[i] = str(int(rng.integers(10)))
            wrong = int("".join(d).lstrip("0") or "0") * (1 if value >= 0 else -1)
        if wrong != value:
            return wrong
    return value + 1


def corrupt_solution(solution, rng):
    """A wrong chain-of-thought: one step's result (or operand, or the copied start value, or the
    final answer) is wrong and the rest of the chain continues consistently from it."""
    lines = solution.split("\n")
    steps = [_STEP_RE.match(line).groups() for line in lines[:-1]]
    steps = [(int(a), op, int(b), int(c)) for a, op, b, c in steps]
    kind = rng.random()
    if kind < 0.1:  # only the answer line is wrong
        return "\n".join(lines[:-1] + [f"Answer: {_perturb(steps[-1][3], rng)}"])
    i = int(rng.integers(len(steps)))
    out, value = [], None
    for j, (a, op, b, c) in enumerate(steps):
        a = a if value is None else value
        if j == i:
            if kind < 0.8:  # wrong result of a correctly copied step
                c = _perturb(_apply(op, a, b), rng)
            elif kind < 0.9:  # misread operand, computed consistently
                b = abs(_perturb(b, rng))
                c = _apply(op, a, b)
            else:  # mis-copied previous result (or start), computed consistently
                a = _perturb(a, rng)
                c = _apply(op, a, b)
        else:
            c = _apply(op, a, b)
        out.append(f"{a}{op}{b}={c}")
        value = c
    return "\n".join(out + [f"Answer: {value}"])


def synthetic_set(problems, neg_per_problem, rng):
    """``[(question, response, label)]``: the exact solution (1) and corrupted ones (0)."""
    out = []
    for p in problems:
        out.append((p.question, p.solution, 1))
        for _ in range(neg_per_problem):
            bad = corrupt_solution(p.solution, rng)
            out.append((p.question, bad, int(grade(bad, p.answer))))
    return out


def encode_rm(tok, samples, max_len):
    """Right-padded RM inputs ``ids [N, T]``, ``mask [N, T]`` and labels ``[N]``."""
    ids = np.full((len(samples), max_len), PAD_ID, np.int32)
    mask = np.zeros((len(samples), max_len), np.int32)
    cache = {}
    for i, (q, text, _) in enumerate(samples):
        if q not in cache:
            cache[q] = rm_prefix_suffix_ids(tok, q)
        prefix, suffix = cache[q]
        seq = prefix + tok.encode(text, add_special_tokens=False) + suffix
        seq = seq[: max_len - len(suffix)] + suffix if len(seq) > max_len else seq
        ids[i, : len(seq)] = seq
        mask[i, : len(seq)] = 1
    labels = np.array([s[2] for s in samples], np.float32)
    return ids, mask, labels


def rm_config(lm_cfg: dict, layers: int) -> dict:
    cfg = dict(lm_cfg)
    cfg.update(
        architectures=["Qwen2ForSequenceClassification"],
        num_hidden_layers=layers,
        num_labels=1,
        pad_token_id=PAD_ID,
    )
    return cfg


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lm", default="nabla_jax/assets/lm")
    ap.add_argument("--out", default="nabla_jax/assets/rm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-problems", type=int, default=768)
    ap.add_argument("--val-problems", type=int, default=100)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--sample-batch", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2, help="LM blocks kept in the RM body")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=112)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=40)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--max-minutes", type=float, default=0, help="training time budget (0: none)")
    ap.add_argument(
        "--synth-problems",
        type=int,
        default=0,
        help="extra train-split problems rendered as synthetic responses (0: none)",
    )
    ap.add_argument("--synth-neg", type=int, default=1, help="corrupted solutions per problem")
    ap.add_argument(
        "--lm-frac",
        type=float,
        default=0.5,
        help="share of each batch drawn from the LM samples (rest synthetic)",
    )
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--init-rm", default=None, help="continue from this reward-model directory")
    args = ap.parse_args(argv)

    t0 = time.time()
    tok = load_bundled_tokenizer()
    lm = nj.load_causal_lm(args.lm, tokenizer=tok)
    key = jax.random.key(args.seed)
    k_train, k_val, k_init = jax.random.split(key, 3)
    # Problems disjoint from the LM's validation/test evaluation sets (different seed).
    train_p = generate("train", args.train_problems, args.seed + 1000)
    val_p = generate("validation", args.val_problems, args.seed + 1000)
    train_s = sample_set(lm, tok, train_p, args.k, args.temperature, k_train, args.sample_batch)
    val_s = sample_set(lm, tok, val_p, args.k, args.temperature, k_val, args.sample_batch)
    sample_s = time.time() - t0
    pos_rate = float(np.mean([s[2] for s in train_s]))
    print(
        f"sampled {len(train_s)} train / {len(val_s)} val responses in {sample_s:.0f}s; "
        f"train correct rate {pos_rate:.3f}, val {np.mean([s[2] for s in val_s]):.3f}",
        flush=True,
    )

    lm_cfg = json.loads((Path(args.lm) / "config.json").read_text())
    rm = nj.init_reward_model(rm_config(lm_cfg, args.layers), k_init, tokenizer=tok)
    params = dict(rm.params)
    params["embed_tokens"] = lm.params["embed_tokens"]
    params["norm"] = lm.params["norm"]
    params["layers"] = jax.tree.map(lambda x: x[: args.layers], lm.params["layers"])
    if args.init_rm:
        params = dict(nj.load_reward_model(args.init_rm, tokenizer=tok).params)
    cls, cfg = rm.__class__, rm.config

    ids, mask, labels = encode_rm(tok, train_s, args.max_len)
    # LM samples: class-balanced weights (half the inverse class frequency).
    weights = np.where(labels > 0, 0.5 / max(pos_rate, 1e-3), 0.5 / max(1 - pos_rate, 1e-3))
    n_lm = len(ids)
    synth_s = []
    if args.synth_problems:
        sp = generate("train", args.synth_problems, args.seed + 2000)
        synth_s = synthetic_set(sp, args.synth_neg, np.random.default_rng(args.seed + 2000))
        sids, smask, slabels = encode_rm(tok, synth_s, args.max_len)
        spos = float(slabels.mean())
        sw = np.where(slabels > 0, 0.5 / spos, 0.5 / (1 - spos))
        ids, mask = np.concatenate([ids, sids]), np.concatenate([mask, smask])
        labels, weights = np.concatenate([labels, slabels]), np.concatenate([weights, sw])
        print(f"synthetic: {len(synth_s)} responses, correct rate {spos:.3f}", flush=True)
    weights = weights.astype(np.float32)
    vids, vmask, vlabels = encode_rm(tok, val_s, args.max_len)

    sched = optax.warmup_cosine_decay_schedule(
        0.0, args.lr, min(args.warmup, args.steps // 2), args.steps, end_value=args.lr * 0.05
    )
    opt = optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=args.weight_decay)
    )
    opt_state = opt.init(params)

    def loss_fn(params, x, m, y, w):
        s = cls(cfg, params, None, "float32").score(x, m)
        return jnp.mean(w * optax.sigmoid_binary_cross_entropy(s, y))

    @jax.jit
    def train_step(params, opt_state, x, m, y, w):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, m, y, w)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def score_fn(params, x, m):
        return cls(cfg, params, None, "float32").score(x, m)

    def val_auroc(params):
        scores = np.concatenate(
            [
                np.asarray(score_fn(params, vids[i : i + 200], vmask[i : i + 200]))
                for i in range(0, len(vids), 200)
            ]
        )
        return auroc(scores, vlabels), scores

    base_auc, _ = val_auroc(params)
    print(f"val AUROC before training (random head): {base_auc:.3f}", flush=True)
    rng = np.random.default_rng(args.seed)
    t_train, losses, history = time.time(), [], []
    n_syn = len(ids) - n_lm
    b_lm = args.batch if not n_syn else int(round(args.batch * args.lm_frac))
    streams = [[np.arange(n_lm), 0, b_lm]]
    if n_syn:
        streams.append([n_lm + np.arange(n_syn), 0, args.batch - b_lm])
    for st in streams:
        st[0] = rng.permutation(st[0])
    best_auc, best_params, best_step = -1.0, params, 0
    for step in range(1, args.steps + 1):
        parts = []
        for st in streams:
            if st[1] + st[2] > len(st[0]):
                st[0], st[1] = rng.permutation(st[0]), 0
            parts.append(st[0][st[1] : st[1] + st[2]])
            st[1] += st[2]
        idx = np.concatenate(parts)
        width = min(args.max_len, -(-int(mask[idx].sum(1).max()) // 8) * 8)
        params, opt_state, loss = train_step(
            params, opt_state, ids[idx, :width], mask[idx, :width], labels[idx], weights[idx]
        )
        losses.append(float(loss))
        last = step == args.steps or (
            args.max_minutes and time.time() - t_train > 60 * args.max_minutes
        )
        if step % args.eval_every == 0 or last:
            auc, _ = val_auroc(params)
            if auc > best_auc:
                best_auc, best_params, best_step = auc, params, step
            history.append({"step": step, "loss": float(np.mean(losses[-50:])), "val_auroc": auc})
            print(
                f"step {step} loss {np.mean(losses[-50:]):.4f} val AUROC {auc:.3f} "
                f"({time.time() - t_train:.0f}s)",
                flush=True,
            )
        if last:
            break
    train_s_elapsed = time.time() - t_train
    params = best_params  # early stopping: the checkpoint with the best validation AUROC
    auc, scores = val_auroc(params)
    print(f"best val AUROC {auc:.3f} at step {best_step}", flush=True)
    final = cls(cfg, params, tok, "float32")
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    save_pretrained(final, out, tokenizer=tok)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    summary = {
        "command": "python scripts/train_rm.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "args": vars(args),
        "params": n_params,
        "train_samples": len(train_s),
        "train_correct_rate": pos_rate,
        "synthetic_samples": len(synth_s),
        "best_step": best_step,
        "val_samples": len(val_s),
        "val_correct_rate": float(np.mean(vlabels)),
        "val_auroc": auc,
        "val_auroc_before_training": base_auc,
        "sampling_seconds": round(sample_s, 1),
        "train_seconds": round(train_s_elapsed, 1),
        "total_seconds": round(time.time() - t0, 1),
        "history": history,
    }
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=1))


if __name__ == "__main__":
    main()
