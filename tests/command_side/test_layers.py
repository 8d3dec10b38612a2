"""The optimization service's layers: the application speaks domain, the contract stays in the adapter.

import-linter's contracts (pyproject.toml) keep the rooms apart; this test checks the line inside the command side
that they do not: ``command_side/application.py`` and the commands and results it takes and returns
(``command_side/optimization_commands.py``) import no ``stratopt.v1`` type, no protobuf and no gRPC. The
conversions live in ``command_side/optimization_adapter.py`` and ``command_side/mapping.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

COMMAND_SIDE = Path(__file__).resolve().parents[2] / "command_side"
CONTRACT_MODULES = ("stratopt.v1", "stratopt.rpc_errors", "google.protobuf", "google.rpc", "grpc")
"""Module prefixes of the contract and its wire format."""


def imported_modules(path: Path) -> list[str]:
    """Every module ``path`` imports, at any level (also under ``TYPE_CHECKING`` and inside functions)."""
    modules = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            modules.append(node.module)
            modules.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def is_contract(module: str) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in CONTRACT_MODULES)


@pytest.mark.parametrize("module", ["application.py", "optimization_commands.py"])
def test_the_application_layer_imports_no_contract_type(module: str) -> None:
    offenders = [name for name in imported_modules(COMMAND_SIDE / module) if is_contract(name)]
    assert offenders == []


def test_the_check_sees_a_contract_import() -> None:
    """The test above would fail for the adapter, which is where the contract is allowed."""
    adapter = imported_modules(COMMAND_SIDE / "optimization_adapter.py")
    assert "stratopt.v1" in adapter and is_contract("stratopt.v1.command_service_pb2")
    assert not is_contract("grpcio_tools_like") and not is_contract("stratopt.v10")
