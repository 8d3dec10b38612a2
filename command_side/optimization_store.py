"""The optimization store: the port through which the command side reads and writes its write model.

:class:`OptimizationStore` is what ``command_side.application.OptimizationService`` needs of storage: stored
answers to idempotent requests, windows of stored prices, one run stored atomically, versioned configurations
and the ingestion of price bars. Two backends honour it:

* ``command_side.repository.PostgresOptimizationStore`` (asyncpg, PostgreSQL + TimescaleDB), for the server;
* :class:`InMemoryOptimizationStore` (this module), for unit tests of the application services and demos.

The rules both follow live here as plain functions, so the backends cannot drift apart: the price window on
the strategies' own calendar (:func:`price_window`), configuration versioning by content
(:func:`next_configuration_version`) and the stored form of a configuration (:func:`configuration_row`,
:func:`configuration_from_row`). Both raise the domain's persistence errors (``services.errors.IntegrityError``
for a ``request_id`` already used, ``OperationalError`` when the store cannot be reached), never a driver's.

Why one module: the port, its rules and its in-memory backend are read together (the backend is the port's
executable specification for the application's unit tests), and splitting them would scatter one contract.
"""

from __future__ import annotations

import json
import pickle
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import numpy as np

from command_side.configuration import OptimizationConfiguration, RecomputePolicy
from command_side.configuration_records import (
    CONTENT_COLUMNS,
    RECOMPUTE_COLUMN,
    configuration_columns,
    configuration_content,
    configuration_content_from_columns,
    content_hash_of,
    recompute_column,
    recompute_from_column,
)
from command_side.result_records import JsonObject, ResultRecord, encode_instant, run_inputs_json
from services.errors import (
    DeadlineExceededError,
    IntegrityError,
    NotFoundError,
    PreconditionError,
    PreconditionViolation,
)

MIN_PRICES = 3
"""Fewest stored prices of a symbol in a window (two returns) before a run may use it."""

Bar = tuple[str, datetime, float, float | None]
"""One price bar: ``(symbol, timestamp, price, volume)``."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Configuration = OptimizationConfiguration
"""A portfolio's configuration as the stores version and persist it: the domain's frozen dataclass
(``command_side.configuration``), stored in the schema of ``command_side.configuration_records``."""


@dataclass(frozen=True, slots=True)
class StoredResult:
    """A stored answer to an idempotent request."""

    request_hash: str
    """Fingerprint of the request that produced it (a reused key with another hash is an error)."""
    result: ResultRecord
    """The answer as first returned (``command_side.records.response_from_record`` rebuilds the response)."""


ConfigurationContent = tuple[dict[str, Any], str]
"""A configuration's versioned content (JSON-ready) and its sha256 (``content_hash_of``)."""


@dataclass(frozen=True, slots=True)
class PendingRun:
    """A solved run to store: the arguments of :meth:`OptimizationStore.persist_run` for one run of a bulk write."""

    configuration: Configuration
    """The run's configuration (a new version is written only when its content changed)."""
    result: ResultRecord
    """The answer (ids, configuration version and timestamp still unset)."""
    request_hash: str
    """Fingerprint of the request ('' without a key)."""
    run_inputs: Mapping[str, Any]
    """Kind of inputs and current weights."""
    inherit: tuple[str, ...] = ("enabled", "recompute")
    """Fields kept from the current configuration version (:func:`next_configuration_version`)."""
    content: ConfigurationContent | None = None
    """The configuration's content and hash when already computed (:func:`content_of`, in a worker)."""


