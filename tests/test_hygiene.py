"""House rules of the source tree, checked on the files themselves (no model runs).

* No module under ``nabla_jax/``, ``benchmarks/`` or ``scripts/`` imports another project
  module's private (``_underscore``) name, neither ``from m import _x`` nor ``m._x`` on an
  imported project module.
* Docstrings cite documentation pages that exist (``docs/<page>.md`` and ``#anchor``), and no
  source file cites the design notes that are not part of the repository.
* Every module under ``nabla_jax/`` defines ``__all__``, and every name in it exists.
* The README's "What is inside" table names every module under ``nabla_jax/``.

Files other work is still changing are listed in the ``*_PENDING`` constants below, each with
what remains to do; an entry that no longer applies fails the test, so the lists only shrink.
"""

from __future__ import annotations

import ast
import importlib
import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nabla_jax"
DOCS = ROOT / "docs"
PROJECT_TOPS = ("nabla_jax", "benchmarks", "scripts", "tests")

# Modules still without an ``__all__`` (none left; an entry fails once the module has one).
ALL_PENDING: frozenset[str] = frozenset()

# Files that still cite the design notes kept outside the repository (none left; a new entry
# needs a reason and fails once the file no longer cites them).
CITATION_PENDING: frozenset[str] = frozenset()

# Modules added on other branches that the README's "What is inside" table may not list yet
# (none left; an entry fails once the table lists it).
README_PENDING: frozenset[str] = frozenset()

# TODO(lead): docs pages that docstrings already cite and that another branch is writing; delete
# the entry when the page exists (the test fails then).
DOC_PAGES_PENDING: frozenset[str] = frozenset()

_NOTES = ("ALGORITHM", "DESIGN", "FACTS")  # the design notes kept outside the repository
_NOTE_RE = re.compile(r"\b(?:" + "|".join(_NOTES) + r")\.md\b")
_DOC_REF_RE = re.compile(r"\bdocs/([\w./-]+?\.md)(#[\w-]+)?")


def _rel(path: Path, root: Path = ROOT) -> str:
    return path.relative_to(root).as_posix()


def _sources(*tops: str) -> list[Path]:
    return sorted(p for top in tops for p in (ROOT / top).rglob("*.py"))


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _package_modules() -> list[Path]:
    return _sources("nabla_jax")


# --------------------------------------------------------------------------------------------
# Private names
# --------------------------------------------------------------------------------------------


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _absolute(module: str | None, level: int, path: Path, root: Path) -> str:
    """The absolute dotted name of a (possibly relative) ``from`` import in ``path``."""
    if level == 0:
        return module or ""
    package = _module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _is_project(module: str) -> bool:
    return module.split(".")[0] in PROJECT_TOPS


def _is_module(dotted: str, root: Path = ROOT) -> bool:
    """Whether ``dotted`` names a module or package file under ``root``."""
    path = root.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def private_uses(path: Path, root: Path = ROOT) -> list[str]:
    """``file:line name`` of every private name ``path`` takes from another project module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    modules = {}  # local name -> project module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _is_project(alias.name):
                    if alias.asname:
                        modules[alias.asname] = alias.name
                    else:
                        modules[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node.module, node.level, path, root)
            if not _is_project(source):
                continue
            for alias in node.names:
                if _is_private(alias.name):
                    found.append(
                        f"{_rel(path, root)}:{node.lineno} from {source} import {alias.name}"
                    )
                elif _is_module(f"{source}.{alias.name}", root):
                    modules[alias.asname or alias.name] = f"{source}.{alias.name}"
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain, value = [node.attr], node.value
        while isinstance(value, ast.Attribute):
            chain.append(value.attr)
            value = value.value
        if isinstance(value, ast.Name) and value.id in modules:
            dotted = [value.id] + chain[::-1]
            if any(_is_private(part) for part in dotted[1:]):
                found.append(f"{_rel(path, root)}:{node.lineno} {'.'.join(dotted)}")
    return sorted(set(found))


def test_no_private_names_across_modules():
    found = [
        hit for path in _sources("nabla_jax", "benchmarks", "scripts") for hit in private_uses(path)
    ]
    assert not found, "private names used from another project module:\n" + "\n".join(found)


def test_private_name_check_catches_both_forms(tmp_path):
    """The checker itself: both forms are caught, public names and dunders are not."""
    pkg = tmp_path / "nabla_jax"
    pkg.mkdir()
    for name in ("__init__", "refine", "refine_program", "vocab"):
        (pkg / f"{name}.py").write_text("")
    bad = pkg / "bad.py"
    bad.write_text(
        "from nabla_jax.functional.refine import _check_models, refine\n"
        "from nabla_jax import refine_program as rp\n"
        "import nabla_jax as nj\n"
        "from . import vocab\n"
        "x = rp._to_logits\n"
        "y = nj.refine._check_models\n"
        "z = nj.__version__, refine, rp.refine_padded, vocab._encode\n"
    )
    hits = private_uses(bad, root=tmp_path)
    assert [h.split(" ", 1)[1] for h in hits] == [
        "from nabla_jax.functional.refine import _check_models",
        "rp._to_logits",
        "nj.refine._check_models",
        "vocab._encode",
    ], hits


# --------------------------------------------------------------------------------------------
# Citations
# --------------------------------------------------------------------------------------------


def _docstrings(path: Path):
    """``(line, text)`` of the module's, every class's and every function's docstring."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = [tree] + [
        n
        for n in ast.walk(tree)
        if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
    ]
    for node in nodes:
        text = ast.get_docstring(node, clean=False)
        if text:
            yield getattr(node, "lineno", 1), text


