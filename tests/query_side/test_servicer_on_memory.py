"""The query servicer on the in-memory read store: no database, no gRPC channel (the context is unused)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from query_side.read_store import InMemoryReadStore
from query_side.repository import StoredEvent
from query_side.servicer import OptimizationQueryServicer
from services.errors import InvalidInputError, NotFoundError
from stratopt.v1 import query_service_pb2 as query_pb

T0 = datetime(2024, 3, 1, tzinfo=UTC)
NO_CONTEXT: Any = None
"""The servicer reads nothing from the call context of these methods."""


def event(portfolio_id: str, hours: int) -> StoredEvent:
    return StoredEvent(
        event_id=uuid.uuid4(),
        timestamp=T0 + timedelta(hours=hours),
        portfolio_id=portfolio_id,
        result_id=uuid.uuid4(),
        configuration_version=1,
        request_id=f"r-{hours}",
        objective="OBJECTIVE_MIN_VOLATILITY",
        method="OPTIMIZATION_METHOD_MEAN_VARIANCE",
        weights={"A": 0.25, "B": 0.75},
        expected_return=0.06,
        volatility=0.12,
        sharpe_ratio=0.5,
        metadata={"schema_version": 1, "solver": "CLOSED_FORM"},
    )


def servicer_with(*events: StoredEvent) -> OptimizationQueryServicer:
    store = InMemoryReadStore()
    for stored in events:
        store.add_event(stored)
    return OptimizationQueryServicer(store)


def test_get_latest_answers_from_the_store() -> None:
    queries = servicer_with(event("p", 1), event("p", 3), event("p", 2))
    latest = asyncio.run(queries.GetLatest(query_pb.GetLatestRequest(portfolio_id="p"), NO_CONTEXT))
    assert latest.event.request_id == "r-3"
    assert dict(latest.event.weights) == {"A": 0.25, "B": 0.75}
    with pytest.raises(NotFoundError):
        asyncio.run(queries.GetLatest(query_pb.GetLatestRequest(portfolio_id="q"), NO_CONTEXT))
    with pytest.raises(InvalidInputError):
        asyncio.run(queries.GetLatest(query_pb.GetLatestRequest(portfolio_id=""), NO_CONTEXT))


def test_get_history_pages_through_the_store_with_tokens() -> None:
    queries = servicer_with(*(event("p", h) for h in range(5)))
    pages, token = [], ""
    while True:
        request = query_pb.GetHistoryRequest(portfolio_id="p", page_size=2, page_token=token)
        page = asyncio.run(queries.GetHistory(request, NO_CONTEXT))
        pages.append([e.request_id for e in page.events])
        token = page.next_page_token
        if not token:
            break
    assert pages == [["r-4", "r-3"], ["r-2", "r-1"], ["r-0"]]
