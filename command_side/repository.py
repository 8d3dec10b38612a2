"""The command side's write model over PostgreSQL + TimescaleDB (asyncpg).

One optimization run is one transaction: the configuration version, the result row, the
``portfolio_optimized`` event in the hypertable, the latest-per-portfolio read model and a NOTIFY to live
listeners commit together or not at all. Runs of the same portfolio are serialised inside the transaction by
an advisory lock, so configuration versions never race.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg
import numpy as np
from google.protobuf import json_format

from command_side.mapping import configuration_content, content_hash, datetime_to_timestamp
from services.errors import NotFoundError, PreconditionError, PreconditionViolation, UnavailableError
from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import types_pb2 as pb

NOTIFY_CHANNEL = "portfolio_optimized"

if TYPE_CHECKING:  # asyncpg's classes are generic only in its stubs
    Connection = asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]
else:
    Connection = asyncpg.Connection

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ConnectionError,
    TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.ConnectionFailureError,
)


@asynccontextmanager
async def database_errors() -> AsyncIterator[None]:
    """Turn lost or refused database connections into ``UnavailableError`` (gRPC UNAVAILABLE)."""
    try:
        yield
    except _CONNECTION_ERRORS as exc:
        raise UnavailableError(f"the database is unavailable: {type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class StoredResult:
    """A stored answer to an idempotent request."""

    request_hash: str
    response: bytes


@dataclass(frozen=True, slots=True)
class PriceWindow:
    """Stored prices of N symbols on the union of their timestamps."""

    timestamps: np.ndarray  # (T + 1,) datetime64[us]: the union of the strategies' price dates
    prices: np.ndarray  # (T + 1, N), NaN where a symbol has no price that date
    market_prices: np.ndarray | None  # (T + 1,) as of each date (last price at or before it), or None


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class WriteRepository:
    """Persistence of configurations, results, events and market data.

    Parameters
    ----------
    pool : asyncpg.Pool
        Connection pool to the migrated database.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def find_result(self, request_id: str) -> StoredResult | None:
        """The stored result of an earlier request with this idempotency key, if any."""
        async with database_errors(), self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT request_hash, response FROM optimization_results WHERE request_id = $1", request_id
            )
        return None if row is None else StoredResult(row["request_hash"], bytes(row["response"]))

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

        The calendar is the union of the strategies' price dates only; the market symbol (CAPM) is aligned to
        it as of each date (its last price at or before the date), so a market series on another calendar
        never removes strategy observations. A market symbol may also be one of the strategies.

        Raises
        ------
        PreconditionError
            When a symbol has fewer than 3 stored prices in the window, with a ``MISSING_MARKET_DATA``
            violation per symbol.
        """
        wanted = sorted(set(symbols) | ({market_symbol} if market_symbol else set()))
        query = ['SELECT symbol, "timestamp", price FROM market_data WHERE symbol = ANY($1::text[])']
        args: list[Any] = [wanted]
        if start is not None:
            args.append(start)
            query.append(f'AND "timestamp" >= ${len(args)}')
        if end is not None:
            args.append(end)
            query.append(f'AND "timestamp" <= ${len(args)}')
        query.append('ORDER BY "timestamp"')
        async with database_errors(), self._pool.acquire() as conn:
            rows = await conn.fetch(" ".join(query), *args)
        by_symbol: dict[str, tuple[list[int], list[float]]] = {s: ([], []) for s in wanted}
        for r in rows:
            stamps, values = by_symbol[r["symbol"]]
            stamps.append(round(r["timestamp"].timestamp() * 1e6))
            values.append(r["price"])
        strategy_set = set(symbols)
        calendar = np.unique(
            np.concatenate(
                [np.asarray(by_symbol[s][0], dtype=np.int64) for s in strategy_set] or [np.empty(0, np.int64)]
            )
        )
        if lookback_periods > 0:
            calendar = calendar[-(lookback_periods + 1) :]
        prices = np.full((len(calendar), len(symbols)), np.nan)
        for j, symbol in enumerate(symbols):
            stamps, values = by_symbol[symbol]
            positions = np.searchsorted(calendar, np.asarray(stamps, dtype=np.int64))
            inside = (positions < len(calendar)) & (calendar[np.minimum(positions, len(calendar) - 1)] == stamps)
            prices[positions[inside], j] = np.asarray(values)[inside]
        market = None
        short = [s for j, s in enumerate(symbols) if np.sum(~np.isnan(prices[:, j])) < 3]
        if market_symbol:
            stamps, values = by_symbol[market_symbol]
            # As-of alignment: the market's last price at or before each calendar date.
            index = np.searchsorted(np.asarray(stamps, dtype=np.int64), calendar, side="right") - 1
            market = np.where(index >= 0, np.asarray([*values, np.nan])[index], np.nan)
            if np.sum(~np.isnan(market)) < 3:
                short.append(market_symbol)
        if short:
            raise PreconditionError(
                f"not enough stored prices in the window for: {', '.join(short[:20])}"
                + (" ..." if len(short) > 20 else "")
                + " (at least 3 each; ingest market data first)",
                precondition_violations=tuple(
                    PreconditionViolation(
                        "MISSING_MARKET_DATA", symbol, f"fewer than 3 stored prices for '{symbol}' in the window"
                    )
                    for symbol in short
                ),
            )
        return PriceWindow(calendar.astype("datetime64[us]"), prices, market)

    async def persist_run(
        self,
        *,
        configuration: cmd_pb.OptimizationConfiguration,
        response: cmd_pb.OptimizeResponse,
        request_hash: str,
        run_inputs: dict[str, Any],
        inherit: tuple[str, ...] = ("enabled",),
    ) -> cmd_pb.OptimizeResponse:
        """Store one run atomically and return the response completed with its ids and version.

        ``inherit`` names configuration fields kept from the portfolio's current configuration version (see
        ``_upsert_configuration``).

        The response's metadata gets ``event_id``, ``result_id``, ``configuration_version`` and
        ``timestamp`` before it is serialised into the result row (for idempotent replays).

        Raises
        ------
        asyncpg.UniqueViolationError
            When a concurrent request with the same ``request_id`` committed first (the caller replays it).
        UnavailableError
            When the database cannot be reached.
        """
        meta = response.optimization_metadata
        event_id, result_id = uuid.uuid4(), uuid.uuid4()
        meta.event_id, meta.result_id = str(event_id), str(result_id)
        async with database_errors(), self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", configuration.portfolio_id)
            now = await conn.fetchval("SELECT clock_timestamp()")
            version = await self._upsert_configuration(conn, configuration, inherit)
            meta.configuration_version = version
            meta.timestamp.CopyFrom(datetime_to_timestamp(now))
            objective = pb.Objective.Name(configuration.objective)
            method = pb.OptimizationMethod.Name(configuration.method)
            weights = _json(dict(response.optimal_weights))
            metadata = _json(json_format.MessageToDict(meta))
            request_id = response.request_id or None
            await conn.execute(
                """INSERT INTO optimization_results (result_id, portfolio_id, configuration_version, request_id,
                       request_hash, event_id, created_at, objective, method, weights, expected_return,
                       volatility, sharpe_ratio, objective_value, solver, constraints_satisfied, response,
                       run_inputs)
                   VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10::jsonb,$11,$12,$13,$14,$15,$16,$17,$18::jsonb)""",
                result_id, configuration.portfolio_id, version, request_id, request_hash, event_id, now,
                objective, method, weights, response.expected_return, response.expected_volatility,
                response.sharpe_ratio, meta.objective_value, meta.solver, meta.constraints_satisfied,
                response.SerializeToString(), _json(run_inputs),
            )  # fmt: skip
            event_args = (
                event_id, now, configuration.portfolio_id, result_id, version, request_id, objective, method,
                weights, response.expected_return, response.expected_volatility, response.sharpe_ratio, metadata,
            )  # fmt: skip
            await conn.execute(
                """INSERT INTO portfolio_optimized (event_id, "timestamp", portfolio_id, result_id,
                       configuration_version, request_id, objective, method, weights, expected_return,
                       volatility, sharpe_ratio, metadata)
                   VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9::jsonb,$10,$11,$12,$13::jsonb)""",
                *event_args,
            )
            await conn.execute(
                """INSERT INTO latest_portfolio_optimizations (event_id, "timestamp", portfolio_id, result_id,
                       configuration_version, request_id, objective, method, weights, expected_return,
                       volatility, sharpe_ratio, metadata)
                   VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9::jsonb,$10,$11,$12,$13::jsonb)
                   ON CONFLICT (portfolio_id) DO UPDATE SET
                       event_id = EXCLUDED.event_id, "timestamp" = EXCLUDED."timestamp",
                       result_id = EXCLUDED.result_id, configuration_version = EXCLUDED.configuration_version,
                       request_id = EXCLUDED.request_id, objective = EXCLUDED.objective,
                       method = EXCLUDED.method, weights = EXCLUDED.weights,
                       expected_return = EXCLUDED.expected_return, volatility = EXCLUDED.volatility,
                       sharpe_ratio = EXCLUDED.sharpe_ratio, metadata = EXCLUDED.metadata
                   WHERE (latest_portfolio_optimizations."timestamp", latest_portfolio_optimizations.event_id)
                       <= (EXCLUDED."timestamp", EXCLUDED.event_id)""",
                *event_args,
            )
            await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, f"{configuration.portfolio_id} {event_id}")
        return response

    @staticmethod
    async def _upsert_configuration(
        conn: Connection, config: cmd_pb.OptimizationConfiguration, inherit: tuple[str, ...] = ()
    ) -> int:
        """Version of ``config`` for its portfolio: the current one if unchanged, else a new one.

        Fields named in ``inherit`` (``enabled``, ``lookback_periods``, ``market_symbol``) are taken from the
        current version when there is one: an Optimize call does not undo what an operator configured.
        """
        current = await conn.fetchrow(
            "SELECT version, content_hash, enabled, lookback_periods, market_symbol "
            "FROM optimization_configurations WHERE portfolio_id = $1 ORDER BY version DESC LIMIT 1",
            config.portfolio_id,
        )
        if current is not None and inherit:
            inherited = cmd_pb.OptimizationConfiguration()
            inherited.CopyFrom(config)
            for name in inherit:
                setattr(inherited, name, current[name])
            config = inherited
        content = configuration_content(config)
        digest = content_hash(content)
        if current is not None and current["content_hash"] == digest:
            return int(current["version"])
        version = 1 if current is None else int(current["version"]) + 1
        await conn.execute(
            """INSERT INTO optimization_configurations (portfolio_id, version, objective, method, strategies,
                   constraints, risk_parameters, lookback_periods, market_symbol, enabled, content_hash,
                   black_litterman)
               VALUES ($1,$2,$3,$4,$5::jsonb,$6::jsonb,$7::jsonb,$8,$9,$10,$11,$12::jsonb)""",
            config.portfolio_id, version, content["objective"], content["method"], _json(content["strategies"]),
            _json(content["constraints"]), _json(content["risk_parameters"]), config.lookback_periods,
            config.market_symbol, config.enabled, digest, _json(content["black_litterman"]),
        )  # fmt: skip
        return version

    async def upsert_configuration(
        self, config: cmd_pb.OptimizationConfiguration
    ) -> tuple[cmd_pb.OptimizationConfiguration, bool]:
        """Store ``config`` as a new version unless its content equals the current version's.

        Returns
        -------
        tuple of (OptimizationConfiguration, bool)
            The stored configuration with version and created_at, and whether a new version was written.
        """
        async with database_errors(), self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", config.portfolio_id)
            before = await conn.fetchval(
                "SELECT max(version) FROM optimization_configurations WHERE portfolio_id = $1",
                config.portfolio_id,
            )
            version = await self._upsert_configuration(conn, config)
            row = await conn.fetchrow(
                "SELECT * FROM optimization_configurations WHERE portfolio_id = $1 AND version = $2",
                config.portfolio_id,
                version,
            )
        assert row is not None  # written (or found) in this transaction
        return _configuration_from_row(row), before is None or version > before

    async def get_configuration(self, portfolio_id: str, version: int = 0) -> cmd_pb.OptimizationConfiguration:
        """One configuration version (0 = latest).

        Raises
        ------
        NotFoundError
            When the portfolio (or that version) has no configuration.
        """
        async with database_errors(), self._pool.acquire() as conn:
            if version:
                row = await conn.fetchrow(
                    "SELECT * FROM optimization_configurations WHERE portfolio_id = $1 AND version = $2",
                    portfolio_id,
                    version,
                )
            else:
                row = await conn.fetchrow(
                    "SELECT * FROM optimization_configurations WHERE portfolio_id = $1 ORDER BY version DESC LIMIT 1",
                    portfolio_id,
                )
        if row is None:
            what = f"version {version} of " if version else ""
            raise NotFoundError(f"no configuration {what}for portfolio '{portfolio_id}'")
        return _configuration_from_row(row)

    async def list_configurations(
        self, *, after_portfolio_id: str, limit: int
    ) -> list[cmd_pb.OptimizationConfiguration]:
        """Latest configuration of each portfolio with id > ``after_portfolio_id``, ordered by id."""
        async with database_errors(), self._pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT DISTINCT ON (portfolio_id) * FROM optimization_configurations
                   WHERE portfolio_id > $1 ORDER BY portfolio_id, version DESC LIMIT $2""",
                after_portfolio_id,
                limit,
            )
        return [_configuration_from_row(r) for r in rows]

    async def ingest_bars(self, bars: Iterable[tuple[str, datetime, float, float | None]]) -> int:
        """Upsert price bars ``(symbol, timestamp, price, volume)``; returns the rows written."""
        records = list(bars)
        if not records:
            return 0
        async with database_errors(), self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS market_data_stage (seq bigserial, symbol text, "
                '"timestamp" timestamptz, price double precision, volume double precision) ON COMMIT DELETE ROWS'
            )
            await conn.copy_records_to_table(
                "market_data_stage", records=records, columns=["symbol", "timestamp", "price", "volume"]
            )
            # A bar sent twice in one message: the later one wins (the same rule as across messages).
            result = await conn.execute(
                """INSERT INTO market_data (symbol, "timestamp", price, volume)
                   SELECT DISTINCT ON (symbol, "timestamp") symbol, "timestamp", price, volume
                   FROM market_data_stage ORDER BY symbol, "timestamp", seq DESC
                   ON CONFLICT (symbol, "timestamp") DO UPDATE SET price = EXCLUDED.price, volume = EXCLUDED.volume"""
            )
        return int(result.split()[-1])


def _configuration_from_row(row: asyncpg.Record) -> cmd_pb.OptimizationConfiguration:
    def load(value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    config = cmd_pb.OptimizationConfiguration(
        portfolio_id=row["portfolio_id"],
        version=row["version"],
        objective=pb.Objective.Value(row["objective"]),
        method=pb.OptimizationMethod.Value(row["method"]),
        lookback_periods=row["lookback_periods"],
        market_symbol=row["market_symbol"],
        enabled=row["enabled"],
    )
    for strategy in load(row["strategies"]):
        json_format.ParseDict(strategy, config.strategies.add())
    json_format.ParseDict(load(row["constraints"]), config.constraints)
    json_format.ParseDict(load(row["risk_parameters"]), config.risk_parameters)
    black_litterman = load(row["black_litterman"])
    if black_litterman:
        json_format.ParseDict(black_litterman, config.black_litterman)
    config.created_at.CopyFrom(datetime_to_timestamp(row["created_at"]))
    return config
