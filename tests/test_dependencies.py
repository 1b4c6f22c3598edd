"""Dependencies and warnings (#21): nothing declared unused, no warning silenced globally."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILTERS = {"filterwarnings", "simplefilter"}


def _is_warnings_call(node: ast.AST, names: set[str]) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "warnings"
            and node.func.attr in names)


def global_filters(source: str) -> list[int]:
    """Lines of ``warnings.filterwarnings`` / ``simplefilter`` calls not inside a
    ``with warnings.catch_warnings():`` block."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    lines = []
    for node in ast.walk(tree):
        if not _is_warnings_call(node, FILTERS):
            continue
        scope = parents.get(node)
        while scope is not None and not (isinstance(scope, ast.With) and any(
                _is_warnings_call(item.context_expr, {"catch_warnings"}) for item in scope.items)):
            scope = parents.get(scope)
        if scope is None:
            lines.append(node.lineno)
    return lines


def test_global_filter_detector_can_fail():
    assert global_filters("import warnings\nwarnings.simplefilter('ignore')\n") == [2]
    assert global_filters("import warnings\ndef f():\n    warnings.filterwarnings('ignore')\n") == [3]
    assert global_filters("import warnings\nwith warnings.catch_warnings():\n"
                          "    warnings.simplefilter('ignore')\n") == []


def test_no_warning_is_silenced_globally():
    found = {str(p.relative_to(ROOT)): lines for p in sorted((ROOT / "src").rglob("*.py"))
             if (lines := global_filters(p.read_text()))}
    assert found == {}


def test_no_unused_compressed_tensors_dependency():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in deps if d.startswith("compressed-tensors")]
    sources = "".join(p.read_text() for p in (ROOT / "src" / "distilprune").rglob("*.py"))
    assert "import compressed_tensors" not in sources and "from compressed_tensors" not in sources
