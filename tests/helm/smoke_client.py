"""The client side of the deployment checks: real gRPC calls to a command and a query endpoint.

``exercise`` streams PyPortfolioOpt's price file into ``IngestMarketData``, optimizes a max-Sharpe portfolio
with ``Optimize`` on the command endpoint, and reads it back with ``GetLatest`` on the query endpoint. Used by
the podman start of the Helm chart (tests/helm/podman_start.py) and by the resource measurement
(tests/helm/measure_rss.py).
"""

from __future__ import annotations

import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import query_service_pb2 as query_pb
from stratopt.v1 import types_pb2
from stratopt_cli import client

PRICES = Path(__file__).resolve().parents[2] / "data" / "stock_prices.csv"
PREFIX = "SMOKE."
SYMBOLS = ("AAPL", "AMZN", "GOOG", "JPM", "MA", "PFE", "WMT", "XOM")
MAX_WEIGHT = 0.35


@dataclass(frozen=True)
class Outcome:
    """What the command side answered and what the query side read back."""

    portfolio_id: str
    optimized: cmd_pb.OptimizeResponse
    latest: query_pb.GetLatestResponse
    bars_written: int


def wait_serving(
    target: str, service: str = "", timeout_s: float = 180.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll ``grpc.health.v1`` at ``target`` until ``service`` is SERVING.

    ``process``, when given, is the server's process: its exit ends the wait at once.

    Raises
    ------
    TimeoutError
        When it is not SERVING within ``timeout_s`` seconds (the last error is in the message).
    RuntimeError
        When ``process`` exits before it is SERVING (its exit status is in the message).
    """
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server at {target} exited with status {process.returncode} (last: {last})")
        with client.channel(target) as ch:
            try:
                answer = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
            except grpc.RpcError as error:
                last = f"{error.code().name}"  # type: ignore[attr-defined]
        time.sleep(1.0)
    raise TimeoutError(f"{target} health {service!r} not SERVING after {timeout_s:.0f} s (last: {last})")


def optimize_request(portfolio_id: str) -> cmd_pb.OptimizeRequest:
    """A max-Sharpe request over the last three years of the ingested prices."""
    request = cmd_pb.OptimizeRequest(portfolio_id=portfolio_id, request_id=str(uuid.uuid4()))
    for symbol in SYMBOLS:
        request.strategies.add(symbol=PREFIX + symbol)
    request.market_data.lookback_periods = 756
    request.objective = types_pb2.OBJECTIVE_MAX_SHARPE
    request.constraints.max_weight = MAX_WEIGHT
    request.risk_parameters.risk_free_rate = 0.02
    return request


def exercise(command_target: str, query_target: str, *, ingest: bool = True) -> Outcome:
    """Ingest prices and optimize on the command side, then read the latest result from the query side."""
    portfolio_id = f"smoke-{uuid.uuid4().hex[:8]}"
    bars = 0
    with client.channel(command_target) as ch:
        stub = client.command_stub(ch)
        if ingest:
            bars = client.ingest_csv(stub, PRICES, symbol_prefix=PREFIX, quiet=True).rows_written
        optimized = stub.Optimize(optimize_request(portfolio_id), timeout=120)
    with client.channel(query_target) as ch:
        latest = client.query_stub(ch).GetLatest(query_pb.GetLatestRequest(portfolio_id=portfolio_id), timeout=30)
    return Outcome(portfolio_id, optimized, latest, bars)
