"""Train the bundled reward model for the arithmetic task from the bundled LM's own samples.

What it does
  * Samples ``--k`` responses per problem from the trained LM (``--lm``, default
    ``nabla_jax/assets/lm``) at ``--temperature`` (batched KV-cache decoding, keyed by
    ``--seed``) for ``--train-problems`` train-split and ``--val-problems`` validation-split
    problems (plus ``--test-problems`` more validation-split ones that are only reported), and
    labels each with the task grader (``nabla_jax.tasks.grade``): 1 = correct final answer.
    ``--samples-dir`` caches the samples as JSON for later runs with the same settings.
  * ``--synth-problems N``: also renders N more train-split problems as synthetic responses — the
    exact solution (1) and ``--synth-neg`` corrupted ones each (one step wrong, chain continued
    consistently; or only the answer wrong), graded (0 unless the corruption cancels out). Each
    batch takes ``--lm-frac`` of its rows from the LM samples, the rest synthetic.
  * Trains a Qwen2 sequence-classification model whose body is initialised from the LM's
    embeddings, final norm and first ``--layers`` blocks (the LM already "reads" arithmetic), with a
    fresh score head (or continues from ``--init-rm DIR``). Input = the RM chat template around the
    response (``nabla_jax.text.templates.rm_prefix_suffix_ids``: prompt, then the response as the
    assistant turn). Loss:
      - outcome: class-balanced binary cross-entropy of the score at the last real token;
      - process (``--step-weight``): the same score head read at other positions, against "no
        error so far" — at each step line's newline (``--process-labels steps``) or at every
        response token (``tokens``: 1 while the response is a token prefix of the reference
        solution, which is the only correct chain in the task's format). The head is the one HF
        reads at the last token, so the exported model is an ordinary sequence classifier;
      - ``--lm-weight``: next-token cross-entropy (tied embedding as the head) on the responses of
        correct rows, which keeps the body's arithmetic while it learns to judge.
  * ``--eval-every`` steps the validation AUROC is measured; the best checkpoint is exported with
    the bundled tokenizer to ``--out`` with ``--out/training.json``; the test AUROC of that
    checkpoint is reported.

How long it takes
  About 20 minutes per stage on 2 CPU cores with the settings below (sampling 16k responses: 3 min).

What it produced
  ``nabla_jax/assets/rm``, in three stages (commands and numbers in nabla_jax/assets/README.md and
  training.json).

Usage
  nice python scripts/train_rm.py --lm nabla_jax/assets/lm --out nabla_jax/assets/rm \\
      --step-weight 1 --process-labels tokens --lm-weight 0.5 --synth-problems 16000 --synth-neg 2
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

from rm_gradient_loss import (  # noqa: E402
    first_error_targets,
    gradient_alignment_loss,
    lm_candidates,
    right_swap_rank,
)
from train_lm import PAD_ID, generate_texts  # noqa: E402

import nabla_jax as nj  # noqa: E402
from nabla_jax.models.export import save_pretrained  # noqa: E402
from nabla_jax.models.model import last_valid_index  # noqa: E402
from nabla_jax.tasks import generate, grade  # noqa: E402
from nabla_jax.text.templates import rm_prefix_suffix_ids  # noqa: E402
from nabla_jax.text.tokenizer import load_bundled_tokenizer  # noqa: E402


def auroc(scores, labels) -> float:
    """Area under the ROC curve (ties count one half)."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    pos, neg = scores[labels], scores[~labels]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def sample_set(lm, tok, problems, k, temperature, key, batch):
    """``[(question, response, label, reference_solution)]``: ``k`` samples per problem."""
    questions = [p.question for p in problems for _ in range(k)]
    texts = generate_texts(lm, tok, questions, key=key, temperature=temperature, batch=batch)
    refs = [p for p in problems for _ in range(k)]
    return [
        (q, t, int(grade(t, p.answer)), p.solution)
        for q, t, p in zip(questions, texts, refs, strict=True)
    ]


def cached_sample_set(path, lm, tok, problems, k, temperature, key, batch):
    """:func:`sample_set`, read from / written to the JSON file ``path`` when one is given.

    The file records the questions, ``k`` and ``temperature``; a file made for other settings is an
    error rather than silently reused."""
    meta = {"questions": [p.question for p in problems], "k": k, "temperature": temperature}
    if path is not None and Path(path).exists():
        saved = json.loads(Path(path).read_text())
        if saved["meta"] != meta:
            raise SystemExit(
                f"{path} was sampled for other problems/settings; delete it or pass another path"
            )
        return [tuple(s) for s in saved["samples"]]
    out = sample_set(lm, tok, problems, k, temperature, key, batch)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({"meta": meta, "samples": out}))
    return out


