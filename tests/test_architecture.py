"""The engine's layout rules that import-linter does not check: no module imports another module's private name.

import-linter (``lint-imports``, contracts in pyproject.toml) checks the rooms, the layers, private modules and
import cycles; this test checks names: ``from services.x._y import _z`` from outside ``services/x/_y.py`` is a
private name crossing a module boundary. Importing a private *module* (``from services.optimization import
_cardinality``) inside its own package is allowed; import-linter's private-modules contract polices that.
"""

from __future__ import annotations

import ast
from pathlib import Path

SERVICES = Path(__file__).resolve().parent.parent / "services"


def _is_module(module: str, name: str) -> bool:
    base = SERVICES.parent.joinpath(*module.split("."), name)
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def test_no_module_of_the_engine_imports_another_modules_private_name() -> None:
    offenders = []
    for path in sorted(SERVICES.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or node.module is None or not node.module.startswith("services"):
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not _is_module(node.module, alias.name):
                    offenders.append(f"{path.relative_to(SERVICES.parent)}: from {node.module} import {alias.name}")
    assert offenders == []


def test_the_engine_has_no_function_level_imports_of_its_own_modules() -> None:
    """Imports of engine modules inside functions hide cycles from import-linter: all are at module level."""
    offenders = []
    for path in sorted(SERVICES.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("services"):
                    offenders.append(f"{path.relative_to(SERVICES.parent)}:{node.lineno} from {node.module}")
    assert offenders == []


LONG_MODULE_LINES = 500
"""A hand-written engine module beyond this many lines says in its docstring why it is one module."""


def test_long_engine_modules_say_why_they_are_one_module() -> None:
    offenders = []
    for path in sorted(SERVICES.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if text.count("\n") <= LONG_MODULE_LINES:
            continue
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if "Why " not in docstring:
            offenders.append(f"{path.relative_to(SERVICES.parent)}: {text.count(chr(10))} lines, no 'Why ...' sentence")
    assert offenders == []
