"""What ``OptimizationService`` takes and returns: plain commands in, plain results out.

The application service of the optimization RPCs speaks these frozen dataclasses only; the adapter
(``command_side.optimization_adapter``, with ``command_side.mapping`` for the validation of requests) builds the
commands from ``stratopt.v1`` requests and the responses from the results. A portfolio's configuration is the
domain's ``command_side.configuration.OptimizationConfiguration`` (plain values; the adapter converts it from and to
the contract with ``command_side.configuration_messages``), versioned and stored by the stores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from command_side.configuration import OptimizationConfiguration
from command_side.optimization_store import EncodedRun
from command_side.result_records import ResultRecord
from services.engine import MethodSettings, OptimizationOutcome
from services.optimization import PortfolioProblem
from services.types import EstimationSettings, Moments, ReturnHistory
from services.workload import Workload

__all__ = [
    "BatchCommand",
    "BatchResult",
    "ConfigurationPage",
    "ConfigurationUpsert",
    "EncodedRunResult",
    "FrontierCommand",
    "FrontierPoint",
    "FrontierResult",
    "IngestResult",
    "Inputs",
    "InvalidItem",
    "MarketDataWindow",
    "OptimizeCommand",
    "RunResult",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class MarketDataWindow:
    """Which stored prices a run estimates from (the ``market_data`` hypertable)."""

    start: datetime | None = None
    """First instant of the window (UTC, inclusive); None = from the first stored price."""
    end: datetime | None = None
    """Last instant of the window (UTC, inclusive); None = to the last stored price."""
    lookback_periods: int = 0
    """Returns to keep at the end of the window (0 = all)."""
    market_symbol: str = ""
    """Market series for CAPM and betas ('' = none)."""


Inputs = ReturnHistory | Moments | MarketDataWindow
"""A run's inputs: a return history given inline, the caller's moments, or a window of stored prices."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OptimizeCommand:
    """One portfolio to optimize: the validated problem with its inputs, idempotency key and configuration."""

    portfolio_id: str
    """Portfolio identifier."""
    request_id: str
    """Idempotency key ('' = none: every call solves and is stored)."""
    request_hash: str
    """Fingerprint of the request behind the key: a key reused with another fingerprint is refused."""
    problem: PortfolioProblem
    """The problem, strategies in the order of every array."""
    settings: EstimationSettings
    """How moments are estimated from a return history."""
    method: MethodSettings
    """Which method runs, with its parameters."""
    inputs: Inputs
    """Where the moments come from."""
    configuration: OptimizationConfiguration
    """The configuration the run implies (everything but the input data), versioned by the store."""
    current_weights: dict[str, float] = field(default_factory=dict)
    """Current weights by symbol, as given (stored with the run)."""

    @property
    def inputs_kind(self) -> str:
        """``returns``, ``moments`` or ``market_data`` (stored with the run)."""
        if isinstance(self.inputs, MarketDataWindow):
            return "market_data"
        return "moments" if isinstance(self.inputs, Moments) else "returns"


