"""The package's floors (README "Layout"): which wing may import which. Read from the source with ``ast``, every
import statement counted, those inside functions too (a lazy import is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "lighthouse"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> tuple[set[str], set[str]]:
    """(every module the file imports, those imported at module level)."""
    tree = ast.parse(path.read_text())
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found, top = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = {base} | {f"{base}.{alias.name}" for alias in node.names}
        else:
            continue
        found |= names
        if node in tree.body:
            top |= names
    return found, top


MODULES = {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def project_imports(module: str, module_level: bool = False) -> set[str]:
    """The project's modules that ``module`` imports (names that are modules, not their attributes)."""
    every, top = MODULES[module]
    return {name for name in (top if module_level else every) if name in MODULES}


def wing(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_the_source_is_read():
    assert len(MODULES) > 60 and "lighthouse.model.transformer" in MODULES
    assert "lighthouse.model.config" in project_imports("lighthouse.model.transformer")


def test_no_import_circle_at_module_level():
    """Module-level imports form no cycle (a function-level import may close one on purpose: it runs later)."""
    graph = {m: project_imports(m, module_level=True) - {m} for m in MODULES}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(n) :] + [n]))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_kernels_import_nothing_above_ops():
    for m in (m for m in MODULES if wing(m) == "ops"):
        above = {n for n in project_imports(m) if wing(n) != "ops"}
        assert not above, f"{m} imports {sorted(above)} from above ops"


def test_model_imports_no_lightning():
    for m in (m for m in MODULES if wing(m) == "model"):
        every, _ = MODULES[m]
        assert not {n for n in every if n.split(".")[0] in ("lightning", "pytorch_lightning")}, m
        assert not {n for n in project_imports(m) if wing(n) in ("train", "eval", "checkpoint")}, m


def test_data_imports_no_model_or_eval_module():
    for m in (m for m in MODULES if wing(m) == "data"):
        assert not {n for n in project_imports(m) if wing(n) in ("model", "eval", "train", "checkpoint")}, m


def test_wing_inits_import_nothing():
    """Importing one module of a wing loads no other (ops/lighthouse is the op library: its __init__ is its API)."""
    for path in PACKAGE.rglob("__init__.py"):
        if module_name(path) == "lighthouse.ops.lighthouse":
            continue
        every, _ = imports(path)
        assert every <= {"__future__", "__future__.annotations"}, path