def _slug(heading: str) -> str:
    """The anchor MkDocs (Python-Markdown's toc extension) gives a heading."""
    text = unicodedata.normalize("NFKD", re.sub(r"[`*]", "", heading))
    text = text.encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def page_anchors(page: Path) -> set[str]:
    anchors, fenced = set(), False
    for line in page.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6}\s", line):
            anchors.add(_slug(line.lstrip("#")))
    return anchors


def doc_references(path: Path) -> list[tuple[int, str, str | None]]:
    """``(line, page, anchor)`` of every ``docs/<page>.md[#anchor]`` in ``path``'s docstrings."""
    refs = []
    for line, text in _docstrings(path):
        for m in _DOC_REF_RE.finditer(text):
            refs.append((line, m.group(1), m.group(2)[1:] if m.group(2) else None))
    return refs


def test_docstring_doc_references_resolve():
    broken, count = [], 0
    for path in _sources("nabla_jax", "benchmarks", "scripts", "tests/reference"):
        for line, page, anchor in doc_references(path):
            count += 1
            target = DOCS / page
            if page in DOC_PAGES_PENDING:
                continue
            if not target.is_file():
                broken.append(f"{_rel(path)}:{line} docs/{page} (no such page)")
            elif anchor is not None and anchor not in page_anchors(target):
                broken.append(f"{_rel(path)}:{line} docs/{page}#{anchor} (no such heading)")
    assert not broken, "docstrings cite missing documentation:\n" + "\n".join(broken)
    assert count > 0, "no docstring cites a docs page: the reference check checked nothing"


def test_no_citations_of_notes_outside_the_repository():
    found = []
    for path in _sources("nabla_jax", "benchmarks", "scripts", "tests/reference"):
        if _rel(path) in CITATION_PENDING:
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if _NOTE_RE.search(line):
                found.append(f"{_rel(path)}:{i}: {line.strip()}")
    assert not found, (
        "these files cite design notes the repository does not contain; cite a docs/ page or "
        "say it directly:\n" + "\n".join(found)
    )


def test_doc_pages_pending_list_is_current():
    written = sorted(page for page in DOC_PAGES_PENDING if (DOCS / page).is_file())
    assert not written, f"these pages exist now: delete them from DOC_PAGES_PENDING: {written}"


def test_citation_pending_list_is_current():
    stale = [
        f
        for f in CITATION_PENDING
        if not (ROOT / f).is_file() or not _NOTE_RE.search((ROOT / f).read_text())
    ]
    assert not stale, f"no longer cite the notes: delete from CITATION_PENDING: {sorted(stale)}"


def test_anchor_slugs_match_mkdocs():
    assert _slug("The paper's DTO") == "the-papers-dto"
    assert _slug("`refine_padded`: one `lax.scan`") == "refine_padded-one-laxscan"
    assert _slug("Where nabla-jax differs, and why") == "where-nabla-jax-differs-and-why"
    try:  # where the docs extra is installed: Python-Markdown's own rule on every real heading
        from markdown.extensions.toc import slugify
    except ImportError:
        return
    for page in DOCS.rglob("*.md"):
        for line in page.read_text().splitlines():
            if re.match(r"#{1,6}\s", line) and "`" not in line and "*" not in line:
                heading = line.lstrip("#").strip()
                assert _slug(heading) == slugify(heading, "-"), (page.name, heading)


# --------------------------------------------------------------------------------------------
# __all__
# --------------------------------------------------------------------------------------------


