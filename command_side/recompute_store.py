"""The recompute outbox over PostgreSQL (asyncpg): enqueue, claim, complete and fail recompute jobs.

``recompute_jobs`` (migration ``0019_recompute``) holds one row per (portfolio, trigger, data version) to re-run:

* **Market data.** ``command_side.repository.PostgresOptimizationStore.ingest_bars`` runs
  :data:`ENQUEUE_MARKET_DATA_JOBS` in the ingest's own transaction (the outbox: the jobs commit with the bars or
  not at all). Each ingest takes the next number of the ``market_data_versions`` sequence as its data version;
  every enabled latest configuration with ``recompute.on_market_data`` holding an ingested symbol (a strategy or
  its market symbol) gets a job due after its debounce. A portfolio has at most one job waiting for its first
  attempt per trigger (a partial unique index): a further ingest moves that job to the new data version and
  its ``not_before`` to now + debounce, never past ``not_after`` (first enqueue + 10 x debounce), so bars
  streaming in make one run.
* **Schedule.** :meth:`PostgresRecomputeStore.enqueue_scheduled` (each worker tick) inserts the current slot
  ``floor(unix seconds / schedule_interval_seconds)`` of every enabled latest configuration with a schedule;
  the unique key makes that once per slot across replicas.
* **Drift.** When the market data version has moved, a worker checks each enabled latest configuration with a
  ``drift_threshold`` and stored holdings (:meth:`PostgresRecomputeStore.drift_candidates`) and enqueues a DRIFT
  job at that version for those beyond it (:meth:`PostgresRecomputeStore.enqueue_drift`; the unique key makes
  it once per version across replicas). The version it reads is a committed one: an ingest holds a shared
  advisory lock (:data:`INGEST_VERSION_LOCK`) from before it takes its number to its commit, and the read waits
  for the exclusive one (else a check could see the new number before the new bars, and never check them).

Workers claim due jobs with ``FOR UPDATE SKIP LOCKED`` in one short statement that marks them RUNNING with a
lease (:meth:`PostgresRecomputeStore.claim`): replicas never wait for each other and never claim the same job
while its lease holds; an expired lease (a crashed replica) is claimed again. A portfolio has at most one RUNNING
job (a partial unique index, migration ``0021_one_running_job``): its runs never overlap.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Final

import asyncpg

from command_side.configuration import DEFAULT_DEBOUNCE_SECONDS
from command_side.postgres_errors import postgres_errors

__all__ = [
    "ENQUEUE_MARKET_DATA_JOBS",
    "INGEST_VERSION_LOCK",
    "ClaimedJob",
    "PostgresRecomputeStore",
    "job_request_id",
]

MAX_DEBOUNCE_FACTOR: Final = 10
"""A debounced job runs at most this many debounces after its first enqueue, however long bars keep coming."""

_LATEST = """NOT EXISTS (SELECT 1 FROM optimization_configurations n
    WHERE n.portfolio_id = c.portfolio_id AND n.version > c.version)"""
"""``c`` is its portfolio's latest configuration version."""

ENQUEUE_MARKET_DATA_JOBS: Final = f"""
WITH symbols AS (SELECT DISTINCT symbol FROM market_data_stage),
subscribed AS (
    SELECT c.portfolio_id,
           coalesce((c.recompute #>> '{{policy,debounce_seconds}}')::float8, {DEFAULT_DEBOUNCE_SECONDS}) AS debounce
    FROM optimization_configurations c
    WHERE c.enabled AND (c.recompute #>> '{{policy,on_market_data}}')::boolean
      AND {_LATEST}
      AND (c.market_symbol IN (SELECT symbol FROM symbols)
           OR EXISTS (SELECT 1 FROM jsonb_array_elements(c.strategies -> 'strategies') s
                      WHERE s ->> 'symbol' IN (SELECT symbol FROM symbols)))
),
version AS (SELECT nextval('market_data_versions') AS data_version)
INSERT INTO recompute_jobs (portfolio_id, trigger, data_version, not_before, not_after)
SELECT s.portfolio_id, 'MARKET_DATA', v.data_version, clock_timestamp() + make_interval(secs => s.debounce),
       clock_timestamp() + make_interval(secs => {MAX_DEBOUNCE_FACTOR} * s.debounce)
FROM subscribed s CROSS JOIN version v
ORDER BY s.portfolio_id
ON CONFLICT (portfolio_id, trigger) WHERE status = 'PENDING' AND attempts = 0
DO UPDATE SET data_version = EXCLUDED.data_version, not_before = LEAST(EXCLUDED.not_before, recompute_jobs.not_after),
    updated_at = clock_timestamp()"""
"""The outbox statement of an ingest transaction, after its bars are in ``market_data_stage`` (module docstring).
Rows are written in portfolio order, so concurrent ingests lock shared jobs in one order (no deadlock)."""

