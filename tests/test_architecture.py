"""docs/architecture.md against the code: its table has a row for every module of
hf_gradinit, in import order (each module imports only modules above it), and each row's
"imports" column is what the module imports inside the package; core imports only torch
and config."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hf_gradinit"
DOC = ROOT / "docs" / "architecture.md"


def _module_name(path: Path) -> str:
    """'core.loop' for hf_gradinit/core/loop.py."""
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def _resolve(parts: list[str]) -> str | None:
    """The module (a file of the package) that an import of ``parts`` loads, if any."""
    for end in range(len(parts), 0, -1):
        folder = PACKAGE.joinpath(*parts[:end])
        if folder.with_suffix(".py").is_file() or (folder / "__init__.py").is_file():
            return ".".join(parts[:end])
    return None


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    name = getattr(test, "id", None) or getattr(test, "attr", None)
    return isinstance(node, ast.If) and name == "TYPE_CHECKING"


def _runtime_nodes(tree: ast.AST):
    """Every node, lazy imports inside functions included, but not ``if TYPE_CHECKING``'s."""
    for child in ast.iter_child_nodes(tree):
        if _is_type_checking(child):
            for other in child.orelse:
                yield other
                yield from _runtime_nodes(other)
            continue
        yield child
        yield from _runtime_nodes(child)


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(modules of the package, top-level names of other packages) that ``path`` imports."""
    package = list(path.relative_to(PACKAGE).parent.parts)
    inside, outside = set(), set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        targets = []
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            module = base + (node.module.split(".") if node.module else [])
            targets = [module + [alias.name] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            targets = [node.module.split(".") + [alias.name] for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name.split(".") for alias in node.names]
        for parts in targets:
            if node.__class__ is ast.ImportFrom and node.level:
                resolved = _resolve(parts)
            elif parts[0] == "hf_gradinit":
                resolved = _resolve(parts[1:])
            else:
                outside.add(parts[0])
                continue
            if resolved is not None and resolved != _module_name(path):
                inside.add(resolved)
    return inside, outside


def _table() -> list[tuple[list[str], set[str]]]:
    """The doc's module table: (modules of a row, the modules its last column names)."""
    rows = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        modules = re.findall(r"`([\w/]+)\.py`", cells[0]) if line.startswith("| `") else []
        if not modules:
            continue
        listed = re.sub(r"\([^)]*\)", "", cells[-1]).strip()
        names = set() if listed == "nothing" else {n.strip() for n in listed.split(",")}
        rows.append(([m.replace("/", ".") for m in modules], names))
    return rows


def test_architecture_table_lists_every_module_in_import_order():
    rows = _table()
    listed = [m for modules, _ in rows for m in modules]
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    missing, extra = sorted(modules - set(listed)), sorted(set(listed) - modules)
    assert not missing, f"no row in docs/{DOC.name} for {missing}"
    assert not extra, f"rows in docs/{DOC.name} for modules that do not exist: {extra}"
    assert len(listed) == len(set(listed)), "a module with two rows"
    above: set[str] = set()
    for row_modules, names in rows:
        for module in row_modules:
            imported, _ = _imports(PACKAGE.joinpath(*module.split(".")).with_suffix(".py"))
            assert names == imported, f"{module}: the table says {sorted(names)}"
            below = imported - above
            assert not below, f"{module} imports {sorted(below)}, listed below it"
        above.update(row_modules)


def test_core_imports_only_torch_and_config():
    allowed = set(sys.stdlib_module_names) | {"torch"}
    for path in (PACKAGE / "core").rglob("*.py"):
        inside, outside = _imports(path)
        assert {m for m in inside if not m.startswith("core.")} <= {"config"}, path.name
        assert outside <= allowed, f"{path.name} imports {sorted(outside - allowed)}"