def prefix_labels(response: str, solution: str) -> list[tuple[int, int]]:
    """Process labels: for each newline that ends a step line of ``response``, ``(char index of
    the newline, 1 if every line up to it equals the reference solution's line, else 0)``.

    The reference chain is deterministic (right start, operand and result at each step), so a
    prefix of steps is error-free exactly when it matches the reference line by line."""
    ref = solution.split("\n")[:-1]  # step lines, without the answer line
    out, ok, pos = [], True, 0
    for j, line in enumerate(response.split("\n")[:-1]):
        pos += len(line)
        ok = ok and j < len(ref) and line == ref[j]
        out.append((pos, int(ok)))
        pos += 1
    return out


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
    """``[(question, response, label, reference_solution)]``: the exact solution (1) and
    corrupted ones (0)."""
    out = []
    for p in problems:
        out.append((p.question, p.solution, 1, p.solution))
        for _ in range(neg_per_problem):
            bad = corrupt_solution(p.solution, rng)
            out.append((p.question, bad, int(grade(bad, p.answer)), p.solution))
    return out


def encode_rm(tok, samples, max_len, process="steps"):
    """Right-padded RM inputs ``ids [N, T]``, ``mask [N, T]``, outcome labels ``[N]`` and process
    labels ``step_labels [N, T]`` with ``step_mask [N, T]``.

    ``process="steps"``: labels at the newline token ending each step line (see
    :func:`prefix_labels`). ``process="tokens"``: a label at every response token, 1 while the
    response so far is a prefix of the reference solution's tokens (the reference chain is the
    only correct one in the task's format, so this is "no error yet")."""
    ids = np.full((len(samples), max_len), PAD_ID, np.int32)
    mask = np.zeros((len(samples), max_len), np.int32)
    step_labels = np.zeros((len(samples), max_len), np.float32)
    step_mask = np.zeros((len(samples), max_len), np.float32)
    cache = {}
    for i, (q, text, _, solution) in enumerate(samples):
        if q not in cache:
            cache[q] = rm_prefix_suffix_ids(tok, q)
        prefix, suffix = cache[q]
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        seq = prefix + enc["input_ids"] + suffix
        if len(seq) > max_len:
            seq = seq[: max_len - len(suffix)] + suffix
        ids[i, : len(seq)] = seq
        mask[i, : len(seq)] = 1
        if process == "tokens":
            ref = tok.encode(solution, add_special_tokens=False)
            resp = enc["input_ids"][: len(seq) - len(prefix) - len(suffix)]
            ok = True
            for j, t in enumerate(resp):
                ok = ok and j < len(ref) and t == ref[j]
                step_labels[i, len(prefix) + j], step_mask[i, len(prefix) + j] = float(ok), 1.0
            continue
        starts = [o[0] for o in enc["offset_mapping"]]
        for char, label in prefix_labels(text, solution):
            t = len(prefix) + int(np.searchsorted(starts, char, side="right")) - 1
            if t < len(seq) - len(suffix):
                step_labels[i, t], step_mask[i, t] = label, 1.0
    labels = np.array([s[2] for s in samples], np.float32)
    return ids, mask, labels, step_labels, step_mask


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
    ap.add_argument(
        "--step-weight",
        type=float,
        default=0.0,
        help="weight of the process loss: BCE of the score head at each step's newline token "
        "against 'every step so far is right' (0: outcome loss only)",
    )
    ap.add_argument(
        "--lm-weight",
        type=float,
        default=0.0,
        help="weight of an auxiliary next-token loss (tied embedding as the head) on the "
        "response tokens of correct rows, which keeps the body's arithmetic (0: off)",
    )
    ap.add_argument(
        "--process-labels",
        choices=("steps", "tokens"),
        default="steps",
        help="where the process loss is applied: each step line's newline, or every response token",
    )
    ap.add_argument(
        "--test-problems",
        type=int,
        default=0,
        help="more validation-split problems (another seed) whose samples are only reported, "
        "never used to pick the checkpoint",
    )
    ap.add_argument(
        "--samples-dir",
        default=None,
        help="cache the LM samples here as JSON (reused by later runs with the same settings)",
    )
    ap.add_argument("--init-rm", default=None, help="continue from this reward-model directory")
    ap.add_argument(
        "--grad-weight",
        type=float,
        default=0.0,
        help="weight of the gradient-alignment loss (scripts/rm_gradient_loss.py): at a wrong "
        "response's first wrong token the input gradient's swap estimates must rank the "
        "reference token first (0: off)",
    )
    ap.add_argument("--grad-temperature", type=float, default=1.0)
    ap.add_argument(
        "--grad-candidates",
        type=int,
        default=8,
        help="the swaps the gradient-alignment loss ranks: the LM's top-k tokens at the position",
    )
    args = ap.parse_args(argv)
    if args.lm_weight and args.process_labels != "tokens":
        # the auxiliary loss reuses the per-token process mask as its response-token mask
        ap.error("--lm-weight needs --process-labels tokens")

    t0 = time.time()
    tok = load_bundled_tokenizer()
    lm = nj.load_causal_lm(args.lm, tokenizer=tok)
    key = jax.random.key(args.seed)
    k_train, k_val, k_init = jax.random.split(key, 3)
    # Problems disjoint from the LM's validation/test evaluation sets (different seed).
    train_p = generate("train", args.train_problems, args.seed + 1000)
    val_p = generate("validation", args.val_problems, args.seed + 1000)
    test_p = (
        generate("validation", args.test_problems, args.seed + 3000) if args.test_problems else []
    )
    val_questions = {v.question for v in val_p}
    test_p = [p for p in test_p if p.question not in val_questions]

    def cache(name):
        return None if args.samples_dir is None else Path(args.samples_dir) / f"{name}.json"

    common = (args.k, args.temperature)
    train_s = cached_sample_set(
        cache("train"), lm, tok, train_p, *common, k_train, args.sample_batch
    )
    val_s = cached_sample_set(cache("val"), lm, tok, val_p, *common, k_val, args.sample_batch)
    test_s = (
        cached_sample_set(
            cache("test"), lm, tok, test_p, *common, jax.random.fold_in(k_val, 1), args.sample_batch
        )
        if test_p
        else []
    )
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

    ids, mask, labels, slab, smsk = encode_rm(tok, train_s, args.max_len, args.process_labels)
    epos, eright = first_error_targets(tok, train_s, args.max_len)
    # LM samples: class-balanced weights (half the inverse class frequency).
    weights = np.where(labels > 0, 0.5 / max(pos_rate, 1e-3), 0.5 / max(1 - pos_rate, 1e-3))
    n_lm = len(ids)
    synth_s = []
    if args.synth_problems:
        sp = generate("train", args.synth_problems, args.seed + 2000)
        synth_s = synthetic_set(sp, args.synth_neg, np.random.default_rng(args.seed + 2000))
        sids, smask, slabels, sslab, ssmsk = encode_rm(
            tok, synth_s, args.max_len, args.process_labels
        )
        spos = float(slabels.mean())
        sw = np.where(slabels > 0, 0.5 / spos, 0.5 / (1 - spos))
        ids, mask = np.concatenate([ids, sids]), np.concatenate([mask, smask])
        labels, weights = np.concatenate([labels, slabels]), np.concatenate([weights, sw])
        slab, smsk = np.concatenate([slab, sslab]), np.concatenate([smsk, ssmsk])
        spos_, sright = first_error_targets(tok, synth_s, args.max_len)
        epos, eright = np.concatenate([epos, spos_]), np.concatenate([eright, sright])
        print(f"synthetic: {len(synth_s)} responses, correct rate {spos:.3f}", flush=True)
    weights = weights.astype(np.float32)
    vids, vmask, vlabels, _, _ = encode_rm(tok, val_s, args.max_len)
    vpos, vright = first_error_targets(tok, val_s, args.max_len)
    ecand = np.zeros((len(ids), args.grad_candidates), np.int32)
    vcand = lm_candidates(lm, vids, vmask, vpos, args.grad_candidates)  # for the report
    if args.grad_weight:
        t_cand = time.time()
        ecand = lm_candidates(lm, ids, mask, epos, args.grad_candidates)
        print(f"LM candidates at {int((epos >= 0).sum())} first errors in "
              f"{time.time() - t_cand:.0f}s", flush=True)  # fmt: skip
    if test_s:
        tids, tmask, tlabels, _, _ = encode_rm(tok, test_s, args.max_len)

    sched = optax.warmup_cosine_decay_schedule(
        0.0, args.lr, min(args.warmup, args.steps // 2), args.steps, end_value=args.lr * 0.05
    )
    opt = optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=args.weight_decay)
    )
    opt_state = opt.init(params)

    def loss_fn(params, x, m, y, w, sy, sm, ep, er, ec):
        model = cls(cfg, params, None, "float32")
        hidden = model.hidden_states(x, m)  # [B, T, D]
        per_token = model.score_hidden(hidden)  # [B, T]
        last = jnp.take_along_axis(per_token, last_valid_index(m)[:, None], axis=1)[:, 0]
        outcome = jnp.mean(w * optax.sigmoid_binary_cross_entropy(last, y))
        steps = jnp.sum(sm * optax.sigmoid_binary_cross_entropy(per_token, sy))
        loss = outcome + args.step_weight * steps / jnp.maximum(jnp.sum(sm), 1.0)
        if args.lm_weight:
            # next-token loss on response tokens (process mask) of correct rows only
            logits = hidden[:, :-1] @ model.embed_matrix().T  # [B, T-1, V]
            nll = optax.softmax_cross_entropy_with_integer_labels(logits, x[:, 1:])
            lm_mask = sm[:, 1:] * y[:, None]
            loss += args.lm_weight * jnp.sum(nll * lm_mask) / jnp.maximum(jnp.sum(lm_mask), 1.0)
        if args.grad_weight:
            loss += args.grad_weight * gradient_alignment_loss(
                model, x, m, ep, er, ec, args.grad_temperature
            )
        return loss

    @jax.jit
    def train_step(params, opt_state, x, m, y, w, sy, sm, ep, er, ec):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, m, y, w, sy, sm, ep, er, ec)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def score_fn(params, x, m):
        return cls(cfg, params, None, "float32").score(x, m)

    @jax.jit
    def rank_fn(params, x, m, p, r, c):
        return right_swap_rank(cls(cfg, params, None, "float32"), x, m, p, r, c)

    def grad_top1(params):
        """Share of the validation samples with a first wrong token where the gradient's swap
        estimates rank the reference token first."""
        ranks = np.concatenate([
            np.asarray(rank_fn(params, vids[i : i + 200], vmask[i : i + 200],
                               vpos[i : i + 200], vright[i : i + 200], vcand[i : i + 200]))
            for i in range(0, len(vids), 200)
        ])  # fmt: skip
        known = ranks >= 0
        return float(np.mean(ranks[known] == 0)) if known.any() else float("nan")

    def val_auroc(params, x=vids, m=vmask, y=vlabels):
        scores = np.concatenate(
            [
                np.asarray(score_fn(params, x[i : i + 200], m[i : i + 200]))
                for i in range(0, len(x), 200)
            ]
        )
        return auroc(scores, y), scores

    base_auc, _ = val_auroc(params)
    base_top1 = grad_top1(params)
    print(f"val AUROC before training: {base_auc:.3f}; gradient top-1 {base_top1:.3f}", flush=True)
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
            params,
            opt_state,
            ids[idx, :width],
            mask[idx, :width],
            labels[idx],
            weights[idx],
            slab[idx, :width],
            smsk[idx, :width],
            np.where(epos[idx] < width, epos[idx], -1),
            eright[idx],
            ecand[idx],
        )
        losses.append(float(loss))
        last = step == args.steps or (
            args.max_minutes and time.time() - t_train > 60 * args.max_minutes
        )
        if step % args.eval_every == 0 or last:
            auc, _ = val_auroc(params)
            top1 = grad_top1(params)
            # with the gradient loss on, the checkpoint must also point the right way
            pick = auc + (top1 if args.grad_weight else 0.0)
            if pick > best_auc:
                best_auc, best_params, best_step = pick, params, step
            history.append({"step": step, "loss": float(np.mean(losses[-50:])), "val_auroc": auc,
                            "val_gradient_top1": top1})  # fmt: skip
            print(
                f"step {step} loss {np.mean(losses[-50:]):.4f} val AUROC {auc:.3f} "
                f"gradient top-1 {top1:.3f} ({time.time() - t_train:.0f}s)",
                flush=True,
            )
        if last:
            break
    train_s_elapsed = time.time() - t_train
    params = best_params  # early stopping: the checkpoint with the best validation AUROC
    auc, scores = val_auroc(params)
    print(f"best val AUROC {auc:.3f} at step {best_step}", flush=True)
    test_auc = val_auroc(params, tids, tmask, tlabels)[0] if test_s else None
    if test_s:
        print(f"held-out test AUROC {test_auc:.3f} ({len(test_s)} samples)", flush=True)
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
        "val_gradient_top1": grad_top1(params),
        "val_gradient_top1_before_training": base_top1,
        "test_samples": len(test_s),
        "test_correct_rate": float(np.mean([t[2] for t in test_s])) if test_s else None,
        "test_auroc": test_auc,
        "sampling_seconds": round(sample_s, 1),
        "train_seconds": round(train_s_elapsed, 1),
        "total_seconds": round(time.time() - t0, 1),
        "history": history,
    }
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=1))


if __name__ == "__main__":
    main()
