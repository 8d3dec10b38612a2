"""The command side's tables from domain parameter names to proto field paths (``command_side.field_paths``).

The proto side of every row is checked against the message descriptors (the contract itself, not the table), the
domain side against the engine's dataclasses and the names its modules raise; a few cases run end to end through
gRPC: bounds by symbol, Black-Litterman views, allocation targets and the frontier's ``problem.`` prefix.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from pathlib import Path
from typing import Any

import grpc
import pandas as pd
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from command_side.field_paths import (
    ALLOCATION,
    ALLOCATION_FIELD_PATHS,
    OPTIMIZATION,
    OPTIMIZATION_FIELD_PATHS,
    FieldPath,
    FieldPathTable,
    proto_field_paths,
)
from services.engine import BlackLittermanSettings, MethodSettings
from services.errors import FieldViolation, InfeasibleError, InvalidInputError, PreconditionViolation
from services.optimization import MultiObjectiveWeights, PortfolioProblem, SectorLimit
from services.trading import AllocationRequest
from services.types import EstimationSettings, Moments, ReturnHistory
from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import trading_service_pb2 as trading_pb
from stratopt.v1 import types_pb2 as pb
from tests.command_side.test_optimize_service import field_violations, returns_request
from tests.conftest import DATA_DIR

SAMPLE = {"s": "1", "s2": "2", "k": "0", "t": "3"}
"""A value for each placeholder of a domain pattern."""
IDS = ("AAPL", "JNJ", "XOM", "KO", "JPM")

_SEGMENT = re.compile(r"(?P<name>\w+)(?:\[(?P<key>[^\]]+)\])?")


def _sample(pattern: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: SAMPLE[m.group(1)], pattern)


def _proto_field_exists(message: Descriptor, path: str) -> bool:
    """Whether ``path`` (``a.b[k].c``) names a field of ``message``.

    Every segment must be a field; a subscript needs a repeated field (a position) or a map (a key); a further
    segment needs a message.
    """
    descriptor: Descriptor | None = message
    for segment in path.split("."):
        match = _SEGMENT.fullmatch(segment)
        if match is None or descriptor is None or match["name"] not in descriptor.fields_by_name:
            return False
        field = descriptor.fields_by_name[match["name"]]
        is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
        if match["key"] is not None:
            if not field.is_repeated:
                return False
            if is_map:
                field = field.message_type.fields_by_name["value"]
            elif not match["key"].isdigit():
                return False
        descriptor = field.message_type if field.type == FieldDescriptor.TYPE_MESSAGE else None
    return True


@pytest.mark.parametrize("row", OPTIMIZATION_FIELD_PATHS, ids=lambda row: row.domain)
def test_every_optimization_row_names_a_field_of_the_optimize_request(row: FieldPath) -> None:
    path = OPTIMIZATION.proto_path(_sample(row.domain), symbols=IDS)
    assert path is not None
    assert _proto_field_exists(cmd_pb.OptimizeRequest.DESCRIPTOR, path), path
    frontier = cmd_pb.ComputeEfficientFrontierRequest.DESCRIPTOR
    assert _proto_field_exists(frontier, f"problem.{path}"), path


@pytest.mark.parametrize("row", ALLOCATION_FIELD_PATHS, ids=lambda row: row.domain)
def test_every_allocation_row_names_a_field_of_the_allocate_request(row: FieldPath) -> None:
    path = ALLOCATION.proto_path(_sample(row.domain))
    assert path is not None
    assert _proto_field_exists(trading_pb.AllocateSharesRequest.DESCRIPTOR, path), path


def test_the_descriptor_walk_refuses_what_the_contract_lacks() -> None:
    request = cmd_pb.OptimizeRequest.DESCRIPTOR
    assert _proto_field_exists(request, "constraints.strategy_bounds[KO].max_weight")
    assert not _proto_field_exists(request, "constraints.strategy_bounds[KO].cap")
    assert not _proto_field_exists(request, "constraints.max_weight[2]")  # a scalar takes no subscript
    assert not _proto_field_exists(request, "risk_parameters.alpha")
    assert not _proto_field_exists(request, "black_litterman.views[one].confidence")  # a list takes positions


_DOMAIN_OBJECTS = (
    PortfolioProblem,
    Moments,
    ReturnHistory,
    EstimationSettings,
    MethodSettings,
    MultiObjectiveWeights,
    SectorLimit,
    AllocationRequest,
)
_PARAMETERS = {"scenarios", "market_prices", "covariance", "constraints"}
"""Names that are a function's parameter rather than a dataclass attribute: the scenarios of a risk measure, the
market prices Black-Litterman's risk aversion may be implied from, and the problem's constraint set as a whole."""


def _attributes(cls: type) -> set[str]:
    return {field.name for field in dataclasses.fields(cls)}


@pytest.mark.parametrize("row", OPTIMIZATION_FIELD_PATHS + ALLOCATION_FIELD_PATHS, ids=lambda row: row.domain)
def test_every_domain_pattern_names_domain_attributes(row: FieldPath) -> None:
    names = [_SEGMENT.match(segment)["name"] for segment in row.domain.split(".")]  # type: ignore[index]
    known = set().union(*(_attributes(cls) for cls in _DOMAIN_OBJECTS)) | _PARAMETERS
    assert names[0] in known, row.domain
    if names[0] == "black_litterman" and len(names) > 1:
        assert names[1] in _attributes(BlackLittermanSettings), row.domain
    if names[0] == "multi_objective" and len(names) > 1:
        assert names[1] in _attributes(MultiObjectiveWeights), row.domain
    if names[0] == "sector_limits" and len(names) > 1:
        assert names[1] in _attributes(SectorLimit), row.domain
    if names[0] in ("targets", "holdings") and len(names) > 1:
        assert names[1] in {"symbol", "target_weight", "price", "allowed_deviation", "lot_size", "momentum_score"} | {
            "shares"
        }, row.domain


@pytest.mark.parametrize("table", [OPTIMIZATION, ALLOCATION], ids=["optimization", "allocation"])
def test_translating_twice_changes_nothing(table: FieldPathTable) -> None:
    """A proto path is never read as another domain path (the adapter's own errors already speak proto)."""
    for row in table.rows:
        once = table.proto_path(_sample(row.domain), symbols=IDS)
        assert once is not None
        twice = table.proto_path(once, symbols=IDS)
        assert twice in (None, once), (row.domain, once, twice)


ENGINE_SOURCES = [
    *sorted(Path("services/optimization").glob("*.py")),
    *sorted(Path("services/estimation").glob("*.py")),
    Path("services/engine.py"),
]
_LITERAL_PATHS = re.compile(
    r"(?:for_field\(\s*|PreconditionViolation\(\s*\"[A-Z_]+\",\s*|_FIELD: Final = |Relaxation\(\s*)f?\"([^\"]+)\""
)
_ENGINE_ONLY = {"max_risk", "risk_measure", "tolerance", "max_iterations", "n_assets", "correlation"}
"""Names the engine raises that no optimize request can reach: the command side never sets them (``max_risk``,
the solver's ``tolerance``, ``max_iterations``, ``n_assets``, HRP's ``correlation``, which the engine computes
from the returns itself) or validates them first (an unknown risk measure)."""


def test_every_literal_path_the_engine_raises_is_in_the_table() -> None:
    """Each field path the engine's optimization modules write as a literal has a row.

    A position written as an f-string expression reads as 1; paths whose names come from a variable are left to
    the rows' own tests.
    """
    found = set()
    for source in ENGINE_SOURCES:
        for literal in _LITERAL_PATHS.findall(source.read_text()):
            path = re.sub(r"\[[^\]]*\]", lambda m: re.sub(r"\{[^}]*\}", "1", m.group(0)), literal)
            if "{" not in path:
                found.add(path)
    assert "turnover_limit" in found and "lower_bounds[1]" in found  # the scan reads the sources
    missing = {
        path for path in found if OPTIMIZATION.proto_path(path, symbols=IDS) is None and path not in _ENGINE_ONLY
    }
    assert not missing


def test_a_domain_error_reads_in_proto_terms() -> None:
    error = InvalidInputError.for_field("upper_bounds[3]", "must be finite, unlike upper_bounds[1] and covariance")
    translated = OPTIMIZATION.translated(error, symbols=IDS)
    assert type(translated) is InvalidInputError
    assert translated.field_violations == (
        FieldViolation(
            "constraints.strategy_bounds[KO].max_weight",
            "must be finite, unlike constraints.strategy_bounds[JNJ].max_weight and covariance",
        ),
    )
    assert translated.message == (
        "constraints.strategy_bounds[KO].max_weight: must be finite, unlike "
        "constraints.strategy_bounds[JNJ].max_weight and covariance"
    )
    assert str(translated) == translated.message


def test_precondition_subjects_and_matrix_entries_are_translated() -> None:
    error = InfeasibleError(
        "raise turnover_limit from 0.1 to 0.3",
        precondition_violations=(
            PreconditionViolation("RELAXATION", "turnover_limit", "raise turnover_limit from 0.1 to 0.3"),
            PreconditionViolation("NOT_PENDING", "3f2a-recommendation", "not pending"),
        ),
    )
    translated = OPTIMIZATION.translated(error, symbols=IDS, prefix="problem")
    assert [v.subject for v in translated.precondition_violations] == [
        "problem.constraints.turnover_limit",
        "3f2a-recommendation",
    ]
    assert translated.message == "raise problem.constraints.turnover_limit from 0.1 to 0.3"
    assert OPTIMIZATION.proto_path("covariance[1, 2]", symbols=IDS) == "moments.covariance[7]"
    assert OPTIMIZATION.proto_path("returns[:, 4]") == "strategies[4]"
    assert OPTIMIZATION.proto_path("black_litterman.view_confidences[2]") == "black_litterman.views[2].confidence"


def test_the_adapters_own_paths_only_get_the_prefix() -> None:
    error = InvalidInputError.for_field("constraints.min_weight", "0.5 is above constraints.max_weight 0.2")
    with pytest.raises(InvalidInputError) as caught, proto_field_paths(OPTIMIZATION, prefix="problem"):
        raise error
    assert [v.field for v in caught.value.field_violations] == ["problem.constraints.min_weight"]
    assert caught.value.message == "problem.constraints.min_weight: 0.5 is above constraints.max_weight 0.2"


def test_allocation_names_are_symbols() -> None:
    error = InvalidInputError.for_field("targets[2].symbol", "duplicates targets[0].symbol")
    translated = ALLOCATION.translated(error)
    assert [v.field for v in translated.field_violations] == ["targets[2].symbol"]
    assert translated.message == "targets[2].symbol: duplicates targets[0].symbol"


# --- end to end through gRPC ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def returns() -> pd.DataFrame:
    prices = pd.read_csv(DATA_DIR / "sp500_dataset.csv.gz", parse_dates=["Date"], index_col="Date")
    return prices[list(IDS)].pct_change().dropna().iloc[-300:]


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _black_litterman(returns: pd.DataFrame, confidences: list[float]) -> cmd_pb.OptimizeRequest:
    return returns_request(
        returns,
        _unique("paths-bl"),
        method=pb.OPTIMIZATION_METHOD_BLACK_LITTERMAN,
        objective=pb.OBJECTIVE_MIN_VOLATILITY,
        black_litterman=pb.BlackLittermanInputs(
            market_caps={c: 10.0 + i for i, c in enumerate(returns.columns)},
            risk_aversion=2.5,
            views=[
                pb.View(weights={"AAPL": 1.0}, expected_return=0.12, confidence=confidences[0]),
                pb.View(weights={"KO": 1.0, "JPM": -1.0}, expected_return=0.02, confidence=confidences[1]),
            ],
        ),
    )


@pytest.mark.integration
def test_relaxed_strategy_bounds_are_named_by_symbol(commands: Any, returns: pd.DataFrame) -> None:
    request = returns_request(returns, _unique("paths-bounds"), objective=pb.OBJECTIVE_MIN_VOLATILITY)
    request.constraints.min_return = 0.0
    for symbol in IDS:
        request.constraints.strategy_bounds[symbol].CopyFrom(pb.WeightBounds(max_weight=0.15))
    request.constraints.allow_relaxation = True
    response = commands.Optimize(request, timeout=60)
    relaxations = response.optimization_metadata.relaxations
    constraints = [r.constraint for r in relaxations]
    assert constraints
    assert not any("bounds" in r.description for r in relaxations)
    assert all(
        re.fullmatch(r"constraints\.strategy_bounds\[(\w+)\]\.max_weight", c)[1] in IDS  # type: ignore[index]
        for c in constraints
    ), constraints


@pytest.mark.integration
def test_a_black_litterman_view_confidence_is_named_by_the_view(commands: Any, returns: pd.DataFrame) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        commands.Optimize(_black_litterman(returns, [0.5, 1.5]), timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == ["black_litterman.views[1].confidence"]
    assert (caught.value.details() or "").startswith("black_litterman.views[1].confidence: ")


@pytest.mark.integration
def test_the_frontier_prefixes_the_engines_paths_with_problem(commands: Any, returns: pd.DataFrame) -> None:
    frontier = cmd_pb.ComputeEfficientFrontierRequest(problem=_black_litterman(returns, [1.5, 0.5]), points=3)
    with pytest.raises(grpc.RpcError) as caught:
        commands.ComputeEfficientFrontier(frontier, timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == ["problem.black_litterman.views[0].confidence"]


@pytest.mark.integration
def test_an_allocation_target_is_named_by_its_symbol_field(trading: Any) -> None:
    request = trading_pb.AllocateSharesRequest(
        targets=[
            trading_pb.TargetPosition(symbol="AAPL", target_weight=0.5, price=190.0),
            trading_pb.TargetPosition(symbol="  ", target_weight=0.5, price=50.0),
        ],
        extra_cash=10_000.0,
    )
    with pytest.raises(grpc.RpcError) as caught:
        trading.AllocateShares(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == ["targets[1].symbol"]
    assert ".name" not in (caught.value.details() or "")
