"""The import graph of ``src/distilprune`` (function-level imports included) has no cycle, and the
low-level packages import none of the command-level ones.

The graph is read with :mod:`ast`, not by importing: every ``import`` / ``from ... import``
anywhere in a module counts (relative imports resolved; ``from pkg import mod`` imports
``pkg.mod``), so a lazy import inside a function cannot hide a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "distilprune"
# below the commands: models, data, compression, kernels, storage formats and exporters
LOW_LEVEL = ("models", "data", "prune", "quantize", "distill", "engine", "export", "formats", "metadata",
             "reporting", "shrink")
COMMANDS = ("jobs", "cli", "serve", "serving", "benchmark")

Graph = dict[str, set[str]]


def module_files(package: Path) -> dict[str, Path]:
    """``{dotted module name: file}`` for every module of the package directory ``package``."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_names(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """Every dotted name one import statement in ``module`` may load."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[:len(parts) - node.level + 1]
        base = ".".join([*parts, *([node.module] if node.module else [])])
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def import_graph(package: Path) -> Graph:
    """Module -> the modules of the same package it imports, at module level or in any function."""
    modules = module_files(package)
    graph: Graph = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                deps.update(imported_names(node, name, path.name == "__init__.py"))
        graph[name] = {dep for dep in deps if dep in modules and dep != name}
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components of more than one module (each holds an import cycle),
    sorted (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for dep in sorted(graph[node]):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = stack[stack.index(node):]
            del stack[stack.index(node):]
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def describe(graph: Graph, component: list[str]) -> str:
    """The modules of one cycle and the imports between them, one module a line."""
    inside = set(component)
    return "\n".join(f"  {m} -> {', '.join(sorted(graph[m] & inside))}" for m in component)


def layer_violations(graph: Graph, root: str) -> list[str]:
    """``module -> import`` for every module of :data:`LOW_LEVEL` (under ``root``) that imports a
    command-level one (:data:`COMMANDS`)."""
    low = tuple(f"{root}.{name}" for name in LOW_LEVEL)
    high = tuple(f"{root}.{name}" for name in COMMANDS)

    def within(name: str, prefixes: tuple[str, ...]) -> bool:
        return any(name == p or name.startswith(p + ".") for p in prefixes)

    return sorted(f"{module} -> {dep}" for module, deps in graph.items() if within(module, low)
                  for dep in deps if within(dep, high))


def test_no_import_cycles():
    graph = import_graph(PACKAGE)
    found = cycles(graph)
    assert not found, "import cycles (lazy imports included):\n" + "\n\n".join(
        f"{len(c)} modules: {', '.join(c)}\n{describe(graph, c)}" for c in found)


def test_low_level_packages_import_no_commands():
    violations = layer_violations(import_graph(PACKAGE), "distilprune")
    assert not violations, "low-level modules importing command-level ones:\n" + "\n".join(violations)


def test_the_graph_covers_the_package():
    graph = import_graph(PACKAGE)
    assert {"distilprune.cli", "distilprune.models.loading", "distilprune.export.storage"} <= set(graph)
    assert "distilprune.models.base" in graph["distilprune.models.loading"]


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in {"__init__.py": "", **files}.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path / "pkg"


def test_a_lazy_relative_import_closes_a_cycle(tmp_path):
    package = _package(tmp_path, {
        "a.py": "from pkg import b\n",
        "b.py": "def f():\n    from pkg.sub.c import g\n",
        "sub/__init__.py": "",
        "sub/c.py": "def g():\n    from .. import a\n",
        "d.py": "import pkg.a\n",
    })
    graph = import_graph(package)
    assert graph["pkg.sub.c"] == {"pkg", "pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c"]]
    assert "  pkg.sub.c -> pkg.a" in describe(graph, cycles(graph)[0]).splitlines()


def test_an_acyclic_graph_has_no_cycles(tmp_path):
    package = _package(tmp_path, {"a.py": "from pkg import b\n", "b.py": "import json\n"})
    assert cycles(import_graph(package)) == []


def test_a_low_level_module_importing_a_job_is_found(tmp_path):
    package = _package(tmp_path, {
        "models/__init__.py": "",
        "models/m.py": "def f():\n    from pkg.jobs import run\n",
        "jobs/__init__.py": "",
        "jobs/run.py": "from pkg.models import m\n",
        "serve.py": "from pkg.jobs import run\n",
    })
    assert layer_violations(import_graph(package), "pkg") == ["pkg.models.m -> pkg.jobs",
                                                              "pkg.models.m -> pkg.jobs.run"]
