"""The recompute queue as the query side shows it: ``ListRecomputeJobs``.

Reads ``recompute_jobs`` (migration ``0019_recompute``), the outbox the command side's ingest transactions and
schedules fill and its recompute workers drain (``command_side.recompute``): pending, running, done and dead
(dead-lettered) jobs, newest first, optionally of one portfolio and one status.
"""

from __future__ import annotations

from typing import Any

from query_side.page_token import decode_page_token, encode_page_token, query_fingerprint
from query_side.postgres_errors import postgres_errors
from query_side.repository import HistoryKey
from stratopt.v1 import query_service_pb2

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500

_COLUMNS = """job_id, portfolio_id, trigger, data_version, status, attempts, not_before, last_error, claimed_by,
    lease_until, result_id, created_at, updated_at"""


def _job(row: Any) -> query_service_pb2.RecomputeJob:
    job = query_service_pb2.RecomputeJob(
        job_id=str(row["job_id"]),
        portfolio_id=row["portfolio_id"],
        trigger=query_service_pb2.RecomputeTrigger.Value(f"RECOMPUTE_TRIGGER_{row['trigger']}"),
        data_version=row["data_version"],
        status=query_service_pb2.RecomputeJobStatus.Value(f"RECOMPUTE_JOB_STATUS_{row['status']}"),
        attempts=row["attempts"],
        last_error=row["last_error"],
        claimed_by=row["claimed_by"],
        result_id="" if row["result_id"] is None else str(row["result_id"]),
    )
    job.not_before.FromDatetime(row["not_before"])
    job.created_at.FromDatetime(row["created_at"])
    job.updated_at.FromDatetime(row["updated_at"])
    if row["lease_until"] is not None and row["status"] == "RUNNING":
        job.lease_until.FromDatetime(row["lease_until"])
    return job


class RecomputeJobReads:
    """Reads of the recompute queue over asyncpg.

    Parameters
    ----------
    pool : asyncpg.Pool
        The query side's pool.
    """

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def list(
        self, portfolio_id: str, status: int, page_size: int, page_token: str
    ) -> tuple[list[query_service_pb2.RecomputeJob], str]:
        """A page of jobs, newest first, and the next page's token ('' = last page).

        Parameters
        ----------
        portfolio_id : str
            Only this portfolio's jobs; '' = every portfolio.
        status : int
            A ``RecomputeJobStatus``; 0 (unspecified) = every status.
        page_size : int
            0 = :data:`DEFAULT_PAGE_SIZE`, capped at :data:`MAX_PAGE_SIZE`.
        page_token : str
            From a previous page of the same query; '' = the first page.

        Raises
        ------
        InvalidInputError
            A malformed token, or one issued for another query (field ``page_token``).
        UnavailableError
            The database cannot be reached.
        """
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        fingerprint = query_fingerprint(f"recompute_jobs\0{portfolio_id}\0{status}", None, None)
        after = decode_page_token(page_token, fingerprint) if page_token else None
        query = f"SELECT {_COLUMNS} FROM recompute_jobs WHERE true"
        args: list[Any] = []
        if portfolio_id:
            args.append(portfolio_id)
            query += f" AND portfolio_id = ${len(args)}"
        if status:
            name = query_service_pb2.RecomputeJobStatus.Name(query_service_pb2.RecomputeJobStatus.ValueType(status))
            args.append(name.removeprefix("RECOMPUTE_JOB_STATUS_"))
            query += f" AND status = ${len(args)}"
        if after is not None:
            args += [after.timestamp, after.event_id]
            query += f" AND (created_at, job_id) < (${len(args) - 1}, ${len(args)})"
        query += f" ORDER BY created_at DESC, job_id DESC LIMIT {size + 1}"
        async with postgres_errors(), self._pool.acquire() as conn:
            rows = await conn.fetch(query, *args)
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            last = rows[-1]
            token = encode_page_token(HistoryKey(timestamp=last["created_at"], event_id=last["job_id"]), fingerprint)
        return [_job(r) for r in rows], token