@dataclass(frozen=True)
class EncodedRun:
    """A solved run already encoded for storage (by :func:`encode_run`, in the worker that solved it).

    What a store writes of the run, as text ready for its columns, so that the process that stores it (the event
    loop) only assembles strings: the configuration version and the timestamp, which the store gives the run,
    go between the parts of the two JSON documents (:meth:`metadata_json`, :meth:`result_json`). The configuration
    itself travels pickled and is read only when its version is new or an inherited field differs from the
    current version's. No ``slots``: such a dataclass pickles through Python code per field, this one as a dict.
    """

    portfolio_id: str
    """Portfolio identifier."""
    request_id: str
    """Idempotency key ('' = none)."""
    request_hash: str
    """Fingerprint of the request ('' without a key)."""
    event_id: str
    """Identifier of the ``portfolio_optimized`` event (UUID text)."""
    result_id: str
    """Identifier of the result (UUID text)."""
    objective: str
    """The configuration's stored objective name."""
    method: str
    """The configuration's stored method name."""
    content_hash: str
    """sha256 of the configuration's content (``content_hash_of``)."""
    inherited: dict[str, Any]
    """The configuration's ``enabled``, ``lookback_periods``, ``market_symbol`` and ``recompute``."""
    inherit: tuple[str, ...]
    """Fields kept from the current configuration version (:func:`next_configuration_version`)."""
    configuration: bytes
    """``pickle`` of ``(configuration, (content, hash))``, read only when needed (:meth:`decoded_configuration`)."""
    weights: str
    """JSON of the weights by symbol."""
    expected_return: float
    """Annualised expected return (decimal)."""
    volatility: float
    """Annualised volatility (decimal)."""
    sharpe_ratio: float
    """Annualised Sharpe ratio."""
    objective_value: float
    """Objective at the optimum."""
    solver: str
    """Solver that answered."""
    constraints_satisfied: bool
    """Whether the weights satisfy every constraint."""
    run_inputs: str
    """JSON of ``optimization_results.run_inputs`` (``run_inputs_json``)."""
    metadata_parts: tuple[str, str, str]
    """The event metadata's JSON around its timestamp and configuration version (:meth:`metadata_json`)."""
    result_parts: tuple[str, str]
    """The result's JSON around its metadata (:meth:`result_json`)."""
    response: bytes = b""
    """The answer in the contract's wire form without timestamp and configuration version (the adapter's)."""
    labels: tuple[str, str, str, float] = ("", "", "", 0.0)
    """Method, objective, solve path and solver seconds (the solver-time metric)."""

    def metadata_json(self, timestamp_ns: int, configuration_version: int) -> str:
        """The stored event metadata (``RunMetadataRecord.to_json``) with the run's timestamp and version."""
        head, middle, tail = self.metadata_parts
        return f'{head}"{encode_instant(timestamp_ns)}"{middle}{configuration_version}{tail}'

    def result_json(self, metadata_json: str) -> str:
        """The stored result (``ResultRecord.to_json``) around its metadata's JSON (:meth:`metadata_json`)."""
        head, tail = self.result_parts
        return f"{head}{metadata_json}{tail}"

    def decoded_configuration(self) -> tuple[Configuration, ConfigurationContent]:
        """The run's configuration with its content and hash."""
        configuration, content = pickle.loads(self.configuration)
        return configuration, content

    def version_on(self, head: ConfigurationHead | None) -> ConfigurationVersion | None:
        """The run's configuration version when ``head`` is its portfolio's current one; None: the head's own.

        None when the run leaves the head as it is (same content, inherited fields equal: the common case of a
        portfolio run again), without reading the pickled configuration; else :func:`next_configuration_version`.
        """
        if (
            head is not None
            and head.content_hash == self.content_hash
            and all(getattr(head, name) == self.inherited[name] for name in self.inherit)
        ):
            return None
        configuration, content = self.decoded_configuration()
        return next_configuration_version(configuration, head, self.inherit, content)


@dataclass(frozen=True, slots=True)
class RunStamp:
    """What a store gave an :class:`EncodedRun` it stored."""

    timestamp_ns: int
    """The run's timestamp (ns since the epoch, UTC; whole microseconds)."""
    configuration_version: int
    """The configuration version of the run."""


