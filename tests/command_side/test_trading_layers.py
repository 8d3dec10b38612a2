"""The trading application layer speaks domain: no module of it imports the ``stratopt.v1`` contract.

Protobuf is converted in one place, ``command_side.trading_adapter`` (and stored through
``command_side.trading_records``); the application services take and return dataclasses.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APPLICATION_MODULES = ("allocations", "rebalancing", "trading_model")
"""The trading application services and their commands and results."""
FORBIDDEN = ("stratopt", "google.protobuf", "grpc")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (``if TYPE_CHECKING:`` blocks included)."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


@pytest.mark.parametrize("module", APPLICATION_MODULES)
def test_the_trading_application_imports_no_protobuf(module: str) -> None:
    imported = imported_modules(ROOT / "command_side" / f"{module}.py")
    offending = sorted(m for m in imported if any(m == f or m.startswith(f"{f}.") for f in FORBIDDEN))
    assert offending == [], f"command_side/{module}.py imports {offending}"


def test_the_check_sees_a_protobuf_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("from stratopt.v1 import trading_service_pb2 as trading_pb\nimport google.protobuf\n")
    assert {"stratopt.v1", "google.protobuf"} <= imported_modules(sample)
