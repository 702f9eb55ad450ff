"""Build the task tokenizer from the arithmetic task's train split; save it in Hugging Face format.

    python scripts/build_tokenizer.py                      # -> nabla_jax/assets/tokenizer
    python scripts/build_tokenizer.py --out /tmp/tok --num-problems 5000 --seed 1

The training text is the ChatML rendering of train-split problems with their solutions (plus the
same prompts with a system message, so the ``system`` role word is in the vocabulary). Deterministic
in ``--seed``, ``--num-problems`` and ``--vocab-size``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

from nabla_jax.tasks import arithmetic  # noqa: E402
from nabla_jax.text.tokenizer import (  # noqa: E402
    BUNDLED_TOKENIZER_DIR,
    render_chatml,
    save_tokenizer,
    train_tokenizer,
)


def training_texts(num_problems: int, seed: int) -> list[str]:
    problems = arithmetic.generate("train", num_problems, seed)
    texts = []
    for i, p in enumerate(problems):
        system = "You are a careful calculator." if i % 10 == 0 else None
        texts.append(render_chatml(arithmetic.chat_messages(p, with_solution=True, system=system)))
    return texts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=BUNDLED_TOKENIZER_DIR, help="output directory")
    ap.add_argument("--num-problems", type=int, default=20000, help="train problems to learn from")
    ap.add_argument("--seed", type=int, default=0, help="seed of the train-split draw")
    ap.add_argument("--vocab-size", type=int, default=384, help="upper bound on the vocabulary")
    args = ap.parse_args(argv)

    texts = training_texts(args.num_problems, args.seed)
    tok = train_tokenizer(texts, vocab_size=args.vocab_size)
    out = save_tokenizer(tok, args.out)

    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(str(out))
    for t in texts[:200]:
        ids = loaded(t, add_special_tokens=False)["input_ids"]
        assert loaded.decode(ids) == t, "round trip failed"
    lengths = sorted(len(loaded(t, add_special_tokens=False)["input_ids"]) for t in texts)
    print(
        f"wrote {out}: vocab {len(loaded)}, eos {loaded.eos_token!r} ({loaded.eos_token_id}), "
        f"pad {loaded.pad_token!r} ({loaded.pad_token_id})"
    )
    print(
        f"chat-rendered prompt+solution tokens over {len(texts)} train texts: "
        f"median {lengths[len(lengths) // 2]}, max {lengths[-1]}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
