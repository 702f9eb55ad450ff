"""The package's layers, checked on the source files (no model runs).

``nabla_jax/`` is laid out by layer, each importing only the layers below it::

    app → tasks → decoding → functional → models → runtime → text

* No module imports a module of a higher layer, nor the package top (``nabla_jax`` itself);
  function-level imports count too.
* No import cycle between modules (a ``from package import name`` that is not a submodule is an
  import of the package's ``__init__``).
* Decoding imports no task: a task's answer extractor and oracle are passed in.
* At most three modules sit flat at the top of the package.
* No module is longer than 400 lines.
* ``import nabla_jax`` leaves JAX's configuration as it was.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nabla_jax"

#: Bottom first: a module may import its own layer and the ones before it.
LAYERS = ("text", "runtime", "models", "functional", "decoding", "tasks", "app")
MAX_FLAT = 3
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(path: Path) -> set[str]:
    """Every project module ``path`` imports, at any depth of its code: ``from pkg import sub``
    is an import of ``pkg.sub`` when that is a module, else of ``pkg``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "nabla_jax"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "nabla_jax":
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if _is_module(sub) else node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    return {_module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str | None:
    """The layer of a module (None for the package top: ``nabla_jax`` and its flat modules)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, deps in sorted(graph.items()):
        mine = layer_of(module)
        if mine is None:
            continue
        for dep in sorted(deps):
            theirs = layer_of(dep)
            if theirs is None or LAYERS.index(theirs) > LAYERS.index(mine):
                bad.append(f"{module} ({mine}) imports {dep} ({theirs or 'the package top'})")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph or w == v:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_layers_import_only_downwards():
    bad = upward_imports(import_graph())
    assert not bad, "imports against the layer order " + " → ".join(LAYERS) + ":\n" + "\n".join(bad)


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" ↔ ".join(c) for c in found)


def test_decoding_imports_no_task():
    graph = import_graph()
    bad = [
        f"{m} imports {d}"
        for m, deps in graph.items()
        if layer_of(m) == "decoding"
        for d in deps
        if layer_of(d) == "tasks"
    ]
    assert not bad, "decoding must take a task's extractor / oracle as arguments:\n" + "\n".join(
        bad
    )


def test_checkers_catch_what_they_claim():
    graph = {
        "nabla_jax.text.a": {"nabla_jax.decoding.b"},  # upward
        "nabla_jax.decoding.b": {"nabla_jax.decoding.c", "nabla_jax"},  # the top
        "nabla_jax.decoding.c": {"nabla_jax.decoding.b"},  # cycle b ↔ c
        "nabla_jax.app.d": {"nabla_jax.text.a"},  # fine
    }
    assert upward_imports(graph) == [
        "nabla_jax.decoding.b (decoding) imports nabla_jax (the package top)",
        "nabla_jax.text.a (text) imports nabla_jax.decoding.b (decoding)",
    ]
    assert cycles(graph) == [["nabla_jax.decoding.b", "nabla_jax.decoding.c"]]


def test_few_flat_modules_and_small_modules():
    flat = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(flat) + 1 <= MAX_FLAT, f"flat modules at the package top: __init__.py, {flat}"
    folders = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert set(folders) == set(LAYERS), f"packages {folders} against the layers {LAYERS}"
    long = [
        f"{p.relative_to(ROOT)} ({n} lines)"
        for p in sorted(PACKAGE.rglob("*.py"))
        if (n := p.read_text().count("\n")) > MAX_LINES
    ]
    assert not long, f"modules over {MAX_LINES} lines: {long}"


# JAX's configuration before and after importing nabla_jax, in a fresh interpreter.
_CONFIG_PROBE = """
import json, jax
def snapshot():
    return {k: repr(v) for k, v in sorted(jax.config.values.items())}
before = snapshot()
import nabla_jax, nabla_jax.app.cli, nabla_jax.app.evaluation
after = snapshot()
print(json.dumps({k: (before.get(k), after.get(k)) for k in set(before) | set(after)
                  if before.get(k) != after.get(k)}))
"""


def test_import_leaves_jax_config_unchanged():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NABLA_JAX_", "JAX_COMP"))}
    out = subprocess.run(
        [sys.executable, "-c", _CONFIG_PROBE], capture_output=True, text=True, timeout=240,
        cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    changed = json.loads(out.stdout.strip().splitlines()[-1])
    assert not changed, f"importing nabla_jax changed jax.config: {changed}"


def test_old_module_paths_still_import_with_a_warning():
    probe = (
        "import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
        "import nabla_jax\n"
        "try:\n    import nabla_jax.dto_config\nexcept DeprecationWarning as w:\n    print(w)\n"
        "warnings.simplefilter('ignore', DeprecationWarning)\n"
        "from nabla_jax.refine import refine\n"
        "from nabla_jax.functional.refine import refine as new\n"
        "assert refine is new\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=240, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "nabla_jax.dto_config moved to nabla_jax.functional.dto_config" in out.stdout
