"""Retention: drop whole chunks of the event and market-data hypertables older than a configured age.

The TimescaleDB build stratopt runs on (Apache-2 edition) has no ``add_retention_policy``, so the server
schedules ``drop_chunks`` itself: every ``STRATOPT_RETENTION_INTERVAL_S`` seconds (default 3600) it drops, for
each hypertable with a retention, the chunks whose whole time range is older than now minus that many days.
Retention is off by default, per table:

- ``STRATOPT_RETENTION_EVENTS_DAYS`` — ``portfolio_optimized`` (the optimization events);
- ``STRATOPT_RETENTION_REBALANCE_EVENTS_DAYS`` — ``rebalance_events`` (the approval audit trail);
- ``STRATOPT_RETENTION_MARKET_DATA_DAYS`` — ``market_data`` (stored prices);
- ``STRATOPT_RETENTION_SIGNALS_DAYS`` — ``signals`` (rotation model scores);
- ``STRATOPT_RETENTION_QUOTES_DAYS`` — ``quotes`` (bid and ask quotes, the fastest-growing table);
- ``STRATOPT_RETENTION_ROTATION_DECISIONS_DAYS`` — ``rotation_decided`` (the rotation decision events);
- ``STRATOPT_RETENTION_EXECUTION_EVENTS_DAYS`` — ``execution_events`` (fills and order events);
- ``STRATOPT_RETENTION_KILL_SWITCH_EVENTS_DAYS`` — ``kill_switch_events`` (the kill-switch audit trail);
- ``STRATOPT_RETENTION_BACKTESTS_DAYS`` — ``backtests`` and ``backtest_points`` (by the backtests' creation time).

The first three are also options of ``stratopt serve`` and ``stratopt retention``; the others are read from the
environment. Unset or 0 leaves a table alone.

Dropping chunks removes rows without deleting them one by one (no bloat); rows in the newest chunk survive
until the whole chunk is old enough, so a table keeps between N days and N days plus one chunk interval (7,
30 and 365 days; 7 for signals and rotation decisions, 1 for quotes, 30 for execution events and
backtests, 365 for kill-switch events).

Exactly one replica runs a round at a time: each round is one transaction that first takes
``pg_try_advisory_xact_lock(RETENTION_LOCK_KEY)``; a replica that does not get it skips the round (a later
round runs). The key, ``0x73747261745f7274`` (the bytes of ``"strat_rt"``, 8319104500891923060), lies outside
the 32-bit range of the ``hashtext`` keys the write model's advisory locks use, so it never collides with them.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncpg
from prometheus_client import Counter

if TYPE_CHECKING:
    Connection = asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]
else:
    Connection = asyncpg.Connection

log = logging.getLogger(__name__)

RETENTION_LOCK_KEY = int.from_bytes(b"strat_rt", "big")
"""Advisory lock key (bigint) held by the transaction of one retention round."""

EVENTS_DAYS_ENV = "STRATOPT_RETENTION_EVENTS_DAYS"
REBALANCE_EVENTS_DAYS_ENV = "STRATOPT_RETENTION_REBALANCE_EVENTS_DAYS"
MARKET_DATA_DAYS_ENV = "STRATOPT_RETENTION_MARKET_DATA_DAYS"
INTERVAL_ENV = "STRATOPT_RETENTION_INTERVAL_S"
DEFAULT_INTERVAL_S = 3600.0

TABLE_ENVS = {
    "portfolio_optimized": EVENTS_DAYS_ENV,
    "rebalance_events": REBALANCE_EVENTS_DAYS_ENV,
    "market_data": MARKET_DATA_DAYS_ENV,
    "signals": "STRATOPT_RETENTION_SIGNALS_DAYS",
    "quotes": "STRATOPT_RETENTION_QUOTES_DAYS",
    "rotation_decided": "STRATOPT_RETENTION_ROTATION_DECISIONS_DAYS",
    "execution_events": "STRATOPT_RETENTION_EXECUTION_EVENTS_DAYS",
    "kill_switch_events": "STRATOPT_RETENTION_KILL_SWITCH_EVENTS_DAYS",
    "backtests": "STRATOPT_RETENTION_BACKTESTS_DAYS",
    "backtest_points": "STRATOPT_RETENTION_BACKTESTS_DAYS",
}
"""Each hypertable of the migrations and the variable holding its retention in days."""

ROUNDS = Counter(
    "stratopt_retention_rounds",
    "Retention rounds by outcome: ran, skipped (another replica held the lock) or failed.",
    ["outcome"],
)
CHUNKS_DROPPED = Counter("stratopt_retention_chunks_dropped", "Hypertable chunks dropped by retention.", ["table"])


def _number(env: Mapping[str, str], name: str) -> float | None:
    text = env.get(name, "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {text!r}") from None


def env_days(environ: Mapping[str, str] | None = None) -> dict[str, float | None]:
    """``{table: days or None}`` of every hypertable from its ``STRATOPT_RETENTION_*_DAYS`` variable.

    Raises
    ------
    ValueError
        When a value is not a number.
    """
    env = os.environ if environ is None else environ
    return {table: _number(env, name) for table, name in TABLE_ENVS.items()}


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """Keep ``days`` days of ``table`` (a hypertable name, optionally schema-qualified)."""

    table: str
    days: float


@dataclass(frozen=True, slots=True)
class RetentionSettings:
    """The retention of each hypertable and how often a round runs.

    Attributes
    ----------
    policies : tuple of RetentionPolicy
        Only tables with a positive number of days.
    interval_s : float
        Seconds between rounds (the first runs at start-up).
    """

    policies: tuple[RetentionPolicy, ...] = ()
    interval_s: float = DEFAULT_INTERVAL_S

    @classmethod
    def from_days(cls, days: Mapping[str, float | None], interval_s: float | None = None) -> RetentionSettings:
        """Settings from ``{table: days}`` (None or 0 = keep forever).

        Raises
        ------
        ValueError
            For negative days or a non-positive interval.
        """
        policies = []
        for table, value in days.items():
            if value is not None and value < 0:
                raise ValueError(f"retention of {table} must be >= 0 days, got {value}")
            if value:
                policies.append(RetentionPolicy(table, float(value)))
        interval = DEFAULT_INTERVAL_S if interval_s is None else float(interval_s)
        if interval <= 0:
            raise ValueError(f"retention interval must be > 0 s, got {interval}")
        return cls(tuple(policies), interval)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RetentionSettings:
        """Settings from ``STRATOPT_RETENTION_*`` (see the module docstring).

        Raises
        ------
        ValueError
            When a value is not a number, or as ``from_days``.
        """
        env = os.environ if environ is None else environ
        return cls.from_days(env_days(env), _number(env, INTERVAL_ENV))

    @property
    def enabled(self) -> bool:
        """Whether any table has a retention."""
        return bool(self.policies)


@dataclass(frozen=True, slots=True)
class RoundResult:
    """What one round did: whether it held the lock, and the chunks dropped (or due, on a dry run) per table."""

    ran: bool
    chunks: dict[str, list[str]] = field(default_factory=dict)


async def run_round(
    connection: Connection, policies: Sequence[RetentionPolicy], *, dry_run: bool = False
) -> RoundResult:
    """Run one retention round on ``connection`` unless another replica is running one.

    Parameters
    ----------
    connection : asyncpg.Connection
        A connection to the database (not in a transaction).
    policies : sequence of RetentionPolicy
        The tables and their retention in days.
    dry_run : bool
        List the chunks that are due (``show_chunks``) instead of dropping them.

    Returns
    -------
    RoundResult
        ``ran`` False when the lock was held elsewhere (nothing done).

    Raises
    ------
    asyncpg.PostgresError
        When a table is not a hypertable or the database fails; nothing of the round is kept.
    """
    function = "show_chunks" if dry_run else "drop_chunks"
    async with connection.transaction():
        if not await connection.fetchval("SELECT pg_try_advisory_xact_lock($1)", RETENTION_LOCK_KEY):
            ROUNDS.labels("skipped").inc()
            return RoundResult(ran=False)
        chunks: dict[str, list[str]] = {}
        for policy in policies:
            rows = await connection.fetch(
                f"SELECT {function}($1::text::regclass, older_than => now() - make_interval(secs => $2))::text",
                policy.table,
                policy.days * 86400.0,
            )
            chunks[policy.table] = [row[0] for row in rows]
    if not dry_run:
        for table, dropped in chunks.items():
            CHUNKS_DROPPED.labels(table).inc(len(dropped))
            if dropped:
                log.info("retention dropped %d chunk(s) of %s", len(dropped), table)
    ROUNDS.labels("ran").inc()
    return RoundResult(ran=True, chunks=chunks)


async def run_forever(pool: asyncpg.Pool[asyncpg.Record], settings: RetentionSettings) -> None:
    """Run a round at once and then every ``settings.interval_s`` seconds until cancelled; log failures."""
    while True:
        try:
            async with pool.acquire() as connection:
                await run_round(connection, settings.policies)
        except asyncio.CancelledError:
            raise
        except Exception:
            ROUNDS.labels("failed").inc()
            log.exception("retention round failed; retrying in %.0f s", settings.interval_s)
        await asyncio.sleep(settings.interval_s)
