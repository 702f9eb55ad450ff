"""How well the bundled reward model orders responses that the exact oracle tells apart.

For ``--num-problems`` problems of a split, Best-of-``--n`` samples (the bundled baseline
sampling) are scored by both the reward model and the arithmetic oracle
(:class:`nabla_jax.tasks.oracle.OracleScorer`). Over every pair of samples of the same problem whose
oracle scores differ, the JSON reports how often the RM prefers the better one (pairwise
agreement), split by whether the pair differs in the final answer's correctness; and how often
the RM's top sample is correct against how often any sample is (Best-of-N against its oracle
ceiling). This is the acceptance test's job in ∇-Reasoner: pick the better of two responses.

Example::

    python benchmarks/bench_rm_agreement.py --split validation --num-problems 80 --n 8 \\
        --output benchmarks/results/rm_agreement.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import time


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", default="validation")
    ap.add_argument("--num-problems", type=int, default=80)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", required=True)
    ap.add_argument("--rm", default=None, help="a reward-model directory (default: the bundled RM)")
    args = ap.parse_args(argv)

    import jax

    from nabla_jax.app.bundled import bundled_baseline_sampling, load_bundled
    from nabla_jax.decoding.baselines import best_of_n
    from nabla_jax.decoding.scoring import rm_scores
    from nabla_jax.tasks import generate, get_task
    from nabla_jax.tasks.oracle import OracleScorer

    t0 = time.perf_counter()
    lm, rm = load_bundled()
    if args.rm:
        from nabla_jax.models import load_reward_model

        rm = load_reward_model(args.rm)
    task = get_task()
    problems = generate(args.split, args.num_problems, args.seed)
    oracle = OracleScorer(task, problems, lm, rm)
    groups: dict = {}

    def recording(seqs):
        rm_s = rm_scores(rm, seqs)
        for ids, r in zip(seqs, rm_s):
            problem, resp = oracle.split(ids)
            text = lm.tokenizer.decode(resp, skip_special_tokens=True)
            groups.setdefault(problem.id, []).append(
                (float(r), task.oracle(problem, text), task.grade(text, problem.answer))
            )
        return rm_s

    best_of_n(
        lm, rm, [task.format_prompt(p) for p in problems], jax.random.key(args.seed), n=args.n,
        sampling=bundled_baseline_sampling(), max_length=96, scorer=recording,
    )  # fmt: skip
    pairs = {"answer differs": [0, 0], "same answer correctness": [0, 0]}
    top_correct = any_correct = 0
    for samples in groups.values():
        top_correct += max(samples, key=lambda s: s[0])[2]
        any_correct += any(s[2] for s in samples)
        for a, b in itertools.combinations(samples, 2):
            if a[1] == b[1]:
                continue
            kind = "answer differs" if a[2] != b[2] else "same answer correctness"
            better, worse = (a, b) if a[1] > b[1] else (b, a)
            pairs[kind][0] += better[0] > worse[0]
            pairs[kind][1] += 1
    out = {
        "split": args.split, "problems": len(groups), "n": args.n, "rm": args.rm or "bundled",
        "pairwise_agreement": {
            k: {"agree": a, "pairs": p, "rate": a / p if p else None} for k, (a, p) in pairs.items()
        },
        "rm_top_correct": top_correct / len(groups),
        "any_sample_correct": any_correct / len(groups),
        "wall_seconds": time.perf_counter() - t0,
    }  # fmt: skip
    with open(args.output, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
