"""Which class ``load_tokenizer`` loads a directory's tokenizer with.

A ``tokenizer_config.json`` naming the generic fast class (the bundled models') loads
``tokenizer.json`` as written; transformers 5's ``AutoTokenizer`` would take ``config.json``'s
``model_type`` (qwen2) and rebuild the pre-tokenizer. Both give the same ids on the task's text,
so the bundled models see what they were trained on; the generic path also leaves torch
unimported, which is most of the bundled pair's load time.
"""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from transformers import AutoTokenizer

from nabla_jax.app.bundled import BUNDLED_LM, BUNDLED_RM
from nabla_jax.models.load import load_tokenizer
from nabla_jax.tasks import chat_messages, generate
from tests import subproc

BUNDLED = pytest.mark.skipif(
    not (BUNDLED_LM / "tokenizer.json").is_file(), reason="bundled models not built"
)


@BUNDLED
@pytest.mark.parametrize("directory", [BUNDLED_LM, BUNDLED_RM], ids=["lm", "rm"])
def test_generic_class_loads_tokenizer_json_as_written(directory):
    tok = load_tokenizer(directory)
    written = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
    loaded = json.loads(tok.backend_tokenizer.to_str())
    for part in ("normalizer", "pre_tokenizer", "decoder", "post_processor"):
        assert loaded[part] == written[part], part
    assert loaded["model"]["vocab"] == written["model"]["vocab"]


@BUNDLED
@pytest.mark.parametrize("directory", [BUNDLED_LM, BUNDLED_RM], ids=["lm", "rm"])
def test_generic_class_encodes_the_task_as_autotokenizer(directory):
    ours, auto = load_tokenizer(directory), AutoTokenizer.from_pretrained(directory)
    assert (ours.eos_token_id, ours.pad_token_id) == (auto.eos_token_id, auto.pad_token_id)
    problems = [p for split in ("train", "test") for p in generate(split, 300, seed=11)]
    for p in problems:
        for text in (p.question, p.solution):
            assert ours.encode(text, add_special_tokens=False) == auto.encode(
                text, add_special_tokens=False
            ), text
        msgs = chat_messages(p)
        assert ours.apply_chat_template(msgs, add_generation_prompt=True) == (
            auto.apply_chat_template(msgs, add_generation_prompt=True)
        )


@BUNDLED
def test_model_specific_class_goes_through_autotokenizer(tmp_path):
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        shutil.copy(BUNDLED_LM / name, tmp_path / name)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "Qwen2Tokenizer"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    assert type(load_tokenizer(tmp_path)).__name__ == "Qwen2Tokenizer"
    assert type(load_tokenizer(BUNDLED_LM)).__name__ != "Qwen2Tokenizer"


@BUNDLED
def test_loading_the_bundled_pair_leaves_torch_unimported():
    code = (
        "import sys\n"
        "from nabla_jax.app.bundled import load_bundled\n"
        "lm, rm = load_bundled()\n"
        "assert lm.tokenizer is not None and rm.tokenizer is not None\n"
        "print('torch' in sys.modules)\n"
    )
    out = subproc.run([sys.executable, "-c", code], timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"
