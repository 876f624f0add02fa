"""The layout's rules, read from the source (AST): no import circles, memodb and memoprep never
import torch or memotrain, a recipe never imports another recipe, and the code points only at
files that are in the repo."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("memodb", "memotrain", "memo", "memoreport", "memoprep")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports(path: Path, name: str) -> set[str]:
    """Every module ``path`` imports, at any depth of the file (function-level imports too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import module`
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    g = {}
    for name, path in mods.items():
        # an import of a.b.c also runs a and a.b (their __init__): edges to each
        targets = set()
        for imp in imports(path, name):
            parts = imp.split(".")
            targets.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        g[name] = {t for t in targets if t in mods and t != name}
    return g


def test_no_import_circles(graph):
    circles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                circles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    # a package's __init__ that re-exports its modules lazily is no circle; eager ones are
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_memodb_never_imports_torch_or_memotrain():
    bad = []
    for name, path in modules().items():
        if name.split(".")[0] not in ("memodb", "memoprep"):
            continue
        for imp in imports(path, name):
            if imp.split(".")[0] in ("torch", "memotrain", "memo", "transformers"):
                bad.append(f"{name} imports {imp}")
    assert not bad, "\n".join(bad)


def test_memoreport_never_imports_torch():
    """Reports are drawn from the files runs write; reading them needs no torch."""
    bad = [f"{name} imports {imp}" for name, path in modules().items()
           if name.split(".")[0] == "memoreport"
           for imp in imports(path, name) if imp.split(".")[0] in ("torch", "transformers")]
    assert not bad, "\n".join(bad)


def test_recipes_import_no_other_recipe():
    bad = []
    for name, path in modules().items():
        for imp in imports(path, name):
            if imp.startswith("memotrain.recipes.") and name.startswith("memotrain."):
                recipe = ".".join(imp.split(".")[:3])
                if recipe != name:
                    bad.append(f"{name} imports {imp}")
    assert not bad, "a recipe or shared module imports a recipe:\n" + "\n".join(bad)


def test_code_and_docs_point_only_at_files_in_the_repo():
    """Docstrings, comments and docs name docs/ files that exist, never outside notes."""
    outside = re.compile(r"(?<!docs/)\b(FORMATS|PIPELINE|PREP|INTEROP|TRAINER)\.md\b"
                         r"|shared/spec|\.\./shared")
    named = re.compile(r"docs/([A-Z_]+\.md)")
    bad = []
    files = [p for pkg in (*PACKAGES, "bench", "tests") for p in (ROOT / pkg).rglob("*.py")]
    files += [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for path in files:
        if path == Path(__file__).resolve():
            continue
        text = path.read_text(encoding="utf-8")
        for m in outside.finditer(text):
            bad.append(f"{path.relative_to(ROOT)}: {m.group(0)}")
        for m in named.finditer(text):
            if not (ROOT / "docs" / m.group(1)).is_file():
                bad.append(f"{path.relative_to(ROOT)}: docs/{m.group(1)} does not exist")
    assert not bad, "\n".join(bad)


def test_importing_memodb_and_the_cli_loads_no_torch():
    import subprocess
    import sys
    code = ("import sys, memodb, memodb.feature.imgdb, memodb.feature.rawimg, "
            "memodb.feature.trans2npz, memodb.store.reader, memodb.checks.run, memodb.describe, "
            "memodb.synth, memodb.dataset.build, memo.cli, memoprep; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
