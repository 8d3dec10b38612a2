"""The optimization service's layers: the application speaks domain, the contract stays in the adapter.

import-linter's contracts (pyproject.toml) keep the rooms apart; this test checks the line inside the command side
that they do not: ``command_side/application.py`` and the commands and results it takes and returns
(``command_side/optimization_commands.py``) import no ``stratopt.v1`` type, no protobuf and no gRPC, neither
directly nor through the command-side modules they import (the stores, the configuration and its stored schema,
the result records, ...). The conversions live in ``command_side/optimization_adapter.py``,
``command_side/mapping.py`` and ``command_side/configuration_messages.py``.
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


def command_side_imports(module: str) -> set[str]:
    """The ``command_side`` modules ``module`` (a ``command_side`` module name) imports, transitively, itself too."""
    seen: set[str] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        path = COMMAND_SIDE / (name.removeprefix("command_side.").replace(".", "/") + ".py")
        if name == "command_side":
            path = COMMAND_SIDE / "__init__.py"
        if not path.exists():  # ``command_side.x.Name``: a name imported from module x
            continue
        for imported in imported_modules(path):
            if imported == "command_side" or imported.startswith("command_side."):
                pending.append(imported)
    return {name for name in seen if (COMMAND_SIDE / (name.removeprefix("command_side.") + ".py")).exists()}


@pytest.mark.parametrize("module", ["command_side.application", "command_side.optimization_commands"])
def test_no_module_the_application_imports_imports_a_contract_type(module: str) -> None:
    reached = command_side_imports(module)
    assert "command_side.configuration" in reached  # the walk follows command_side imports
    offenders = {
        name: contract
        for name in sorted(reached)
        if (contract := [m for m in imported_modules(COMMAND_SIDE / (name.removeprefix("command_side.") + ".py"))
                         if is_contract(m)])
    }  # fmt: skip
    assert offenders == {}


def test_the_transitive_check_sees_a_contract_import() -> None:
    """The walk reaches the stores from the application, and the contract's modules from the adapter."""
    application = command_side_imports("command_side.application")
    assert {"command_side.optimization_store", "command_side.configuration_records"} <= application
    assert "command_side.mapping" not in application and "command_side.records" not in application
    reached = command_side_imports("command_side.optimization_adapter")
    assert {"command_side.mapping", "command_side.configuration_messages", "command_side.records"} <= reached
    assert "command_side.optimization_commands" in reached and "command_side.application" in reached


def test_the_check_sees_a_contract_import() -> None:
    """The test above would fail for the adapter, which is where the contract is allowed."""
    adapter = imported_modules(COMMAND_SIDE / "optimization_adapter.py")
    assert "stratopt.v1" in adapter and is_contract("stratopt.v1.command_service_pb2")
    assert not is_contract("grpcio_tools_like") and not is_contract("stratopt.v10")