_ENQUEUE_SCHEDULED = f"""
INSERT INTO recompute_jobs (portfolio_id, trigger, data_version, not_before, not_after)
SELECT c.portfolio_id, 'SCHEDULE',
       floor(extract(epoch FROM clock_timestamp()) / (c.recompute #>> '{{policy,schedule_interval_seconds}}')::float8),
       clock_timestamp(), clock_timestamp()
FROM optimization_configurations c
WHERE c.enabled AND (c.recompute #>> '{{policy,schedule_interval_seconds}}')::float8 > 0 AND {_LATEST}
ORDER BY c.portfolio_id
ON CONFLICT DO NOTHING"""
"""The current slot of every scheduled configuration; a slot already enqueued, or a job of an earlier slot still
waiting for its first attempt, makes it a no-op."""

_DRIFT_CANDIDATES = f"""
SELECT c.portfolio_id, (c.recompute #>> '{{policy,drift_threshold}}')::float8 AS threshold
FROM optimization_configurations c
WHERE c.enabled AND (c.recompute #>> '{{policy,drift_threshold}}') IS NOT NULL AND {_LATEST}
  AND EXISTS (SELECT 1 FROM portfolio_holdings h WHERE h.portfolio_id = c.portfolio_id)
ORDER BY c.portfolio_id"""
"""The latest enabled configurations with a drift threshold whose portfolio has stored holdings."""

_VERSION_LOCK = "hashtext('stratopt'), hashtext('market_data_versions')"
"""The advisory lock (two-key form: apart from the one-key per-portfolio locks) that orders data versions."""

INGEST_VERSION_LOCK: Final = f"SELECT pg_advisory_xact_lock_shared({_VERSION_LOCK})"
"""Taken (shared) by an ingest transaction before :data:`ENQUEUE_MARKET_DATA_JOBS` takes its data version, held
to its commit: :meth:`PostgresRecomputeStore.data_version` waits for it (module docstring, Drift)."""

_DATA_VERSION = "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM market_data_versions"

_ENQUEUE_DRIFT = """
INSERT INTO recompute_jobs (portfolio_id, trigger, data_version, not_before, not_after)
VALUES ($1, 'DRIFT', $2, clock_timestamp(), clock_timestamp())
ON CONFLICT DO NOTHING"""
"""One DRIFT job per (portfolio, market data version): a replica that saw the same drift adds nothing."""

_CLAIM = """
WITH due AS (
    SELECT c.job_id, c.portfolio_id, c.status, c.not_before FROM recompute_jobs c
    WHERE (c.status = 'PENDING' AND c.not_before <= clock_timestamp()
           AND NOT EXISTS (SELECT 1 FROM recompute_jobs r WHERE r.portfolio_id = c.portfolio_id
                           AND r.status = 'RUNNING'))
       OR (c.status = 'RUNNING' AND c.lease_until < clock_timestamp())
    ORDER BY c.not_before
    LIMIT $2
    FOR UPDATE SKIP LOCKED),
one_per_portfolio AS (
    SELECT DISTINCT ON (portfolio_id) job_id FROM due
    ORDER BY portfolio_id, status = 'RUNNING' DESC, not_before)
UPDATE recompute_jobs j SET status = 'RUNNING', attempts = j.attempts + 1, claimed_by = $1,
    lease_until = clock_timestamp() + make_interval(secs => $3), updated_at = clock_timestamp()
WHERE j.job_id IN (SELECT job_id FROM one_per_portfolio)
RETURNING j.job_id, j.portfolio_id, j.trigger, j.data_version, j.attempts"""
"""Claim due jobs (pending past ``not_before``, or running with an expired lease), one per portfolio and none of a
portfolio with a running job (an expired one first): one statement, rows another replica is claiming are skipped
rather than waited for. Two replicas claiming jobs of one portfolio at once: the unique index of migration
``0021_one_running_job`` refuses the second (``claim`` then claims nothing this time)."""

_COMPLETE = """
UPDATE recompute_jobs SET status = 'DONE', result_id = $3, lease_until = NULL, last_error = $4,
    updated_at = clock_timestamp()
WHERE job_id = $1 AND claimed_by = $2 AND status = 'RUNNING'"""

_FAIL = """
UPDATE recompute_jobs SET status = CASE WHEN attempts >= $3 THEN 'DEAD' ELSE 'PENDING' END,
    not_before = clock_timestamp() + make_interval(secs => least($4 * 2 ^ (attempts - 1), $5)),
    lease_until = NULL, last_error = $6, updated_at = clock_timestamp()
WHERE job_id = $1 AND claimed_by = $2 AND status = 'RUNNING'
RETURNING status"""
"""Back to PENDING after ``retry_s * 2^(attempts - 1)`` (at most ``max_backoff_s``), or DEAD after the last
attempt. A retried job has ``attempts > 0``, outside the one-waiting-job index, so new data still enqueues."""

_PURGE = """
DELETE FROM recompute_jobs WHERE job_id IN (
    SELECT job_id FROM recompute_jobs
    WHERE status = 'DONE' AND updated_at < clock_timestamp() - make_interval(secs => $1)
    LIMIT 1000)"""

