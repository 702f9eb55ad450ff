"""The command line's checks of what a user gave, run before any model loads.

Each failure prints one line ``nabla-jax: error: …`` and exits with code 2 (:func:`fail`).
"""

from __future__ import annotations

import os
import sys

__all__ = [
    "MAX_SEED",
    "check_acceptance",
    "check_config_vocab",
    "check_model_dir",
    "check_output_path",
    "check_tokenizer_rows",
    "checkpoint_head",
    "fail",
    "one_line",
    "precheck_pair",
    "same_file",
]

MAX_SEED = 2**63 - 1


def fail(msg: str) -> SystemExit:
    """Print ``nabla-jax: error: msg`` and return the exit (code 2) to raise."""
    print(f"nabla-jax: error: {msg}", file=sys.stderr)
    return SystemExit(2)


def one_line(e: BaseException) -> str:
    """An exception as one line: its message with newlines folded (or its type if empty)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if text != type(e).__name__ else f"{type(e).__name__} (no message)"


def check_output_path(path: str, flag: str, *, create_dir: bool = False) -> None:
    """Before any model loads: the output's directory exists (or, with ``create_dir``, is
    created) and accepts a new file, and the path is not itself a directory."""
    import tempfile

    if os.path.isdir(path):
        raise fail(f"{flag} {path!r} is a directory; give a file path")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        if not create_dir:
            raise fail(f"{flag} {path!r}: directory {parent!r} does not exist; create it first")
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as e:
            raise fail(f"{flag} {path!r}: cannot create directory {parent!r} ({e})") from None
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise fail(f"{flag} {path!r}: directory {parent!r} is not writable ({e})") from None


def check_model_dir(path: str, what: str) -> str:
    """``path`` is a Hugging Face model directory (holds config.json), else exit with a line."""
    if os.path.isfile(path):
        raise fail(f"{what} {path!r} is a file; pass the model directory that holds config.json")
    if not os.path.isdir(path):
        raise fail(f"{what} directory {path!r} does not exist")
    if not os.path.exists(os.path.join(path, "config.json")):
        raise fail(f"{what} directory {path!r} has no config.json (not a Hugging Face model dir)")
    return path


def _header_shapes(path: str) -> dict[str, tuple] | None:
    """{tensor name: shape} of a safetensors checkpoint (headers only); None for pickled or
    missing weights (the loader gives the full message)."""
    from nabla_jax.models.convert import checkpoint_files, read_safetensors

    try:
        kind, files = checkpoint_files(path)
    except (ValueError, FileNotFoundError):
        return None
    if kind != "safetensors":
        return None
    shapes: dict[str, tuple] = {}
    for f in files:
        shapes.update({k: t.shape for k, t in read_safetensors(f).items()})
    return shapes


def checkpoint_head(path: str) -> str | None:
    """ "score" / "lm" from a safetensors checkpoint's header (no weights read); None otherwise."""
    shapes = _header_shapes(path)
    if shapes is None:
        return None
    return "score" if "score.weight" in shapes else "lm"


_EMBEDDINGS = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight")


def check_config_vocab(path: str, flag: str, vocab_size: int) -> None:
    """config.json's ``vocab_size`` equals the rows of the checkpoint's token embedding."""
    shapes = _header_shapes(path) or {}
    for name, shape in shapes.items():
        if name.endswith(_EMBEDDINGS) and len(shape) == 2 and shape[0] != vocab_size:
            raise fail(
                f"{flag} {path!r}: config.json says vocab_size={vocab_size} but the weights' "
                f"token embedding {name} has {shape[0]} rows; config.json does not match the "
                "weights — fix its vocab_size"
            )


def check_tokenizer_rows(path: str, flag: str, tokenizer, vocab_size: int) -> None:
    """A checkpoint's own tokenizer has no token id past its embedding rows (``vocab_size``):
    otherwise the directory's tokenizer and weights do not belong together, whatever the
    pairing. ``tokenizer`` None (the directory has none) passes."""
    if tokenizer is None:
        return
    top = max(tokenizer.get_vocab().values(), default=-1)
    if top >= vocab_size:
        raise fail(
            f"{flag} {path!r}: its tokenizer has token id {top} but its vocabulary size "
            f"(config.json vocab_size, the embedding rows) is {vocab_size}; that tokenizer does "
            "not belong to these weights — put the checkpoint's own tokenizer.json beside its "
            "config.json"
        )


def precheck_pair(lm_path: str, rm_path: str, rm_vocab: str | None = None) -> str | None:
    """Before either model loads: the LM and RM directories are not swapped and the RM can read
    the LM's tokens — the same vocabulary (``rm_vocab`` shared), or one that differs only in
    added tokens or padded rows, matched by token string (``by_string``; see
    ``nabla_jax.decoding.pair``). Returns a one-line coverage note for ``by_string``."""
    from nabla_jax.models.load import load_tokenizer, read_model_config
    from nabla_jax.text.vocab import VocabMismatchError, check_vocab_compatibility
    from nabla_jax.text.vocab_map import build_vocab_map, resolve_rm_vocab

    lm_head, rm_head = checkpoint_head(lm_path), checkpoint_head(rm_path)
    if lm_head == "score" and rm_head == "lm":
        raise fail(
            f"--lm {lm_path!r} is a reward model and --rm {rm_path!r} a causal LM; swap them"
        )
    if lm_head == "score":
        raise fail(f"--lm {lm_path!r} is a sequence-classification (reward) checkpoint")
    if rm_head == "lm":
        raise fail(f"--rm {rm_path!r} is a causal LM; it needs a *ForSequenceClassification head")
    lm_cfg, rm_cfg = read_model_config(lm_path), read_model_config(rm_path)
    check_config_vocab(lm_path, "--lm", lm_cfg.vocab_size)
    check_config_vocab(rm_path, "--rm", rm_cfg.vocab_size)
    try:
        lm_tok, rm_tok = load_tokenizer(lm_path), load_tokenizer(rm_path)
    except FileNotFoundError as e:
        raise fail(str(e)) from None
    if lm_tok is None:
        raise fail(
            f"--lm {lm_path!r} has no tokenizer (no tokenizer.json); decoding needs the LM's "
            "tokenizer — copy tokenizer.json and tokenizer_config.json into that directory"
        )
    lm_rows, rm_rows = lm_cfg.vocab_size, rm_cfg.vocab_size
    check_tokenizer_rows(lm_path, "--lm", lm_tok, lm_rows)
    check_tokenizer_rows(rm_path, "--rm", rm_tok, rm_rows)
    try:
        if rm_vocab == "shared" or (rm_vocab is None and lm_rows == rm_rows):
            if rm_tok is not None:
                check_vocab_compatibility(lm_tok, rm_tok, lm_rows, rm_rows)
            return None
        if resolve_rm_vocab(rm_vocab, lm_tok, rm_tok, lm_rows, rm_rows) == "shared":
            return None
        coverage = build_vocab_map(lm_tok, rm_tok, lm_rows, rm_rows).coverage
    except (ValueError, VocabMismatchError) as e:
        raise fail(str(e)) from None
    return coverage.summary()


def same_file(a: str, b: str) -> bool:
    """Whether two paths name the same file (existing or not)."""
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def check_acceptance(acceptance: str, task, provenance: dict) -> None:
    """``--acceptance oracle`` needs a task with an exact scorer; it is then recorded in the
    results' provenance (the RM default leaves the provenance as before)."""
    if acceptance == "oracle":
        if task.oracle is None:
            raise fail(f"--acceptance oracle: the {task.name} task has no oracle (exact scorer)")
        provenance["acceptance"] = "oracle"
