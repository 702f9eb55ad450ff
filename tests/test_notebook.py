"""The quickstart notebook runs top to bottom on the bundled models."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"
BUNDLED = Path(__file__).resolve().parent.parent / "nabla_jax" / "assets" / "lm" / "config.json"


@pytest.mark.slow
@pytest.mark.skipif(not BUNDLED.exists(), reason="bundled models not built")
def test_quickstart_notebook_executes(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any(o.get("output_type") == "display_data" for o in outputs), "the trace plot is drawn"


@pytest.mark.slow
@pytest.mark.skipif(not BUNDLED.exists(), reason="bundled models not built")
def test_jax_stack_notebook_executes(tmp_path):
    """vmap over prompts, a Flax reward, a learning-rate sweep and a 4-device mesh, all real."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK.parent / "jax_stack.ipynb", as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    text = "".join(
        o.get("text", "")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "stream"
    )
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]  # fmt: skip
    assert not errors
    assert "same tokens as refine_batch: False" not in text
    assert "compiled programs: 1" in text
    assert "same tokens as on one device: True" in text