@dataclass(frozen=True, slots=True, kw_only=True)
class SerializedOptimize:
    """An Optimize request still in its wire form, to be parsed, checked and solved in a solver worker.

    The event loop reads only its idempotency key; a worker turns ``payload`` into an :class:`OptimizeCommand`
    with ``parse`` and solves it, so the per-element work of a long inline return history (756 Timestamps and
    their checks: about a third of the event loop's time per call under load, docs/throughput.md) runs in
    the workers, in parallel, instead of on the one event loop.
    """

    payload: bytes
    """The request, serialised deterministically (its SHA-256 is ``request_hash``)."""
    parse: Callable[[bytes], OptimizeCommand]
    """Module-level function (picklable by name) that parses and checks ``payload``; raises InvalidInputError."""
    request_id: str
    """Idempotency key ('' = none), already checked (length, NUL)."""
    request_hash: str
    """Fingerprint of the request behind the key ('' without a key)."""
    workload: Workload | None = None
    """The request's traits, read without parsing it: a heavy one is solved in the heavy pool (None: never heavy)."""
    encode: Callable[[OptimizeCommand, OptimizationOutcome], EncodedRun] | None = None
    """Module-level function (picklable by name) that encodes a solved run for storage, with its answer in wire
    form (``EncodedRun``): a batch's worker encodes each run it solved, so the event loop only stores and forwards
    it. None: the worker answers the command and the outcome (``Optimize``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """The answer to an :class:`OptimizeCommand`: the stored result, or the replay of the first answer."""

    result: ResultRecord
    """The result as stored: weights, performance and metadata with its event and result ids, configuration
    version and timestamp."""
    replayed: bool = False
    """Whether this is the stored answer to an earlier call with the same idempotency key."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EncodedRunResult:
    """The answer to a batch item solved and encoded in a worker (``EncodedRun``), once stored."""

    response: bytes
    """The answer in the contract's wire form, without timestamp and configuration version
    (``EncodedRun.response``)."""
    timestamp_ns: int
    """The run's timestamp as stored (ns since the epoch, UTC)."""
    configuration_version: int
    """The configuration version of the run."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InvalidItem:
    """A batch item whose request did not validate: its portfolio (for ordering) and its error."""

    portfolio_id: str
    """Portfolio identifier of the request ('' when it had none)."""
    error: Exception
    """Why it was refused (an ``InvalidInputError`` naming the request's field)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchCommand:
    """Many portfolios to optimize, each on its own."""

    items: tuple[OptimizeCommand | InvalidItem | SerializedOptimize, ...]
    """The items in request order; an invalid one is answered with its error; one in wire form is parsed and
    checked by the worker that solves it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchResult:
    """One outcome per batch item, in request order."""

    outcomes: tuple[RunResult | EncodedRunResult | BaseException, ...]
    """The item's result, or the error that ended it."""

    @property
    def failed(self) -> int:
        """Items that ended with an error."""
        return sum(1 for outcome in self.outcomes if isinstance(outcome, BaseException))

    @property
    def succeeded(self) -> int:
        """Items with a result."""
        return len(self.outcomes) - self.failed


@dataclass(frozen=True, slots=True, kw_only=True)
class FrontierCommand:
    """Points of the efficient frontier of a validated problem (variance-based mean-variance or Black-Litterman)."""

    problem: PortfolioProblem
    """The problem; its objective is ignored (the frontier spans every objective)."""
    settings: EstimationSettings
    """How moments are estimated from a return history."""
    method: MethodSettings
    """``MEAN_VARIANCE`` or ``BLACK_LITTERMAN`` with the variance risk measure."""
    inputs: Inputs
    """Where the moments come from."""
    points: int
    """Number of points (2..200)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FrontierPoint:
    """One efficient portfolio."""

    expected_return: float
    """Annualised expected return (decimal)."""
    volatility: float
    """Annualised volatility (decimal)."""
    sharpe_ratio: float
    """Annualised Sharpe ratio."""
    weights: dict[str, float]
    """Weights (fractions) by symbol, in the problem's order."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FrontierResult:
    """The efficient frontier, lowest volatility first."""

    points: tuple[FrontierPoint, ...]
    """The points."""
    computation_time_ms: float
    """Wall time of estimation plus solves (milliseconds)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigurationUpsert:
    """The outcome of storing a configuration."""

    configuration: OptimizationConfiguration
    """The stored version (with ``version`` and ``created_at``)."""
    created: bool
    """Whether a new version was written (false: the content equals the current version's)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigurationPage:
    """A page of latest configurations ordered by portfolio id."""

    configurations: tuple[OptimizationConfiguration, ...]
    """The page."""
    next_page_token: str
    """Token of the next page ('' = this is the last)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class IngestResult:
    """What an ingestion stored."""

    rows_written: int
    """Distinct ``(symbol, timestamp)`` bars written, summed over the chunks."""
    symbols: tuple[str, ...]
    """Symbols seen, sorted."""
    first_timestamp: datetime | None
    """Earliest bar's instant (UTC); None when no bar was given."""
    last_timestamp: datetime | None
    """Latest bar's instant (UTC); None when no bar was given."""
