"""The layer rules of aesq's one package, checked on the imports of every module (an import contract).

Top to bottom: `cli` → `web`, `servers` → `flows` → `tasks` → `analysis` → `core`, with `models` (pure ML)
beside them. A layer imports only from layers below it, so the packages form no cycle.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "aesq"
LAYERS = ("cli", "web", "servers", "flows", "tasks", "analysis", "core", "models", "migrations")

# What each layer may import from aesq, besides itself and the package's `__init__`.
ALLOWED = {
    "cli": {"web", "servers", "flows", "tasks", "analysis", "core", "models", "migrations"},
    "web": {"analysis", "core", "models"},
    "servers": {"flows", "tasks", "analysis", "core", "models"},
    "flows": {"tasks", "analysis", "core"},
    "tasks": {"analysis", "core", "models"},
    "analysis": {"core", "models"},
    "core": {"models"},
    "models": set(),
    "migrations": {"core"},
}
# Pure ML: the models know nothing of orchestration, databases, object stores or aesq's settings.
MODELS_NEVER_IMPORT = (
    "prefect",
    "sqlalchemy",
    "psycopg",
    "pgvector",
    "minio",
    "alembic",
    "fastapi",
    "pydantic_settings",
)
# Installed only as aesq's subpackages: a top-level import of these names is a different (or no) package.
NOT_TOP_LEVEL = ("flows", "tasks", "models", "migrations")


def _modules() -> Iterator[tuple[str, Path]]:
    """(dotted name, file) of every module of the package, through the linked top-level folders."""
    for folder, _, files in os.walk(PACKAGE, followlinks=True):
        for file in files:
            if file.endswith(".py"):
                path = Path(folder) / file
                parts = path.relative_to(ROOT).with_suffix("").parts
                yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def _imports(module: str, path: Path) -> Iterator[str]:
    """The absolute names a module imports (relative imports resolved), wherever in the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _layer(name: str) -> str | None:
    """The layer of a dotted aesq name, or None for `aesq` itself and names outside aesq."""
    parts = name.split(".")
    return parts[1] if parts[0] == "aesq" and len(parts) > 1 and parts[1] in LAYERS else None


MODULES = dict(_modules())


def test_every_module_belongs_to_a_layer() -> None:
    unplaced = [name for name in MODULES if name != "aesq" and _layer(name) is None]
    assert not unplaced, f"modules outside the layers {LAYERS}: {unplaced}"
    assert {_layer(name) for name in MODULES} - {None} == set(LAYERS)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    own = _layer(module)
    if own is None:
        return
    wrong = sorted(
        {
            name
            for name in _imports(module, MODULES[module])
            if (layer := _layer(name)) not in (None, own) and layer not in ALLOWED[own]
        }
    )
    assert not wrong, f"{module} ({own}) may import only {sorted(ALLOWED[own])} of aesq, not {wrong}"


@pytest.mark.parametrize("module", sorted(name for name in MODULES if _layer(name) == "models"))
def test_models_stay_pure_ml(module: str) -> None:
    imported = set(_imports(module, MODULES[module]))
    wrong = sorted(name for name in imported if name.split(".")[0] in MODELS_NEVER_IMPORT)
    wrong += sorted(name for name in imported if name.split(".")[0] == "aesq" and _layer(name) != "models")
    assert not wrong, f"{module} imports {wrong}"


def test_layers_form_no_cycle() -> None:
    """The allowed imports, as a graph of layers, are acyclic (so the package has no cycle either)."""
    seen: set[str] = set()

    def visit(layer: str, path: tuple[str, ...]) -> None:
        assert layer not in path, f"cycle: {' → '.join((*path, layer))}"
        if layer not in seen:
            for lower in ALLOWED[layer]:
                visit(lower, (*path, layer))
            seen.add(layer)

    for layer in LAYERS:
        visit(layer, ())


def test_nothing_imports_the_linked_folders_by_their_top_level_names() -> None:
    files = [*MODULES.values(), *ROOT.glob("tests/**/*.py"), *ROOT.glob("bench/*.py")]
    wrong = sorted(
        f"{path.relative_to(ROOT)}: {name}"
        for path in files
        for name in _imports("x", path)
        if name.split(".")[0] in NOT_TOP_LEVEL
    )
    assert not wrong, f"import these as aesq.<name>: {wrong}"


# The entry points, which alone read the settings (`get_settings`): every command of the CLI, the web app's
# dependency, each flow as it starts, and Alembic's environment when its own command runs it. Everything below
# them takes the settings as a parameter, and no module passes a value on through the environment.
SETTINGS_ENTRY_POINTS = {
    "aesq.cli.main",
    "aesq.web.deps",
    "aesq.flows.spine",
    "aesq.flows.followup",
    "aesq.migrations.env",
}
ENVIRON_WRITES = {"setdefault", "update", "pop", "popitem", "clear", "__setitem__", "__delitem__"}


def _is_environ(node: ast.expr) -> bool:
    """`os.environ`, or `environ` imported from os."""
    if isinstance(node, ast.Attribute):
        return node.attr == "environ" and isinstance(node.value, ast.Name) and node.value.id == "os"
    return isinstance(node, ast.Name) and node.id == "environ"


def _environ_writes(tree: ast.AST) -> list[int]:
    """Line numbers of the statements that change this process's environment."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            if any(isinstance(target, ast.Subscript) and _is_environ(target.value) for target in targets):
                lines.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(function := node.func, ast.Attribute):
            if function.attr in ("putenv", "unsetenv") or (
                function.attr in ENVIRON_WRITES and _is_environ(function.value)
            ):
                lines.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("putenv", "unsetenv"):
            lines.append(node.lineno)
    return lines


def _names(tree: ast.AST) -> Iterator[tuple[str, int]]:
    """(name, line) of every name a module uses or imports."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            yield node.id, node.lineno
        elif isinstance(node, ast.Attribute):
            yield node.attr, node.lineno
        elif isinstance(node, ast.ImportFrom):
            yield from ((alias.name, node.lineno) for alias in node.names)


def test_only_entry_points_read_the_settings() -> None:
    assert set(MODULES) >= SETTINGS_ENTRY_POINTS  # each of them exists
    wrong = sorted(
        f"{module}:{line}"
        for module, path in MODULES.items()
        if module not in SETTINGS_ENTRY_POINTS
        for name, line in _names(ast.parse(path.read_text(), str(path)))
        if name == "get_settings"
    )
    assert not wrong, f"only {sorted(SETTINGS_ENTRY_POINTS)} may call get_settings; pass the settings to {wrong}"


def test_no_module_writes_the_environment() -> None:
    wrong = sorted(
        f"{module}:{line}"
        for module, path in MODULES.items()
        for line in _environ_writes(ast.parse(path.read_text(), str(path)))
    )
    assert not wrong, f"pass values as parameters or settings, not through os.environ: {wrong}"


@pytest.mark.parametrize(
    "source",
    [
        "os.environ['A'] = '1'",
        "os.environ['A'] += '1'",
        "del os.environ['A']",
        "os.environ.setdefault('A', '1')",
        "os.environ.update(A='1')",
        "environ.pop('A')",
        "os.putenv('A', '1')",
    ],
)
def test_environment_writes_are_recognised(source: str) -> None:
    assert _environ_writes(ast.parse(source)) == [1]


def test_environment_reads_are_not_writes() -> None:
    assert _environ_writes(ast.parse("os.environ.get('A'); os.environ['A']; dict(os.environ)")) == []