def _json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def encode_run(
    *,
    configuration: Configuration,
    content: ConfigurationContent,
    result: ResultRecord,
    request_hash: str,
    run_inputs: Mapping[str, Any],
    inherit: tuple[str, ...],
    event_id: uuid.UUID,
    result_id: uuid.UUID,
    response: bytes = b"",
    labels: tuple[str, str, str, float] = ("", "", "", 0.0),
) -> EncodedRun:
    """A solved run encoded for storage (:class:`EncodedRun`).

    Parameters
    ----------
    configuration : Configuration
        The run's configuration.
    content : (dict, str)
        Its content and hash (:func:`content_of`).
    result : ResultRecord
        The answer (``command_side.application.run_record``); its ids, version and timestamp are ignored.
    request_hash, run_inputs, inherit
        As :class:`PendingRun`.
    event_id, result_id : uuid.UUID
        The ids the run is stored with.
    response : bytes, optional
        The answer in wire form, without timestamp and configuration version (carried, not read).
    labels : tuple, optional
        Method, objective, solve path and seconds for the solver-time metric (carried, not read).
    """
    stored = result.to_json()
    metadata = stored["metadata"]
    metadata["event_id"], metadata["result_id"] = str(event_id), str(result_id)
    keys = list(metadata)
    assert keys[1:5] == ["event_id", "result_id", "timestamp", "configuration_version"]  # the schema's order
    before = {key: metadata[key] for key in keys[:3]}
    after = {key: metadata[key] for key in keys[5:]}
    keys = list(stored)
    cut = keys.index("metadata")
    assert 0 < cut < len(keys) - 1  # keys on both sides of the metadata
    result_head = {key: stored[key] for key in keys[:cut]}
    result_tail = {key: stored[key] for key in keys[cut + 1 :]}
    return EncodedRun(
        portfolio_id=configuration.portfolio_id,
        request_id=result.request_id,
        request_hash=request_hash,
        event_id=str(event_id),
        result_id=str(result_id),
        objective=configuration.objective,
        method=configuration.method,
        content_hash=content[1],
        inherited={
            "enabled": configuration.enabled,
            "lookback_periods": configuration.lookback_periods,
            "market_symbol": configuration.market_symbol,
            "recompute": configuration.recompute,
        },
        inherit=inherit,
        configuration=pickle.dumps((configuration, content), protocol=pickle.HIGHEST_PROTOCOL),
        weights=_json_text(stored["weights"]),
        expected_return=result.expected_return,
        volatility=result.volatility,
        sharpe_ratio=result.sharpe_ratio,
        objective_value=result.metadata.objective_value,
        solver=result.metadata.solver,
        constraints_satisfied=result.metadata.constraints_satisfied,
        run_inputs=_json_text(run_inputs_json(run_inputs)),
        metadata_parts=(
            _json_text(before)[:-1] + ',"timestamp":',
            ',"configuration_version":',
            "," + _json_text(after)[1:],
        ),
        result_parts=(_json_text(result_head)[:-1] + ',"metadata":', "," + _json_text(result_tail)[1:]),
        response=response,
        labels=labels,
    )


@dataclass(frozen=True, slots=True)
class PriceWindow:
    """Stored prices of N symbols on the union of their timestamps."""

    timestamps: np.ndarray
    """(T + 1,) datetime64[us]: the union of the strategies' price dates."""
    prices: np.ndarray
    """(T + 1, N), NaN where a symbol has no price that date."""
    market_prices: np.ndarray | None
    """(T + 1,) as of each date (the market's last price at or before it), or None without a market symbol."""


@dataclass(frozen=True, slots=True)
class ConfigurationHead:
    """What versioning reads of a portfolio's current configuration version."""

    version: int
    """The current version number (1, 2, ...)."""
    content_hash: str
    """sha256 of its content (``command_side.configuration_records.content_hash``)."""
    enabled: bool
    """Whether runs of it are allowed."""
    lookback_periods: int
    """Returns of the stored-price window (0 = all)."""
    market_symbol: str
    """Market series of CAPM and betas ('' = none)."""
    recompute: RecomputePolicy | None = None
    """When the server re-runs it by itself (None = never)."""


@dataclass(frozen=True, slots=True)
class ConfigurationVersion:
    """The version a configuration gets when stored: the current one when its content is unchanged."""

    configuration: Configuration
    """The configuration to store, with the inherited fields taken from the current version."""
    content: dict[str, Any]
    """Its versioned content (JSON-ready)."""
    content_hash: str
    """sha256 of ``content``."""
    version: int
    """Its version number."""
    new: bool
    """Whether this version has to be written (the content differs from the current version's)."""


def next_configuration_version(
    config: Configuration,
    current: ConfigurationHead | None,
    inherit: Sequence[str] = (),
    content: ConfigurationContent | None = None,
) -> ConfigurationVersion:
    """Version of ``config`` for its portfolio: the current one if its content is unchanged, else current + 1.

    Parameters
    ----------
    config : Configuration
        The configuration of a run or an upsert.
    current : ConfigurationHead or None
        The portfolio's current version; None when it has none.
    inherit : sequence of str
        Fields (``enabled``, ``lookback_periods``, ``market_symbol``, ``recompute``) taken from the current
        version when there is one: an Optimize call does not undo what an operator configured.
    content : (dict, str), optional
        ``config``'s content and its hash, already computed (by a worker, off the event loop); used unless an
        inherited field changes ``config``.

    Returns
    -------
    ConfigurationVersion
        The configuration to store, its content and hash, its version and whether it is new.
    """
    if current is not None and inherit:
        inherited = {name: getattr(current, name) for name in inherit}
        if any(getattr(config, name) != value for name, value in inherited.items()):
            config, content = replace(config, **inherited), None
    document, digest = content_of(config) if content is None else content
    if current is not None and current.content_hash == digest:
        return ConfigurationVersion(config, document, digest, current.version, new=False)
    version = 1 if current is None else current.version + 1
    return ConfigurationVersion(config, document, digest, version, new=True)


