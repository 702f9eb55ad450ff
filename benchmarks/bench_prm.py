"""The bundled reward model as a process reward model: its score at each line's end, against
the arithmetic task's exact per-line check.

The bundled RM was trained with per-step labels, so reading it at every step end — the
``sequence`` layout of :func:`nabla_jax.models.load_process_reward_model`, one causal forward
per response, the score at each newline and at the response's last token — gives a PRM. This
benchmark samples responses of the bundled LM to held-out test problems (τ 0.6, top-p 0.95, as
the sampled baselines draw), labels each step by the exact check (a step is right when it and
every step before it are exactly the reference's: right operands, operator and result; the
answer line when the answer is right), and reports the AUROC of the step scores for telling
right steps from wrong ones — pooled over all steps, and by step number.

    python benchmarks/bench_prm.py --num-problems 400 --output benchmarks/results/prm_auroc.json
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np


def auroc(scores, labels) -> float:
    """Area under the ROC curve (the Mann-Whitney statistic; ties count half)."""
    s, y = np.asarray(scores, np.float64), np.asarray(labels, bool)
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    allv = np.concatenate([pos, neg])[order]
    i = 0
    while i < len(allv):  # average ranks over ties
        j = i
        while j + 1 < len(allv) and allv[j + 1] == allv[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-problems", type=int, default=400)
    p.add_argument("--samples", type=int, default=4, help="responses per problem")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="benchmarks/results/prm_auroc.json")
    args = p.parse_args()

    from nabla_jax.app.bundled import BUNDLED_RM, bundled_baseline_sampling, load_bundled
    from nabla_jax.decoding.samples import generate_samples
    from nabla_jax.models import load_process_reward_model
    from nabla_jax.models.model import default_positions
    from nabla_jax.runtime.buckets import bucket_length, pad_ids
    from nabla_jax.tasks import arithmetic
    from nabla_jax.tasks.arithmetic_oracle import step_checks
    from nabla_jax.text.templates import rm_prefix_suffix_ids

    t0 = time.perf_counter()
    lm, _ = load_bundled()
    prm = load_process_reward_model(BUNDLED_RM, layout="sequence")
    problems = arithmetic.fresh_test_problems(args.num_problems, seed=args.seed)
    prompts = [arithmetic.format_prompt(q) for q in problems]
    groups = generate_samples(
        lm, prompts, jax.random.key(args.seed), args.samples,
        sampling=bundled_baseline_sampling(), max_length=96, stop_strings=(), eos_ids=None,
        system=None, batch_size=32,
    )  # fmt: skip
    tok = lm.tokenizer
    newline = {i for i in range(len(tok)) if "\n" in tok.decode([i])}
    eos = set(tok.convert_tokens_to_ids([tok.eos_token])) if tok.eos_token else set()
    rows, ends, labels, step_no = [], [], [], []
    for q, prompt, group in zip(problems, prompts, groups, strict=True):
        prefix, _ = rm_prefix_suffix_ids(prm.tokenizer or tok, prompt)
        for s in group:
            body = [t for t in s.tokens if t not in eos]
            if not body:
                continue
            at = [len(prefix) + j for j, t in enumerate(body) if t in newline]
            if not at or at[-1] != len(prefix) + len(body) - 1:
                at.append(len(prefix) + len(body) - 1)  # the last line ends the response
            lab = step_checks(q.question, s.text.rstrip("\n"))
            n = min(len(at), len(lab))
            rows.append(prefix + body)
            ends.append(at[:n])
            labels.append(lab[:n])
            step_no.append(list(range(n)))
    width = bucket_length(max(len(r) for r in rows))
    score_fn = jax.jit(lambda i, m: prm.token_scores(i, m, position_ids=default_positions(m)))
    scores = []
    for start in range(0, len(rows), 64):
        chunk = rows[start : start + 64]
        ids, mask = pad_ids(chunk + [chunk[0]] * (64 - len(chunk)), width, left=False)
        tok_scores = np.asarray(score_fn(ids, mask))
        for k, e in enumerate(ends[start : start + 64]):
            scores.append(tok_scores[k, e].tolist())
    flat_s = [x for r in scores for x in r]
    flat_y = [x for r in labels for x in r]
    flat_k = [x for r in step_no for x in r]
    by_step = {}
    for k in sorted(set(flat_k)):
        sel = [i for i, kk in enumerate(flat_k) if kk == k]
        ys = [flat_y[i] for i in sel]
        if 0 < sum(ys) < len(ys):
            by_step[str(k + 1)] = {"auroc": auroc([flat_s[i] for i in sel], ys), "steps": len(sel),
                                   "right": int(sum(ys))}  # fmt: skip
    # The first wrong step of each response against the right steps before it.
    out = {
        "problems": args.num_problems,
        "responses": len(rows),
        "steps": len(flat_y),
        "right_steps": int(sum(flat_y)),
        "auroc": auroc(flat_s, flat_y),
        "auroc_by_step": by_step,
        "sampling": {
            "temperature": bundled_baseline_sampling().temperature,
            "top_p": bundled_baseline_sampling().top_p,
            "samples": args.samples,
        },  # fmt: skip
        "seed": args.seed,
        "jax": jax.__version__,
        "seconds": time.perf_counter() - t0,
        "command": f"python benchmarks/bench_prm.py --num-problems {args.num_problems} "
        f"--samples {args.samples} --seed {args.seed}",
    }
    with open(args.output, "w") as f:
        json.dump(out, f, indent=2)
    print(json.dumps({k: v for k, v in out.items() if k != "auroc_by_step"}, indent=2))
    print({k: round(v["auroc"], 3) for k, v in by_step.items()})


if __name__ == "__main__":
    main()