MAX_ERROR_LENGTH: Final = 4000
"""Most characters of ``last_error`` kept."""


def job_request_id(trigger: str, data_version: int, portfolio_id: str) -> str:
    """The idempotency key of a job's run: ``recompute:<trigger>:<data_version>:<portfolio_id>``.

    The same job run twice (a lease that expired while its run was being stored) stores one run: the second
    replays the first's answer.
    """
    return f"recompute:{trigger.lower()}:{data_version}:{portfolio_id}"


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job a worker claimed (RUNNING under its lease)."""

    job_id: uuid.UUID
    """Job identifier."""
    portfolio_id: str
    """The portfolio whose latest configuration re-runs."""
    trigger: str
    """``MARKET_DATA`` or ``SCHEDULE``."""
    data_version: int
    """The ingest sequence number or the schedule slot."""
    attempts: int
    """Attempts started, this one included."""

    @property
    def request_id(self) -> str:
        """The idempotency key of its run (:func:`job_request_id`)."""
        return job_request_id(self.trigger, self.data_version, self.portfolio_id)


class PostgresRecomputeStore:
    """The recompute outbox (module docstring).

    Parameters
    ----------
    pool : asyncpg.Pool
        Connection pool to the migrated database.
    """

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        self._pool = pool

    async def _execute(self, query: str, *args: Any) -> str:
        async with postgres_errors(), self._pool.acquire() as conn:
            return str(await conn.execute(query, *args))

    async def enqueue_scheduled(self) -> int:
        """Enqueue the current slot of every scheduled configuration; the jobs inserted."""
        return int((await self._execute(_ENQUEUE_SCHEDULED)).split()[-1])

    async def data_version(self) -> int:
        """The latest committed market data version (``market_data_versions``; 0 before any ingest).

        The sequence moves when an ingest takes its number, before it commits: read under the exclusive form of
        :data:`INGEST_VERSION_LOCK`, which waits for the ingests in flight, so the bars of every version up to
        the one returned are committed (or rolled back) and a drift check at that version sees them.
        """
        async with postgres_errors(), self._pool.acquire() as conn, conn.transaction():
            await conn.execute(f"SELECT pg_advisory_xact_lock({_VERSION_LOCK})")
            return int(await conn.fetchval(_DATA_VERSION))

    async def drift_candidates(self) -> list[tuple[str, float]]:
        """``(portfolio_id, drift threshold)`` of the latest enabled drift-triggered configurations with holdings."""
        async with postgres_errors(), self._pool.acquire() as conn:
            rows = await conn.fetch(_DRIFT_CANDIDATES)
        return [(r["portfolio_id"], float(r["threshold"])) for r in rows]

    async def enqueue_drift(self, portfolio_id: str, data_version: int) -> bool:
        """Enqueue a DRIFT job of ``portfolio_id`` at ``data_version``; False when one exists already."""
        return (await self._execute(_ENQUEUE_DRIFT, portfolio_id, data_version)).endswith(" 1")

    async def claim(self, worker_id: str, *, limit: int, lease_s: float) -> list[ClaimedJob]:
        """Claim up to ``limit`` due jobs for ``worker_id``, leased for ``lease_s`` seconds."""
        async with postgres_errors(), self._pool.acquire() as conn:
            try:
                rows = await conn.fetch(_CLAIM, worker_id, limit, lease_s)
            except asyncpg.UniqueViolationError:  # another replica claimed a job of one of these portfolios first
                return []
        return [
            ClaimedJob(r["job_id"], r["portfolio_id"], r["trigger"], int(r["data_version"]), int(r["attempts"]))
            for r in rows
        ]

    async def complete(self, job: ClaimedJob, worker_id: str, result_id: uuid.UUID | None, note: str = "") -> bool:
        """Mark a claimed job DONE with its run's ``result_id``; False when the claim was lost (lease expired)."""
        status = await self._execute(_COMPLETE, job.job_id, worker_id, result_id, note[:MAX_ERROR_LENGTH])
        return status.endswith(" 1")

    async def fail(
        self,
        job: ClaimedJob,
        worker_id: str,
        error: str,
        *,
        max_attempts: int,
        retry_s: float,
        max_backoff_s: float,
    ) -> str | None:
        """Record a failed attempt: back to PENDING with back-off, or DEAD after ``max_attempts``.

        Returns the job's new status, or None when the claim was lost.
        """
        async with postgres_errors(), self._pool.acquire() as conn:
            status = await conn.fetchval(
                _FAIL, job.job_id, worker_id, max_attempts, retry_s, max_backoff_s, error[:MAX_ERROR_LENGTH]
            )
        return None if status is None else str(status)

    async def purge_done(self, older_than_s: float) -> int:
        """Delete up to 1000 DONE jobs last changed more than ``older_than_s`` seconds ago; the rows deleted."""
        return int((await self._execute(_PURGE, older_than_s)).split()[-1])
