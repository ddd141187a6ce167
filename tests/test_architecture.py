"""The house rules of the code, checked on its imports (read as text, nothing is run):

- imports go one way: core <- subscriptions <- jobs <- autopay <- config (a lower app never
  imports a higher one). ``core`` is the floor (the shared library); ``config`` is the roof
  (settings, urls, the API router, the Celery app, wsgi: the composition root) and nothing
  imports it (apps read ``django.conf.settings``);
- no circle of modules;
- no import inside a function, except in an AppConfig.ready() (migrations aside);
- the payment rails (autopay/rails/) reach no model, directly or through what they import.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"core": 0, "subscriptions": 1, "jobs": 2, "autopay": 3, "config": 4}
# The roof holds these and nothing else: a shared helper belongs to the floor, ``core``.
COMPOSITION_ROOT = {
    "config",
    "config.settings",
    "config.urls",
    "config.api_router",
    "config.celery",
    "config.wsgi",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _project_files() -> dict[str, Path]:
    files = {}
    for app in LAYERS:
        for path in sorted((REPO_ROOT / app).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            files[_module_name(path)] = path
    return files


FILES = _project_files()


def _resolve(name: str) -> str | None:
    """The project module an import names (a package, a module, or a name inside one)."""
    while name:
        if name in FILES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, tree: ast.AST) -> Iterator[tuple[ast.AST, str]]:
    package = module if FILES[module].name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield node, f"{base}.{alias.name}" if base else alias.name


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in FILES.items():
        targets = set()
        for _node, name in _imports(module, ast.parse(path.read_text())):
            target = _resolve(name)
            if target and target != module:
                targets.add(target)
        graph[module] = targets
    return graph


GRAPH = _graph()


def test_the_project_is_read() -> None:
    assert {
        "core.api",
        "config.settings",
        "subscriptions.models",
        "jobs.models",
        "autopay.engine",
    } <= set(FILES)
    assert "subscriptions.models" in GRAPH["jobs.services"]


def test_imports_go_one_way() -> None:
    upward = [
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if LAYERS[target.split(".")[0]] > LAYERS[module.split(".")[0]]
    ]
    assert not upward, "a lower app imports a higher one:\n" + "\n".join(sorted(upward))


def test_the_roof_is_only_the_composition_root() -> None:
    """config/ holds settings, urls, the router, the Celery app and wsgi; a shared helper
    put there would be imported by the apps below it."""
    extra = sorted(module for module in FILES if module.split(".")[0] == "config")
    assert set(extra) <= COMPOSITION_ROOT, f"not composition root: {set(extra) - COMPOSITION_ROOT}"


def test_no_circle_of_modules() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    counter = [0]

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = counter[0]
        counter[0] += 1
        stack.append(module)
        on_stack.add(module)
        for target in GRAPH[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert not circles, f"modules that import each other: {circles}"


def _function_level_imports(path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text())

    def walk(node: ast.AST, function: str | None) -> Iterator[str]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield from walk(child, child.name)
            elif isinstance(child, (ast.Import, ast.ImportFrom)):
                allowed = function == "ready" and path.name == "apps.py"
                if function is not None and not allowed:
                    yield f"{path.relative_to(REPO_ROOT)}:{child.lineno} in {function}()"
            else:
                yield from walk(child, function)

    yield from walk(tree, None)


def test_no_import_inside_a_function() -> None:
    found = [line for path in FILES.values() for line in _function_level_imports(path)]
    assert not found, "imports inside functions:\n" + "\n".join(found)


@pytest.mark.parametrize("rail", sorted(m for m in FILES if m.startswith("autopay.rails")))
def test_rails_reach_no_model(rail: str) -> None:
    seen: set[str] = set()
    todo = [rail]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(GRAPH[module])
    models = sorted(module for module in seen if module.endswith(".models"))
    assert not models, f"{rail} reaches {models}"


def test_the_checks_see_an_upward_import(tmp_path: Path) -> None:
    """The rules are not vacuous: a planted upward, function-level import is found."""
    planted = REPO_ROOT / "subscriptions" / "planted_for_test.py"
    planted.write_text("def f():\n    from autopay import engine\n")
    try:
        assert list(_function_level_imports(planted))
        module = _module_name(planted)
        FILES[module] = planted
        targets = {
            _resolve(name) for _node, name in _imports(module, ast.parse(planted.read_text()))
        }
        assert "autopay.engine" in targets
    finally:
        planted.unlink()
        FILES.pop(_module_name(planted), None)