def content_of(config: Configuration) -> ConfigurationContent:
    """``config``'s versioned content and its hash (what :func:`next_configuration_version` compares)."""
    content = configuration_content(config)
    return content, content_hash_of(content)


def configuration_row(version: ConfigurationVersion) -> dict[str, Any]:
    """The stored columns of a configuration version (its content in the stored schema, no version or time).

    ``objective`` and ``method`` are the stored enum names (text columns); ``strategies``, ``constraints``,
    ``risk_parameters``, ``black_litterman`` and ``recompute`` are JSON objects of
    ``command_side.configuration_records``.
    """
    config = version.configuration
    return {
        "objective": version.content["objective"],
        "method": version.content["method"],
        "lookback_periods": config.lookback_periods,
        "market_symbol": config.market_symbol,
        "enabled": config.enabled,
        "content_hash": version.content_hash,
        **configuration_columns(config),
        RECOMPUTE_COLUMN: recompute_column(config),
    }


def configuration_from_row(
    *, portfolio_id: str, version: int, row: Mapping[str, Any], created_at: datetime
) -> Configuration:
    """The stored configuration as returned by a store, from its row (JSON columns as text or decoded)."""

    def load(value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    if created_at.tzinfo is None:
        created_at = created_at.replace(tzinfo=UTC)
    return Configuration(
        portfolio_id=portfolio_id,
        version=version,
        objective=row["objective"],
        method=row["method"],
        lookback_periods=row["lookback_periods"],
        market_symbol=row["market_symbol"],
        enabled=row["enabled"],
        created_at=created_at,
        recompute=recompute_from_column(load(row.get(RECOMPUTE_COLUMN))),
        **configuration_content_from_columns({name: load(row[name]) for name in CONTENT_COLUMNS}),
    )


def configuration_not_found(portfolio_id: str, version: int = 0) -> NotFoundError:
    """The error for a portfolio without a configuration (``version`` 0) or without that version."""
    which = f" version {version}" if version else ""
    return NotFoundError(f"no configuration{which} for portfolio '{portfolio_id}'")


def epoch_microseconds(value: datetime) -> int:
    """Microseconds since 1970-01-01 UTC of a datetime (naive values are taken as UTC), exactly."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // timedelta(microseconds=1)


def price_window(
    symbols: Sequence[str],
    series: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    *,
    lookback_periods: int,
    market_symbol: str = "",
) -> PriceWindow:
    """The price window of ``symbols`` from their stored series, on the strategies' own calendar.

    The calendar is the union of the strategies' price dates only (its last ``lookback_periods + 1`` dates when
    ``lookback_periods`` > 0); the market symbol (CAPM) is aligned to it as of each date (its last price at or
    before the date), so a market series on another calendar never removes strategy observations. A market
    symbol may also be one of the strategies.

    Parameters
    ----------
    symbols : sequence of str
        The strategies, in the order of the columns of ``prices``.
    series : mapping of str to (timestamps, prices)
        Each stored symbol's prices in the window, timestamps in microseconds since the epoch, ascending; a
        symbol without prices may be absent.
    lookback_periods : int
        Returns to keep (0 = all).
    market_symbol : str, optional
        Market series to align ('' = none).

    Raises
    ------
    PreconditionError
        When a symbol has fewer than ``MIN_PRICES`` prices in the window, with a ``MISSING_MARKET_DATA``
        violation per symbol.
    """

    def of(symbol: str) -> tuple[np.ndarray, np.ndarray]:
        stamps, values = series.get(symbol, ((), ()))
        return np.asarray(stamps, dtype=np.int64), np.asarray(values, dtype=np.float64)

    calendar = np.unique(np.concatenate([of(s)[0] for s in set(symbols)] or [np.empty(0, np.int64)]))
    if lookback_periods > 0:
        calendar = calendar[-(lookback_periods + 1) :]
    prices = np.full((len(calendar), len(symbols)), np.nan)
    for j, symbol in enumerate(symbols):
        stamps, values = of(symbol)
        positions = np.searchsorted(calendar, stamps)
        inside = (positions < len(calendar)) & (calendar[np.minimum(positions, len(calendar) - 1)] == stamps)
        prices[positions[inside], j] = values[inside]
    market = None
    short = [s for j, s in enumerate(symbols) if np.sum(~np.isnan(prices[:, j])) < MIN_PRICES]
    if market_symbol:
        stamps, values = of(market_symbol)
        # As-of alignment: the market's last price at or before each calendar date.
        index = np.searchsorted(stamps, calendar, side="right") - 1
        market = np.where(index >= 0, np.append(values, np.nan)[index], np.nan)
        if np.sum(~np.isnan(market)) < MIN_PRICES:
            short.append(market_symbol)
    if short:
        raise PreconditionError(
            f"not enough stored prices in the window for: {', '.join(short[:20])}"
            + (" ..." if len(short) > 20 else "")
            + f" (at least {MIN_PRICES} each; ingest market data first)",
            precondition_violations=tuple(
                PreconditionViolation(
                    "MISSING_MARKET_DATA", symbol, f"fewer than {MIN_PRICES} stored prices for '{symbol}' in the window"
                )
                for symbol in short
            ),
        )
    return PriceWindow(calendar.astype("datetime64[us]"), prices, market)


def completed(
    result: ResultRecord,
    *,
    event_id: uuid.UUID,
    result_id: uuid.UUID,
    configuration_version: int,
    timestamp: datetime,
) -> ResultRecord:
    """``result`` with the ids, configuration version and timestamp (to the microsecond) a store gave its run."""
    metadata = replace(
        result.metadata,
        event_id=str(event_id),
        result_id=str(result_id),
        configuration_version=configuration_version,
        timestamp=epoch_microseconds(timestamp) * 1000,
    )
    return replace(result, metadata=metadata)


def check_commit_by(commit_by: float | None) -> None:
    """Refuse to commit a write past ``commit_by`` (``time.monotonic()`` seconds; None = no limit).

    Called inside the storing transaction right before its commit: what is written for a call whose deadline is
    (nearly) over is rolled back, so a caller that sees DEADLINE_EXCEEDED finds nothing stored.

    Raises
    ------
    DeadlineExceededError
        ``commit_by`` has passed.
    """
    if commit_by is not None and time.monotonic() > commit_by:
        raise DeadlineExceededError("the call's deadline passed before its result was stored")


class OptimizationStore(Protocol):
    """The command side's write model: results, configurations, events and market data.

    Every method may raise ``services.errors.OperationalError`` (an ``UnavailableError``: retry the call) when
    the store cannot be reached.
    """

    async def find_result(self, request_id: str) -> StoredResult | None:
        """The stored result of an earlier request with this idempotency key, if any."""
        ...

    async def find_results(self, request_ids: Sequence[str]) -> dict[str, StoredResult]:
        """The stored results of the given idempotency keys that have one (one read for a batch's chunk)."""
        ...

    async def load_prices(
        self,
        symbols: Sequence[str],
        *,
        start: datetime | None,
        end: datetime | None,
        lookback_periods: int,
        market_symbol: str = "",
    ) -> PriceWindow:
        """Prices of ``symbols`` in ``[start, end]`` on their own calendar, the last ``lookback_periods`` returns.

        See :func:`price_window` for the calendar and the market's as-of alignment.

        Raises
        ------
        PreconditionError
            When a symbol has fewer than 3 stored prices in the window (``MISSING_MARKET_DATA`` per symbol).
        """
        ...

    async def persist_run(
        self,
        *,
        configuration: Configuration,
        result: ResultRecord,
        request_hash: str,
        run_inputs: Mapping[str, Any],
        inherit: tuple[str, ...] = ("enabled", "recompute"),
        commit_by: float | None = None,
    ) -> ResultRecord:
        """Store one run atomically and return its result completed with its ids, version and timestamp.

        All or nothing: the configuration version (a new one only when its content changed; ``inherit`` names
        fields kept from the current version, see :func:`next_configuration_version`), the result (its
        record, for replays), the ``portfolio_optimized`` event and the latest read model. What is stored and
        returned is ``result`` with ``event_id``, ``result_id``, ``configuration_version`` and ``timestamp`` of
        its metadata set (:func:`completed`). ``commit_by`` (``time.monotonic()`` seconds, None = no limit): when
        the commit would start after it, the run is rolled back instead (:func:`check_commit_by`).

        Raises
        ------
        IntegrityError
            When a result with the record's ``request_id`` is already stored (a concurrent request with the
            same key committed first: the caller replays it); nothing of this run is stored.
        DeadlineExceededError
            ``commit_by`` passed before the commit; nothing of this run is stored.
        """
        ...

    async def persist_runs(
        self, runs: Sequence[PendingRun | EncodedRun], *, commit_by: float | None = None
    ) -> list[ResultRecord | RunStamp]:
        """Store many runs in one transaction, in the given order; each as :meth:`persist_run` stores one.

        All or nothing for the whole sequence: each run's configuration version, result, event and read-model row
        (the read model ends at each portfolio's last run), and the notifications, commit together. Runs of one
        portfolio get increasing timestamps in the given order (their history order); each portfolio's lock is
        held as for one run.

        Returns
        -------
        list of ResultRecord or RunStamp
            In the given order: of a :class:`PendingRun`, its stored result, completed as :meth:`persist_run`
            completes one; of an :class:`EncodedRun`, the timestamp and configuration version it was stored with
            (its ids are its own).

        Raises
        ------
        IntegrityError
            A run's ``request_id`` is already stored or given twice; nothing is stored (store them one by one to
            learn which).
        DeadlineExceededError
            ``commit_by`` passed before the commit; nothing is stored.
        PersistenceError
            The database refused a row; nothing is stored.
        """
        ...

    async def upsert_configuration(self, config: Configuration) -> tuple[Configuration, bool]:
        """Store ``config`` as a new version unless its content equals the current version's.

        Returns
        -------
        tuple of (OptimizationConfiguration, bool)
            The stored configuration with version and created_at, and whether a new version was written.
        """
        ...

    async def get_configuration(self, portfolio_id: str, version: int = 0) -> Configuration:
        """One configuration version (0 = latest).

        Raises
        ------
        NotFoundError
            When the portfolio (or that version) has no configuration.
        """
        ...

    async def list_configurations(self, *, after_portfolio_id: str, limit: int) -> list[Configuration]:
        """Latest configuration of each portfolio with id > ``after_portfolio_id`` (code-point order), by id."""
        ...

    async def ingest_bars(self, bars: Iterable[Bar], *, commit_by: float | None = None) -> int:
        """Upsert price bars ``(symbol, timestamp, price, volume)`` in one transaction; returns the rows written.

        A bar of a stored ``(symbol, timestamp)`` replaces it; of a bar given twice, the later one wins. Past
        ``commit_by`` (``time.monotonic()`` seconds) the transaction is rolled back (``DeadlineExceededError``).
        """
        ...


@dataclass(frozen=True, slots=True)
class RecordedRun:
    """One run held by :class:`InMemoryOptimizationStore`: its result, event and read-model row in one."""

    result_id: uuid.UUID
    """Identifier of the result."""
    event_id: uuid.UUID
    """Identifier of the ``portfolio_optimized`` event."""
    timestamp: datetime
    """When it was stored (the store's clock)."""
    portfolio_id: str
    """Portfolio identifier."""
    configuration_version: int
    """Configuration version the run used."""
    request_id: str | None
    """Idempotency key; None when the caller gave none."""
    request_hash: str
    """Fingerprint of the request."""
    result: JsonObject
    """The completed answer as stored: ``ResultRecord.to_json()`` (see ``docs/storage_schema.md``)."""
    run_inputs: dict[str, Any]
    """Kind of inputs and current weights, with ``schema_version`` (as stored in jsonb)."""


class InMemoryOptimizationStore(OptimizationStore):
    """:class:`OptimizationStore` in process memory, with the semantics of the PostgreSQL store.

    Each method changes the store without yielding to the event loop, so a run is stored all or nothing and
    concurrent calls see each other's writes whole (as PostgreSQL's transactions and advisory lock make them).

    Parameters
    ----------
    clock : callable, optional
        Returns the current time (timezone-aware); default the system clock in UTC.
    """

    def __init__(self, clock: Callable[[], datetime] | None = None) -> None:
        self._clock = clock or (lambda: datetime.now(UTC))
        self._configurations: dict[str, list[Configuration]] = {}
        self._heads: dict[str, list[ConfigurationHead]] = {}
        self._runs: list[RecordedRun] = []
        self._results_by_request: dict[str, RecordedRun] = {}
        self._bars: dict[str, dict[int, tuple[float, float | None]]] = {}
        self._last_stamp: datetime | None = None

    def runs(self, portfolio_id: str | None = None) -> tuple[RecordedRun, ...]:
        """The stored runs (of one portfolio, or all), oldest first."""
        return tuple(r for r in self._runs if portfolio_id is None or r.portfolio_id == portfolio_id)

    async def find_result(self, request_id: str) -> StoredResult | None:
        """The stored result of an earlier request with this idempotency key, if any."""
        run = self._results_by_request.get(request_id)
        return None if run is None else StoredResult(run.request_hash, ResultRecord.from_json(run.result))

    async def find_results(self, request_ids: Sequence[str]) -> dict[str, StoredResult]:
        """The stored results of the keys that have one; see :meth:`OptimizationStore.find_results`."""
        found = {}
        for request_id in request_ids:
            stored = await self.find_result(request_id)
            if stored is not None:
                found[request_id] = stored
        return found

    async def load_prices(
        self,
        symbols: Sequence[str],
        *,
        start: datetime | None,
        end: datetime | None,
        lookback_periods: int,
        market_symbol: str = "",
    ) -> PriceWindow:
        """Prices of ``symbols`` in ``[start, end]``; see :meth:`OptimizationStore.load_prices`."""
        low = None if start is None else epoch_microseconds(start)
        high = None if end is None else epoch_microseconds(end)
        series: dict[str, tuple[list[int], list[float]]] = {}
        for symbol in {*symbols, market_symbol} - {""}:
            stored = self._bars.get(symbol, {})
            stamps = sorted(t for t in stored if (low is None or t >= low) and (high is None or t <= high))
            series[symbol] = (stamps, [stored[t][0] for t in stamps])
        return price_window(symbols, series, lookback_periods=lookback_periods, market_symbol=market_symbol)

    def _head(self, portfolio_id: str) -> ConfigurationHead | None:
        heads = self._heads.get(portfolio_id)
        return heads[-1] if heads else None

    def _stage(self, version: ConfigurationVersion, now: datetime) -> Configuration:
        """The stored form of a configuration version (as the PostgreSQL store reads it back)."""
        row = json.loads(json.dumps(configuration_row(version), allow_nan=False))
        return configuration_from_row(
            portfolio_id=version.configuration.portfolio_id, version=version.version, row=row, created_at=now
        )

    def _commit(self, version: ConfigurationVersion, stored: Configuration) -> None:
        config = version.configuration
        self._configurations.setdefault(config.portfolio_id, []).append(stored)
        self._heads.setdefault(config.portfolio_id, []).append(
            ConfigurationHead(
                version=version.version,
                content_hash=version.content_hash,
                enabled=config.enabled,
                lookback_periods=config.lookback_periods,
                market_symbol=config.market_symbol,
                recompute=config.recompute,
            )
        )

    async def persist_run(
        self,
        *,
        configuration: Configuration,
        result: ResultRecord,
        request_hash: str,
        run_inputs: Mapping[str, Any],
        inherit: tuple[str, ...] = ("enabled", "recompute"),
        commit_by: float | None = None,
    ) -> ResultRecord:
        """Store one run atomically; see :meth:`OptimizationStore.persist_run`."""
        event_id, result_id = uuid.uuid4(), uuid.uuid4()
        now = self._clock()
        if self._last_stamp is not None and now <= self._last_stamp:  # runs in store order, each its own instant
            now = self._last_stamp + timedelta(microseconds=1)
        version = next_configuration_version(configuration, self._head(configuration.portfolio_id), inherit)
        stored = self._stage(version, now) if version.new else None
        request_id = result.request_id or None
        if request_id is not None and request_id in self._results_by_request:
            raise IntegrityError("a stored row already has this key (optimization_results_request_id_key)")
        result = completed(
            result, event_id=event_id, result_id=result_id, configuration_version=version.version, timestamp=now
        )
        run = RecordedRun(
            result_id=result_id,
            event_id=event_id,
            timestamp=now,
            portfolio_id=configuration.portfolio_id,
            configuration_version=version.version,
            request_id=request_id,
            request_hash=request_hash,
            result=json.loads(json.dumps(result.to_json())),
            run_inputs=json.loads(json.dumps(run_inputs_json(run_inputs))),
        )
        check_commit_by(commit_by)
        # Nothing above changed the store: from here on every write happens, with no await in between.
        if stored is not None:
            self._commit(version, stored)
        self._last_stamp = now
        self._runs.append(run)
        if request_id is not None:
            self._results_by_request[request_id] = run
        return result

    async def persist_runs(
        self, runs: Sequence[PendingRun | EncodedRun], *, commit_by: float | None = None
    ) -> list[ResultRecord | RunStamp]:
        """Store many runs all or nothing; see :meth:`OptimizationStore.persist_runs`."""
        check_commit_by(commit_by)
        keys = [run.request_id if isinstance(run, EncodedRun) else run.result.request_id for run in runs]
        keys = [key for key in keys if key]
        if len(set(keys)) < len(keys) or any(key in self._results_by_request for key in keys):
            raise IntegrityError("a stored row already has this key (optimization_results_request_id_key)")
        # No await below yields (persist_run never awaits): the runs are stored together.
        out: list[ResultRecord | RunStamp] = []
        for run in runs:
            if isinstance(run, EncodedRun):
                out.append(self._store_encoded(run))
                continue
            out.append(
                await self.persist_run(
                    configuration=run.configuration,
                    result=run.result,
                    request_hash=run.request_hash,
                    run_inputs=run.run_inputs,
                    inherit=run.inherit,
                )
            )
        return out

    def _store_encoded(self, run: EncodedRun) -> RunStamp:
        """Store one encoded run (its key already checked), as :meth:`persist_run` stores one."""
        now = self._clock()
        if self._last_stamp is not None and now <= self._last_stamp:
            now = self._last_stamp + timedelta(microseconds=1)
        head = self._head(run.portfolio_id)
        version = run.version_on(head)
        if version is None:
            assert head is not None  # version_on reads an unchanged head only
            number = head.version
        else:
            number = version.version
            if version.new:
                self._commit(version, self._stage(version, now))
        stamp_ns = epoch_microseconds(now) * 1000
        recorded = RecordedRun(
            result_id=uuid.UUID(run.result_id),
            event_id=uuid.UUID(run.event_id),
            timestamp=now,
            portfolio_id=run.portfolio_id,
            configuration_version=number,
            request_id=run.request_id or None,
            request_hash=run.request_hash,
            result=json.loads(run.result_json(run.metadata_json(stamp_ns, number))),
            run_inputs=json.loads(run.run_inputs),
        )
        self._last_stamp = now
        self._runs.append(recorded)
        if run.request_id:
            self._results_by_request[run.request_id] = recorded
        return RunStamp(stamp_ns, number)

    async def upsert_configuration(self, config: Configuration) -> tuple[Configuration, bool]:
        """Store ``config`` unless unchanged; see :meth:`OptimizationStore.upsert_configuration`."""
        version = next_configuration_version(config, self._head(config.portfolio_id))
        if not version.new:
            return self._version(config.portfolio_id, version.version), False
        stored = self._stage(version, self._clock())
        self._commit(version, stored)
        return stored, True

    def _version(self, portfolio_id: str, version: int) -> Configuration:
        for config in self._configurations.get(portfolio_id, ()):
            if config.version == version:
                return config
        raise configuration_not_found(portfolio_id, version)

    async def get_configuration(self, portfolio_id: str, version: int = 0) -> Configuration:
        """One configuration version (0 = latest); ``NotFoundError`` when absent."""
        if not version:
            versions = self._configurations.get(portfolio_id)
            if not versions:
                raise configuration_not_found(portfolio_id)
            return versions[-1]
        return self._version(portfolio_id, version)

    async def list_configurations(self, *, after_portfolio_id: str, limit: int) -> list[Configuration]:
        """Latest configuration of each portfolio with id > ``after_portfolio_id``, ordered by id."""
        ids = sorted(p for p, versions in self._configurations.items() if versions and p > after_portfolio_id)
        return [self._configurations[p][-1] for p in ids[:limit]]

    async def ingest_bars(self, bars: Iterable[Bar], *, commit_by: float | None = None) -> int:
        """Upsert price bars; the rows written (distinct ``(symbol, timestamp)`` of the message)."""
        check_commit_by(commit_by)
        latest: dict[tuple[str, int], tuple[float, float | None]] = {}
        for symbol, when, price, volume in bars:
            latest[symbol, epoch_microseconds(when)] = (float(price), None if volume is None else float(volume))
        for (symbol, stamp), bar in latest.items():
            self._bars.setdefault(symbol, {})[stamp] = bar
        return len(latest)
