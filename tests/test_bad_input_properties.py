"""Property: no request, however hostile, is answered INTERNAL or UNKNOWN, and a rejected one writes no row.

For every RPC of both sides, Hypothesis builds requests from the contract's descriptors (``tests/proto_strategies``:
any field set or unset, NULs, unicode and over-long strings, NaN/±inf, whole-range integers, unknown enum numbers,
Timestamps and Durations out of range, a few items in lists and maps, nested messages three levels deep); others
are a valid request with such a message merged in or with one field (at any depth) replaced, so they also reach
the later checks. Each is sent over a real gRPC channel to a real server (both sides, one solver worker) on its own
database in the session's PostgreSQL + TimescaleDB cluster, so the requests that succeed do not change what the
other tests read. A client stream (IngestMarketData) is sent as one message, so "rejected" means the whole call
wrote nothing.

Bounded: ``EXAMPLES_PER_RPC`` examples per RPC, derandomized (the same examples on every run), no per-example
deadline; about a minute in all on an idle 2-core machine. A longer search off the fixed path:
``STRATOPT_PROPERTY_EXAMPLES=1000 STRATOPT_PROPERTY_SEED=7 pytest tests/test_bad_input_properties.py``.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterator
from typing import Any

import grpc
import psycopg
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from psycopg import sql

from stratopt_cli.client import channel
from stratopt_cli.migrate import migrate
from stratopt_cli.server import ServerThread, StratoptServer
from tests.bad_input import METHODS, call, changed_tables, row_counts, valid_requests
from tests.proto_strategies import messages, mutated, one_field

pytestmark = pytest.mark.integration

EXAMPLES_PER_RPC = int(os.environ.get("STRATOPT_PROPERTY_EXAMPLES", "50"))
"""Generated requests per RPC (``STRATOPT_PROPERTY_EXAMPLES`` for a longer search, e.g. 1000)."""
DERANDOMIZE = os.environ.get("STRATOPT_PROPERTY_SEED") is None
"""Derandomized unless ``STRATOPT_PROPERTY_SEED`` is set (then that seed, for a search off the fixed path)."""
DATABASE = "stratopt_properties"
NEVER = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
VALID = valid_requests()


@pytest.fixture(scope="module")
def own_dsn(pg_dsn: str) -> str:
    """A fresh, migrated database in the session's cluster, only for these tests."""
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(DATABASE)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    parts = urllib.parse.urlsplit(pg_dsn)
    dsn = urllib.parse.urlunsplit(parts._replace(path=f"/{DATABASE}"))
    migrate(dsn)
    return dsn


@pytest.fixture(scope="module")
def own_channel(own_dsn: str) -> Iterator[grpc.Channel]:
    """A real channel to a real server (both sides, one solver worker) on :func:`own_dsn`."""
    thread = ServerThread(StratoptServer(own_dsn, address="127.0.0.1:0", workers=1))
    thread.start()
    try:
        with channel(thread.target) as ch:
            yield ch
    finally:
        thread.stop()


@pytest.fixture(scope="module")
def own_db(own_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(own_dsn, autocommit=True) as conn:
        yield conn


def _requests(name: str, method: Any) -> st.SearchStrategy[Any]:
    valid = VALID[name]
    if method.client_streaming:
        assert isinstance(valid, list)
        first = valid[0]
        return st.one_of(messages(method.input_type), mutated(first), one_field(first)).map(lambda m: [m])
    assert not isinstance(valid, list)
    return st.one_of(messages(method.input_type), mutated(valid), one_field(valid))


@pytest.mark.parametrize("method", METHODS, ids=[m.name for m in METHODS])
def test_no_request_is_internal_and_a_rejected_one_writes_nothing(
    method: Any, own_channel: grpc.Channel, own_db: psycopg.Connection[Any]
) -> None:
    name = f"{method.containing_service.name}.{method.name}"

    @settings(
        max_examples=EXAMPLES_PER_RPC,
        deadline=None,
        derandomize=DERANDOMIZE,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )
    @given(request=_requests(name, method))
    def check(request: Any) -> None:
        before = row_counts(own_db)
        outcome = call(own_channel, method, request, timeout_s=30)
        assert outcome.code not in NEVER, f"{name}: {outcome.code.name} {outcome.message!r}"
        assert outcome.trailer_bytes < 8192, f"{name}: {outcome.trailer_bytes} bytes of trailers"
        if outcome.code != grpc.StatusCode.OK:
            assert changed_tables(before, row_counts(own_db)) == {}, f"{name}: {outcome.code.name} wrote rows"

    if not DERANDOMIZE:
        check = seed(int(os.environ["STRATOPT_PROPERTY_SEED"]))(check)
    check()
