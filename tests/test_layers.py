"""The package's layers: imports point down only, no circle, and only ``app/`` acts as the program.

Reads the source with :mod:`ast` (function-level imports included; ``if TYPE_CHECKING:`` blocks
left out, as they never run), so a late ``from .x import y`` cannot hide a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fmnist_ignite"

# Top to bottom; a module may import its own layer's modules and those below, never above.
LAYERS = [
    ["app"],
    ["sweep", "inspect_runs", "export"],
    ["resume"],
    ["build"],
    ["experiment"],
    ["handlers", "evaluation", "reports"],
    ["checkpoint", "history", "monitor", "parallel", "interrupt", "rundir", "runfiles", "context", "serving"],
    ["data", "engine", "models", "optim", "plots", "images"],
    ["config", "registry", "fileio", "errors", "events", "tables", "preprocess"],
]
# What the program does and the library must not: print, exit, set up logging output, start processes.
PROGRAM_CALLS = {"print", "sys.exit", "os._exit", "logging.basicConfig", "exit", "quit"}
PROGRAM_MODULES = {"subprocess", "multiprocessing", "torch.multiprocessing"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node, less what stands under ``if TYPE_CHECKING:``."""
    nodes: list[ast.AST] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            stack.extend(node.orelse)
            continue
        nodes.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return nodes


def _imports(module: str) -> set[str]:
    """The package's modules that ``module`` imports when it runs."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *([node.module] if node.module else [])])
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
    return targets


GRAPH = {module: _imports(module) for module in MODULES}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) == 1:
        return 0  # the front door: the program's names (lazily) and the library's
    if parts[1] == "__main__":
        return None  # python -m fmnist_ignite: above every layer
    for index, layer in enumerate(LAYERS):
        if parts[1] in layer:
            return index
    raise AssertionError(f"{module} is in no layer of {LAYERS}: add it where it belongs")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_has_a_layer_and_imports_nothing_above_it(module: str) -> None:
    mine = _layer(module)
    upward = [t for t in sorted(GRAPH[module]) if mine is not None and (_layer(t) is None or _layer(t) < mine)]
    assert upward == [], f"{module} imports {upward}, which stand above it"


def test_no_import_circle() -> None:
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        seen[module] = 1
        for target in sorted(GRAPH[module]):
            if seen.get(target) == 1:
                circle = [*path[path.index(target) :], target] if target in path else [module, target]
                raise AssertionError(f"import circle: {' -> '.join(circle)}")
            if target not in seen:
                visit(target, [*path, target])
        seen[module] = 2

    for module in sorted(MODULES):
        if module not in seen:
            visit(module, [module])


def test_only_the_app_imports_the_app() -> None:
    importers = sorted(m for m, targets in GRAPH.items() if any(t.startswith("fmnist_ignite.app") for t in targets))
    assert [m for m in importers if not m.startswith("fmnist_ignite.app") and _layer(m) is not None] == []


def _program_acts(module: str) -> list[str]:
    acts = []
    for node in _runtime_nodes(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Call) and ast.unparse(node.func) in PROGRAM_CALLS:
            acts.append(f"{ast.unparse(node.func)}() at line {node.lineno}")
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            acts += [
                f"import {n} at line {node.lineno}"
                for n in names
                if n.split(".")[0] in PROGRAM_MODULES or n in PROGRAM_MODULES
            ]
        elif isinstance(node, ast.Assign) and any(ast.unparse(t) in ("sys.stdout", "sys.stderr") for t in node.targets):
            acts.append(f"replaces {ast.unparse(node.targets[0])} at line {node.lineno}")
    return acts


@pytest.mark.parametrize(
    "module", sorted(m for m in MODULES if m.count(".") and m.split(".")[1] not in ("app", "__main__"))
)
def test_the_library_neither_prints_nor_exits_nor_starts_processes(module: str) -> None:
    assert _program_acts(module) == []


def test_the_check_sees_a_late_import_and_a_print(tmp_path: Path) -> None:
    source = "def f():\n    from .app import cli\n    print('x')\n"
    tree = ast.parse(source)
    calls = [ast.unparse(n.func) for n in _runtime_nodes(tree) if isinstance(n, ast.Call)]
    imports = [n.module for n in _runtime_nodes(tree) if isinstance(n, ast.ImportFrom)]
    assert calls == ["print"] and imports == ["app"]


def test_the_front_door_lists_each_public_name_in_all_three_places() -> None:
    import fmnist_ignite

    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    typed = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
        for child in node.body
        if isinstance(child, ast.ImportFrom)
        for alias in child.names
    }
    where = fmnist_ignite._WHERE
    assert set(fmnist_ignite.__all__) == {*where, "__version__"}
    assert typed == set(where)
    for name, module in where.items():
        assert getattr(fmnist_ignite, name) is getattr(__import__(f"fmnist_ignite.{module}", fromlist=[name]), name)
