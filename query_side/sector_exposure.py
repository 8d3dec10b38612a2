"""Sector exposure over time (``GetSectorExposure``): each run's weights summed by the sectors of its configuration.

A run's sectors are those of the configuration version it ran with (``optimization_configurations.strategies``),
so a re-classified strategy counts under its old sector in older runs. Per run and sector, **net** exposure is
``Σ w_i`` and **gross** exposure ``Σ |w_i|`` over the sector's strategies (fractions of the portfolio's value; they
differ only with short positions); a strategy without a sector counts under :data:`UNCLASSIFIED`. One query in
PostgreSQL: the latest ``limit`` runs of the range, joined with their configuration versions, grouped by sector.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from query_side.postgres_errors import postgres_errors
from query_side.repository import time_range

UNCLASSIFIED = "(no sector)"
"""The sector of strategies configured without one."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SectorExposureRun:
    """One run's exposure per sector."""

    event_id: str
    timestamp: datetime
    net: dict[str, float]
    """Σ w by sector (fractions)."""
    gross: dict[str, float]
    """Σ |w| by sector (fractions)."""


class SectorExposureReads:
    """Sector exposures over asyncpg.

    Parameters
    ----------
    pool : asyncpg.Pool
        The query side's pool.
    """

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def runs(
        self, portfolio_id: str, *, start: datetime | None, end: datetime | None, limit: int
    ) -> tuple[list[SectorExposureRun], bool]:
        """The latest ``limit`` runs of ``[start, end)``, oldest first, and whether older runs were left out.

        Raises
        ------
        UnavailableError
            When the database cannot be reached.
        """
        conditions, arguments = time_range(portfolio_id, start, end)
        arguments.append(limit + 1)
        query = f"""
            WITH runs AS (
                SELECT "timestamp", event_id, portfolio_id, configuration_version, weights
                FROM portfolio_optimized WHERE {" AND ".join(conditions)}
                ORDER BY "timestamp" DESC, event_id DESC LIMIT ${len(arguments)}
            )
            SELECT r."timestamp", r.event_id::text AS event_id,
                   coalesce(nullif(s->>'sector', ''), '{UNCLASSIFIED}') AS sector,
                   sum(coalesce((r.weights->>(s->>'symbol'))::float8, 0)) AS net,
                   sum(abs(coalesce((r.weights->>(s->>'symbol'))::float8, 0))) AS gross
            FROM runs r
            JOIN optimization_configurations c
              ON c.portfolio_id = r.portfolio_id AND c.version = r.configuration_version
            CROSS JOIN LATERAL jsonb_array_elements(c.strategies->'strategies') s
            GROUP BY r."timestamp", r.event_id, 3
            ORDER BY r."timestamp", r.event_id, 3"""
        async with postgres_errors():
            rows = await self._pool.fetch(query, *arguments)
        runs: dict[str, SectorExposureRun] = {}
        for row in rows:
            run = runs.get(row["event_id"])
            if run is None:
                run = runs[row["event_id"]] = SectorExposureRun(
                    event_id=row["event_id"], timestamp=row["timestamp"], net={}, gross={}
                )
            run.net[row["sector"]] = row["net"]
            run.gross[row["sector"]] = row["gross"]
        ordered = list(runs.values())
        truncated = len(ordered) > limit
        return (ordered[1:] if truncated else ordered), truncated
