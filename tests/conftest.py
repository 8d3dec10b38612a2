"""Session fixtures: a throwaway PostgreSQL + TimescaleDB cluster and the stratopt gRPC server on it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from stratopt.v1 import command_service_pb2_grpc as cmd_grpc
from stratopt.v1 import query_service_pb2_grpc as query_grpc
from stratopt.v1 import trading_service_pb2_grpc as trading_grpc
from stratopt_cli.embedded_postgres import EmbeddedPostgres
from stratopt_cli.migrate import migrate

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
PPO_PREFIX = "PPO."
"""Symbol prefix of PyPortfolioOpt's price files in the test database."""


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """DSN of a migrated database in a cluster created for this test session and removed after it."""
    base = Path(tempfile.mkdtemp(prefix="stratopt-test-"))
    os.chmod(base, 0o755)  # the postgres user must traverse it when the tests run as root
    cluster = EmbeddedPostgres(base / "pgdata", database="stratopt_test")
    dsn = cluster.start()
    try:
        migrate(dsn)
        yield dsn
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def server_target(pg_dsn: str) -> Iterator[str]:
    """``host:port`` of the full stratopt server (both sides, 2 solver workers) on the test database."""
    from stratopt_cli.server import ServerThread, StratoptServer

    thread = ServerThread(StratoptServer(pg_dsn, address="127.0.0.1:0", workers=2))
    thread.start()
    try:
        yield thread.target
    finally:
        thread.stop()


@pytest.fixture(scope="session")
def grpc_channel(server_target: str) -> Iterator[grpc.Channel]:
    """A real gRPC channel to the test server."""
    from stratopt_cli.client import channel

    with channel(server_target) as ch:
        yield ch


@pytest.fixture(scope="session")
def commands(grpc_channel: grpc.Channel) -> cmd_grpc.OptimizationCommandServiceStub:
    """Stub of the command service."""
    return cmd_grpc.OptimizationCommandServiceStub(grpc_channel)


@pytest.fixture(scope="session")
def queries(grpc_channel: grpc.Channel) -> query_grpc.OptimizationQueryServiceStub:
    """Stub of the query service."""
    return query_grpc.OptimizationQueryServiceStub(grpc_channel)


@pytest.fixture(scope="session")
def trading(grpc_channel: grpc.Channel) -> trading_grpc.TradingCommandServiceStub:
    """Stub of the trading command service (allocation, holdings, drift, rebalancing, approval)."""
    return trading_grpc.TradingCommandServiceStub(grpc_channel)


@pytest.fixture(scope="session")
def stored_prices(commands: cmd_grpc.OptimizationCommandServiceStub) -> dict[str, str]:
    """Ingest the bundled real prices through IngestMarketData once per session; symbol -> source file."""
    from stratopt_cli.client import ingest_csv

    symbols: dict[str, str] = {}
    # PyPortfolioOpt's and skfolio's files share tickers with different adjusted prices: keep them apart.
    for name, prefix in (
        ("stock_prices.csv", PPO_PREFIX),
        ("spy_prices.csv", PPO_PREFIX),
        ("sp500_dataset.csv.gz", ""),
        ("sp500_index.csv.gz", ""),
    ):
        response = ingest_csv(commands, DATA_DIR / name, symbol_prefix=prefix, quiet=True)
        symbols.update({s: name for s in response.symbols})
    return symbols


@pytest.fixture(scope="session")
def db(pg_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit psycopg connection for assertions on stored rows."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield conn