def declared_all(path: Path) -> list[str] | None:
    """The names of ``__all__`` (``=`` and ``+=`` at module level), or None without one."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names, found = [], False
    for node in tree.body:
        target = value = None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            target, value = node.target, node.value
        if isinstance(target, ast.Name) and target.id == "__all__":
            found = True
            names += list(ast.literal_eval(value))
    return names if found else None


@pytest.mark.parametrize("path", _package_modules(), ids=_rel)
def test_module_declares_all_and_every_name_exists(path):
    names = declared_all(path)
    if _rel(path) in ALL_PENDING:
        assert names is None, f"{_rel(path)} has __all__ now: delete it from ALL_PENDING"
        pytest.skip("TODO(lead): __all__ pending (ALL_PENDING)")
    assert names is not None, f"{_rel(path)} defines no __all__"
    assert len(names) == len(set(names)), f"{_rel(path)}: __all__ repeats a name"
    module = importlib.import_module(_module_name(path))
    missing = [n for n in names if not hasattr(module, n)]
    assert not missing, f"{_rel(path)}: __all__ names what the module does not define: {missing}"


def test_all_pending_list_is_current():
    gone = sorted(f for f in ALL_PENDING if not (ROOT / f).is_file())
    assert not gone, f"no longer exist: delete from ALL_PENDING: {gone}"


def test_top_level_all_covers_the_documented_api():
    import nabla_jax as nj

    pages = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
    used = {}
    for page in pages:
        for name in re.findall(r"\bnj\.([A-Za-z]\w*)(?![\w*])", page.read_text()):
            used.setdefault(name, _rel(page))
    assert used, "no page shows an nj.* call: the check checked nothing"
    outside = {n: page for n, page in used.items() if n not in nj.__all__}
    assert not outside, f"pages use nj.<name> outside nabla_jax.__all__: {outside}"


# --------------------------------------------------------------------------------------------
# README "What is inside"
# --------------------------------------------------------------------------------------------


def readme_listed_modules(readme: str) -> tuple[set[str], set[str]]:
    """``(files, packages)`` named in the first column of the "What is inside" table, relative
    to ``nabla_jax/``. In one cell a bare file name takes the folder of the entry before it
    (``decoding/config.py``, ``state.py`` names ``decoding/state.py``); ``tasks/`` names a
    whole package."""
    section = readme.split("## What is inside", 1)[1].split("\n## ", 1)[0]
    files, packages = set(), set()
    for line in section.splitlines():
        if not line.startswith("|") or line.startswith("|---"):
            continue
        folder = ""
        for entry in re.findall(r"`([^`]+)`", line.split("|")[1]):
            if entry.endswith("/"):
                packages.add(entry.rstrip("/"))
                continue
            if "/" in entry:
                folder = entry.rsplit("/", 1)[0] + "/"
                files.add(entry)
            else:
                files.add(folder + entry)
    return files, packages


def _unlisted(files: set[str], packages: set[str]) -> list[str]:
    missing = []
    for path in _package_modules():
        rel = path.relative_to(PACKAGE).as_posix()
        if path.name == "__init__.py" or rel in files:
            continue
        if any(rel.startswith(p + "/") for p in packages):
            continue
        missing.append(f"nabla_jax/{rel}")
    return missing


def test_readme_table_lists_every_module():
    files, packages = readme_listed_modules((ROOT / "README.md").read_text())
    missing = [m for m in _unlisted(files, packages) if m not in README_PENDING]
    assert not missing, f"the README's 'What is inside' table does not list: {missing}"
    ghosts = sorted(f for f in files if not (PACKAGE / f).is_file())
    ghosts += sorted(p for p in packages if not (PACKAGE / p).is_dir())
    assert not ghosts, f"the table lists modules that do not exist: {ghosts}"


def test_readme_pending_list_is_current():
    files, packages = readme_listed_modules((ROOT / "README.md").read_text())
    listed = {f"nabla_jax/{f}" for f in files}
    stale = sorted(README_PENDING & listed)
    assert not stale, f"listed in the README now: delete from README_PENDING: {stale}"


def test_readme_table_parser():
    table = (
        "## What is inside\n\n| module | what |\n|---|---|\n"
        "| `decoding/config.py`, `state.py` | x |\n| `tasks/` | y |\n| `cli.py` | z |\n\n## Next\n"
    )
    files, packages = readme_listed_modules(table)
    assert files == {"decoding/config.py", "decoding/state.py", "cli.py"}
    assert packages == {"tasks"}
