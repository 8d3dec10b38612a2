"""Rebalance and cost statistics per time bucket, aggregated in TimescaleDB over ``rebalance_events``.

A recommendation counts as **approved** by its APPROVED event, or by its CREATED event when it was auto-approved at
creation (status ``AUTO_APPROVED``). Its traded value is the event's ``total_trade_value`` ($, the sum of the
trade values) and its estimated cost the recommendation's ``total_cost`` ($: commissions, half-spreads and market
impact, ``docs/storage_schema.md``); the cost in basis points is ``1e4 × cost / traded value`` over the bucket's
approved recommendations. Buckets are aligned to the Unix epoch, like every analytics bucket of the query side.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from query_side.postgres_errors import postgres_errors
from query_side.repository import time_range

_APPROVED = "(e.event_type = 'APPROVED' OR (e.event_type = 'CREATED' AND e.status = 'AUTO_APPROVED'))"


@dataclass(frozen=True, slots=True, kw_only=True)
class RebalanceBucket:
    """One bucket's counts and sums (module docstring)."""

    bucket_start: datetime
    created: int
    approved: int
    rejected: int
    expired: int
    approved_trade_value: float
    """$."""
    approved_cost: float
    """$."""

    @property
    def cost_bps(self) -> float | None:
        """Estimated cost over traded value of the approved recommendations, basis points (None without trades)."""
        return 1e4 * self.approved_cost / self.approved_trade_value if self.approved_trade_value > 0 else None


class TradingStatistics:
    """Rebalance statistics over asyncpg.

    Parameters
    ----------
    pool : asyncpg.Pool
        The query side's pool.
    """

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def rebalance_buckets(
        self, portfolio_id: str, *, start: datetime | None, end: datetime | None, bucket_width: timedelta
    ) -> list[RebalanceBucket]:
        """Buckets with at least one rebalance event of the portfolio in ``[start, end)``, oldest first.

        Raises
        ------
        UnavailableError
            When the database cannot be reached.
        """
        conditions, arguments = time_range(portfolio_id, start, end)
        where = " AND ".join(f"e.{c}" for c in conditions)  # every condition names an event column
        width = f"${len(arguments) + 1}"
        query = f"""
            SELECT time_bucket({width}::interval, e."timestamp", TIMESTAMPTZ '1970-01-01 00:00:00+00') AS bucket,
                   count(*) FILTER (WHERE e.event_type = 'CREATED') AS created,
                   count(*) FILTER (WHERE {_APPROVED}) AS approved,
                   count(*) FILTER (WHERE e.event_type = 'REJECTED') AS rejected,
                   count(*) FILTER (WHERE e.event_type = 'EXPIRED') AS expired,
                   coalesce(sum(e.total_trade_value) FILTER (WHERE {_APPROVED}), 0) AS approved_value,
                   coalesce(sum((r.recommendation->>'total_cost')::float8) FILTER (WHERE {_APPROVED}), 0)
                       AS approved_cost
            FROM rebalance_events e
            LEFT JOIN rebalance_recommendations r ON r.recommendation_id = e.recommendation_id
            WHERE {where} AND e.event_type <> 'SHARES_ALLOCATED'
            GROUP BY bucket ORDER BY bucket"""
        async with postgres_errors():
            rows = await self._pool.fetch(query, *arguments, bucket_width)
        return [
            RebalanceBucket(
                bucket_start=row["bucket"].astimezone(UTC),
                created=int(row["created"]),
                approved=int(row["approved"]),
                rejected=int(row["rejected"]),
                expired=int(row["expired"]),
                approved_trade_value=float(row["approved_value"]),
                approved_cost=float(row["approved_cost"]),
            )
            for row in rows
        ]
