"""The recompute worker: configurations re-run when their data arrives, once per data version across replicas.

Each server with the command side runs one :class:`RecomputeWorker` task (``STRATOPT_RECOMPUTE_TICK_S``; 0 runs
none on that replica). Every tick it enqueues the due schedule slots, then claims due jobs of the outbox
``recompute_jobs`` (``command_side.recompute_store``: ``FOR UPDATE SKIP LOCKED``, a lease) and runs each as
RunConfiguration would (``OptimizationService.run_configuration``), with the idempotency key
``recompute:<trigger>:<data_version>:<portfolio_id>``: the run is stored with its ``portfolio_optimized`` event like
any other, and a job run twice (its lease expired while the run was being stored, a replica crashed before marking
it done) replays the stored answer instead of storing a second run. A failed attempt goes back to PENDING after an
exponential back-off; after ``max_attempts`` the job is DEAD (a dead letter, listed by the query side's
``ListRecomputeJobs`` with its last error) and nothing retries it. A configuration disabled after its job was
enqueued completes the job without a run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Sequence

from command_side.application import OptimizationService
from command_side.recompute_store import ClaimedJob, PostgresRecomputeStore
from services.errors import PreconditionError, StratoptError

log = logging.getLogger(__name__)

DEFAULT_TICK_S = 1.0
"""Seconds between the worker's looks for due jobs (``stratopt serve``'s default)."""
DEFAULT_CONCURRENCY = 4
"""Jobs one replica claims and runs at once."""
DEFAULT_MAX_ATTEMPTS = 5
"""Attempts before a job is DEAD."""
DEFAULT_RETRY_S = 30.0
"""Back-off before the first retry; doubled for each further one."""
MAX_BACKOFF_S = 3600.0
"""Longest back-off."""
RUN_TIMEOUT_S = 120.0
"""Seconds one run may take."""
LEASE_MARGIN_S = 60.0
"""A claim lasts the run's timeout plus this: a live run always finishes inside its lease."""
DONE_KEPT_S = 7 * 86_400.0
"""DONE jobs are deleted this long after they finished."""


def default_worker_id() -> str:
    """``<host>:<pid>:<random>``: the ``claimed_by`` of this process's worker."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class RecomputeWorker:
    """Claims and runs due recompute jobs (module docstring).

    Parameters
    ----------
    store : PostgresRecomputeStore
        The outbox.
    service : OptimizationService
        Runs and stores each re-run (``run_configuration``).
    tick_s : float
        Seconds between ticks when the last one found less than a full batch.
    concurrency : int
        Jobs claimed and run at once.
    max_attempts : int
        Attempts before a job is DEAD.
    retry_s : float
        Back-off before the first retry (doubled per attempt, at most ``MAX_BACKOFF_S``).
    run_timeout_s : float
        Seconds a run may take; the lease is this plus ``LEASE_MARGIN_S``.
    worker_id : str, optional
        The ``claimed_by`` of this worker; default :func:`default_worker_id`.
    drift_exceeds : callable, optional
        ``(portfolio_id, threshold) -> awaitable bool``: whether the stored holdings' two-way drift from the latest
        run's weights exceeds ``threshold`` (``RebalancingService.check_drift`` in the server); None = no drift
        trigger.
    """

    def __init__(
        self,
        store: PostgresRecomputeStore,
        service: OptimizationService,
        *,
        tick_s: float = DEFAULT_TICK_S,
        concurrency: int = DEFAULT_CONCURRENCY,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        retry_s: float = DEFAULT_RETRY_S,
        run_timeout_s: float = RUN_TIMEOUT_S,
        worker_id: str = "",
        drift_exceeds: Callable[[str, float], Awaitable[bool]] | None = None,
    ) -> None:
        if concurrency < 1 or max_attempts < 1:
            raise ValueError("concurrency and max_attempts must be at least 1")
        self._store = store
        self._service = service
        self._tick_s = tick_s
        self._concurrency = concurrency
        self._max_attempts = max_attempts
        self._retry_s = retry_s
        self._run_timeout_s = run_timeout_s
        self.worker_id = worker_id or default_worker_id()
        self._ticks = 0
        self._drift_exceeds = drift_exceeds
        self._drift_checked_version = -1

    async def tick(self) -> list[str]:
        """Enqueue due schedule slots, claim due jobs and run them; the new status of each claimed job."""
        await self._store.enqueue_scheduled()
        await self.enqueue_drift()
        self._ticks += 1
        if self._ticks % 1000 == 1:
            await self._store.purge_done(DONE_KEPT_S)
        jobs = await self._store.claim(
            self.worker_id, limit=self._concurrency, lease_s=self._run_timeout_s + LEASE_MARGIN_S
        )
        return list(await asyncio.gather(*(self._run(job) for job in jobs)))

    async def enqueue_drift(self) -> int:
        """Enqueue DRIFT jobs when the market data version moved since the last check; the jobs enqueued.

        Every configuration whose holdings drift beyond its threshold gets one. A portfolio whose drift cannot be
        computed (no target run yet, a symbol without a stored close) is skipped and logged; it is checked again at
        the next data version.
        """
        if self._drift_exceeds is None:
            return 0
        version = await self._store.data_version()
        if version == self._drift_checked_version:
            return 0
        enqueued = 0
        for portfolio_id, threshold in await self._store.drift_candidates():
            try:
                exceeded = await self._drift_exceeds(portfolio_id, threshold)
            except StratoptError as error:
                log.info("recompute drift check of %s skipped: %s", portfolio_id, error)
                continue
            if exceeded and await self._store.enqueue_drift(portfolio_id, version):
                enqueued += 1
        self._drift_checked_version = version
        return enqueued

    async def _run(self, job: ClaimedJob) -> str:
        if job.attempts > self._max_attempts:  # its lease kept expiring: a run that never finishes
            return await self._fail(job, "the job's lease expired on every attempt")
        try:
            result = await self._service.run_configuration(
                job.portfolio_id, job.request_id, time_remaining_s=self._run_timeout_s
            )
        except PreconditionError as error:
            if any(v.type == "CONFIGURATION_DISABLED" for v in error.precondition_violations):
                await self._store.complete(job, self.worker_id, None, f"skipped: {error.message}")
                return "DONE"
            return await self._fail(job, f"{type(error).__name__}: {error.message}")
        except StratoptError as error:
            return await self._fail(job, f"{type(error).__name__}: {error.message}")
        except Exception as error:  # a bug must not stop the worker; the job records it and is retried
            log.exception("recompute job %s of %s failed", job.job_id, job.portfolio_id)
            return await self._fail(job, f"{type(error).__name__}: {error}")
        await self._store.complete(job, self.worker_id, uuid.UUID(result.result.metadata.result_id))
        return "DONE"

    async def _fail(self, job: ClaimedJob, error: str) -> str:
        status = await self._store.fail(
            job,
            self.worker_id,
            error,
            max_attempts=self._max_attempts,
            retry_s=self._retry_s,
            max_backoff_s=MAX_BACKOFF_S,
        )
        level = logging.ERROR if status == "DEAD" else logging.WARNING
        log.log(level, "recompute of %s (attempt %d) failed, now %s: %s", job.portfolio_id, job.attempts, status, error)
        return status or "LOST"

    async def run_forever(self) -> None:
        """Tick until cancelled: at once again after a full batch, else after ``tick_s``; a failed tick is logged."""
        while True:
            statuses: Sequence[str] = ()
            try:
                statuses = await self.tick()
            except StratoptError as error:
                log.warning("recompute tick failed: %s", error)
            if len(statuses) < self._concurrency:
                await asyncio.sleep(self._tick_s)
