"""The query side reads a recommendation's status with the lifecycle's rule (no database).

Truth: the rule as specified: a stored PENDING_APPROVAL recommendation reads as EXPIRED from the instant
``expires_at`` on (inclusive), with ``decided_at`` = ``expires_at``; any other stored status reads as stored.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from query_side.repository import StoredRecommendation

EXPIRES = datetime(2024, 3, 2, 12, 0, tzinfo=UTC)
DECIDED = datetime(2024, 3, 1, 15, 0, tzinfo=UTC)


def row(
    status: str, now: datetime, decided_at: datetime | None = None, decided_by: str | None = None
) -> StoredRecommendation:
    return StoredRecommendation(
        recommendation_id=uuid.uuid4(),
        recommendation={},
        status=status,
        expires_at=EXPIRES,
        decided_by=decided_by,
        decided_at=decided_at,
        reason=None,
        now=now,
    )


@pytest.mark.parametrize(
    ("now", "status", "decided_at"),
    [
        (EXPIRES - timedelta(microseconds=1), "PENDING_APPROVAL", None),
        (EXPIRES, "EXPIRED", EXPIRES),
        (EXPIRES + timedelta(days=2), "EXPIRED", EXPIRES),
    ],
    ids=["before", "at", "after"],
)
def test_a_pending_recommendation_reads_as_expired_from_its_deadline_on(
    now: datetime, status: str, decided_at: datetime | None
) -> None:
    stored = row("PENDING_APPROVAL", now)
    assert (stored.effective_status, stored.effective_decided_at) == (status, decided_at)


@pytest.mark.parametrize("status", ["AUTO_APPROVED", "APPROVED", "REJECTED", "EXPIRED"])
def test_other_statuses_read_as_stored(status: str) -> None:
    stored = row(status, EXPIRES + timedelta(days=30), decided_at=DECIDED, decided_by="alice")
    assert (stored.effective_status, stored.effective_decided_at) == (status, DECIDED)
