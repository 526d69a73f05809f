"""The house rules of issue 13, checked on the source so that they stay true.

* every module of `segqc/` is small (≤ 400 lines): one job each;
* no module imports a private name (``_x``) of another module;
* no import circle between modules, counting imports inside functions too: the layers
  (data → plan → methods → calibration → pipeline → cli) only look down.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "segqc"
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(path: Path, name: str) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every ``import`` / ``from … import`` in the file (relative ones resolved)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.append((base, [a.name for a in node.names]))
    return found


def _target(module: str, names: list[str]) -> list[str]:
    """The segqc modules an import statement loads (``from pkg import mod`` loads ``pkg.mod``)."""
    if not module.startswith("segqc"):
        return []
    out = [module] if module in MODULES else []
    out += [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
    return out


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_small(name):
    n = len(MODULES[name].read_text().splitlines())
    assert n <= MAX_LINES, f"{name} has {n} lines: split it by job (≤ {MAX_LINES})"


def test_no_private_name_is_imported_across_modules():
    bad = [f"{name}: from {mod} import {n}" for name, path in MODULES.items()
           for mod, names in _imports(path, name) if mod.startswith("segqc") and mod != name
           for n in names if n.startswith("_") and n != "__version__"]
    assert not bad, "imports of private names:\n" + "\n".join(bad)


def test_no_import_circle():
    graph = {name: {t for mod, names in _imports(path, name) for t in _target(mod, names)} - {name}
             for name, path in MODULES.items()}
    # a package's __init__ may re-export its own submodules: that is not a circle
    graph = {n: {t for t in deps if not (t.startswith(n + ".") and MODULES[n].name == "__init__.py")}
             for n, deps in graph.items()}
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" → ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert not cycles, "import circles:\n" + "\n".join(cycles)
