"""Reads of the ``rotation_decided`` hypertable for the query side: latest decision, history, reason counts.

The command side stores each decision's document (``command_side.rotation_model.DecisionRecord``, schema_version
1) in the event; this module turns it into ``stratopt.v1.RotationDecision`` without importing the command side
(the two sides are independent). Reason counts are aggregated in TimescaleDB (``time_bucket`` over the event
time, ``unnest`` of the reason codes), so no history is pulled into Python.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from google.protobuf import timestamp_pb2

from query_side.postgres_errors import postgres_errors
from query_side.records import SchemaError
from query_side.repository import HistoryKey, newest_first_rows, time_range
from stratopt.v1 import rotation_service_pb2 as rot_pb

SCHEMA_VERSION = 1
"""The decision documents this module reads."""

_ENGINES = {"GREEDY": rot_pb.ROTATION_ENGINE_GREEDY, "QP": rot_pb.ROTATION_ENGINE_QP}
_ACTIONS = {"TRADE": rot_pb.ROTATION_ACTION_TRADE, "HOLD": rot_pb.ROTATION_ACTION_HOLD}


def _stamp(text: str) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(datetime.fromisoformat(text))
    return ts


def decision_message(document: dict[str, Any]) -> rot_pb.RotationDecision:
    """``stratopt.v1.RotationDecision`` of a stored decision document.

    Raises
    ------
    SchemaError
        When the document is not of :data:`SCHEMA_VERSION`.
    """
    if document.get("schema_version") != SCHEMA_VERSION:
        raise SchemaError(f"rotation decision of schema_version {document.get('schema_version')!r}")
    message = rot_pb.RotationDecision(
        decision_id=document["decision_id"],
        portfolio_id=document["portfolio_id"],
        configuration_version=document["configuration_version"],
        as_of=_stamp(document["as_of"]),
        engine=_ENGINES[document["engine"]],
        action=_ACTIONS[document["action"]],
        policy_reason=document["policy_reason"],
        portfolio_value=document["portfolio_value"],
        turnover=document["turnover"],
        request_id=document["request_id"],
        decided_by=document["decided_by"],
    )
    if document["decided_at"] is not None:
        message.decided_at.CopyFrom(_stamp(document["decided_at"]))
    for t in document["triggers"]:
        trigger = message.triggers.add(name=t["name"], fired=t["fired"])
        if t["value"] is not None:
            trigger.value = t["value"]
        if t["threshold"] is not None:
            trigger.threshold = t["threshold"]
    for c in document["changes"]:
        change = message.changes.add(
            symbol=c["symbol"],
            action=c["action"],
            reason=c["reason"],
            rank=c["rank"],
            z=c["z"],
            current_weight=c["current_weight"],
            target_weight=c["target_weight"],
        )
        change.numbers.update({k: v for k, v in c["numbers"].items() if v is not None})
    for o in document["orders"]:
        message.orders.add(**o)
    return message


@dataclass(frozen=True, slots=True)
class StoredDecision:
    """One ``rotation_decided`` event: its key and its decision."""

    key: HistoryKey
    decision: rot_pb.RotationDecision


@dataclass(slots=True)
class ReasonBucket:
    """Counts of one time bucket."""

    start: datetime
    decisions: int = 0
    trades: int = 0
    holds: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    hold_reasons: dict[str, int] = field(default_factory=dict)


class RotationReads:
    """The rotation reads over an asyncpg pool (every method may raise ``UnavailableError``)."""

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        self._pool = pool

    async def latest(self, portfolio_id: str) -> rot_pb.RotationDecision | None:
        """The portfolio's most recent decision, or None."""
        async with postgres_errors():
            row = await self._pool.fetchrow(
                'SELECT decision FROM rotation_decided WHERE portfolio_id = $1 ORDER BY "timestamp" DESC, '
                "event_id DESC LIMIT 1",
                portfolio_id,
            )
        return None if row is None else decision_message(json.loads(row["decision"]))

    async def history(
        self,
        portfolio_id: str,
        *,
        start: datetime | None,
        end: datetime | None,
        limit: int,
        after: HistoryKey | None = None,
    ) -> list[StoredDecision]:
        """Decisions in ``[start, end)`` older than ``after``, newest first by ``(timestamp, event_id)``."""
        rows = await newest_first_rows(
            self._pool, "rotation_decided", 'event_id, "timestamp", decision', portfolio_id, start, end, limit, after
        )
        return [
            StoredDecision(
                HistoryKey(timestamp=r["timestamp"], event_id=uuid.UUID(str(r["event_id"]))),
                decision_message(json.loads(r["decision"])),
            )
            for r in rows
        ]

    async def reason_counts(
        self, portfolio_id: str, *, start: datetime | None, end: datetime | None, width: timedelta
    ) -> list[ReasonBucket]:
        """Counts per ``time_bucket(width, timestamp)``, oldest bucket first.

        Decisions, TRADE and HOLD counts, changes by reason code and HOLDs by policy reason.
        """
        conditions, arguments = time_range(portfolio_id, start, end)
        arguments.append(width)
        # Aligned to the Unix epoch, as the contract says (TimescaleDB's default origin is 2000-01-03).
        bucket = f"time_bucket(${len(arguments)}::interval, \"timestamp\", TIMESTAMPTZ '1970-01-01 00:00:00+00')"
        where = " AND ".join(conditions)
        decisions = f"""
            SELECT {bucket} AS bucket, count(*) AS decisions,
                   count(*) FILTER (WHERE action = 'TRADE') AS trades, count(*) FILTER (WHERE action = 'HOLD') AS holds
            FROM rotation_decided WHERE {where} GROUP BY bucket ORDER BY bucket"""
        reasons = f"""
            SELECT {bucket} AS bucket, code, count(*) AS n
            FROM rotation_decided, unnest(reason_codes) AS code WHERE {where} GROUP BY bucket, code"""
        holds = f"""
            SELECT {bucket} AS bucket, policy_reason AS code, count(*) AS n
            FROM rotation_decided WHERE {where} AND action = 'HOLD' GROUP BY bucket, policy_reason"""
        async with postgres_errors(), self._pool.acquire() as conn:
            buckets = {
                r["bucket"]: ReasonBucket(r["bucket"], r["decisions"], r["trades"], r["holds"])
                for r in await conn.fetch(decisions, *arguments)
            }
            for r in await conn.fetch(reasons, *arguments):
                buckets[r["bucket"]].reasons[r["code"]] = r["n"]
            hold_counts: dict[datetime, dict[str, int]] = defaultdict(dict)
            for r in await conn.fetch(holds, *arguments):
                hold_counts[r["bucket"]][r["code"]] = r["n"]
        for when, counts in hold_counts.items():
            buckets[when].hold_reasons.update(counts)
        return list(buckets.values())
