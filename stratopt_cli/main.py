"""The ``stratopt`` command line.

Service: serve, migrate, demo. Optimization: ingest, optimize, latest, history, analytics. Trading: allocate,
allocation-cache, holdings, policy, drift, rebalance, approve, reject, recommendation, rebalance-events.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import grpc
import typer
from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration

from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import query_service_pb2 as query_pb
from stratopt.v1 import trading_service_pb2 as trading_pb
from stratopt_cli import client
from stratopt_cli.runtime import database

app = typer.Typer(
    help="stratopt: portfolio strategy optimization over gRPC (command + query sides).",
    no_args_is_help=True,
    add_completion=False,
)

TargetOption = Annotated[
    str, typer.Option("--target", envvar="STRATOPT_TARGET", help="host:port of a running stratopt server.")
]
_connection = client.ChannelSecurity()
"""TLS material and token of the client commands (set by the top-level options)."""


@app.callback()
def _main(
    tls_ca: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, envvar="STRATOPT_TLS_CA_FILE", help="CA of the server (TLS)."),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            exists=True, dir_okay=False, envvar="STRATOPT_TLS_CLIENT_CERT_FILE", help="Client certificate (mTLS)."
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, envvar="STRATOPT_TLS_CLIENT_KEY_FILE", help="Client key (mTLS)."),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            envvar="STRATOPT_TOKEN_FILE",
            help="File holding a bearer token (JWT); default $STRATOPT_TOKEN. Needs --tls-ca.",
        ),
    ] = None,
) -> None:
    """stratopt: portfolio strategy optimization over gRPC (command + query sides).

    The database URL comes from STRATOPT_DATABASE_URL or the file STRATOPT_DATABASE_URL_FILE names (never the
    command line); the connection options before the command apply to the client commands.
    """
    global _connection
    try:
        _connection = client.ChannelSecurity.from_files(
            ca_file=tls_ca, cert_file=tls_cert, key_file=tls_key, token_file=token_file
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None


def _channel(target: str) -> grpc.Channel:
    return client.channel(target, _connection)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _fail(error: grpc.RpcError) -> None:
    typer.echo(client.describe_rpc_error(error), err=True)
    raise typer.Exit(code=1)


def _print_json(message: object) -> None:
    typer.echo(json_format.MessageToJson(message, indent=2))  # type: ignore[arg-type]


@app.command()
def serve(
    address: Annotated[str, typer.Option(help="host:port to listen on.")] = "127.0.0.1:50051",
    side: Annotated[str, typer.Option(help="Which side to serve: both, command or query.")] = "both",
    workers: Annotated[
        int, typer.Option(envvar="STRATOPT_WORKERS", help="Solver worker processes (0 = CPU count).")
    ] = 0,
    max_queue: Annotated[
        int | None,
        typer.Option(
            envvar="STRATOPT_MAX_QUEUE",
            help="Calls admitted beyond the workers before RESOURCE_EXHAUSTED (default 16 per worker).",
        ),
    ] = None,
    tls_cert_file: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, envvar="STRATOPT_TLS_CERT_FILE", help="TLS cert.")
    ] = None,
    tls_key_file: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, envvar="STRATOPT_TLS_KEY_FILE", help="TLS key.")
    ] = None,
    tls_client_ca_file: Annotated[
        Path | None,
        typer.Option(
            exists=True, dir_okay=False, envvar="STRATOPT_TLS_CLIENT_CA_FILE", help="Client CA: requires mTLS."
        ),
    ] = None,
    tls_client_roles_file: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            envvar="STRATOPT_TLS_CLIENT_ROLES_FILE",
            help="JSON client certificate CN -> roles (mTLS identity when no JWT keys).",
        ),
    ] = None,
    jwt_public_keys_file: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            envvar="STRATOPT_JWT_PUBLIC_KEYS_FILE",
            help="PEM public keys or JWKS: requires bearer tokens.",
        ),
    ] = None,
    jwt_issuer: Annotated[str | None, typer.Option(envvar="STRATOPT_JWT_ISSUER", help="Required iss.")] = None,
    jwt_audience: Annotated[str | None, typer.Option(envvar="STRATOPT_JWT_AUDIENCE", help="Required aud.")] = None,
    jwt_roles_claim: Annotated[
        str, typer.Option(envvar="STRATOPT_JWT_ROLES_CLAIM", help="Token claim holding the roles.")
    ] = "roles",
    allow_self_approval: Annotated[
        bool | None,
        typer.Option(
            "--allow-self-approval/--no-self-approval",
            envvar="STRATOPT_ALLOW_SELF_APPROVAL",
            help="May a recommendation's generator approve it? Default: only without authentication.",
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(envvar="STRATOPT_INSECURE", help="Allow a non-loopback address without TLS and authentication."),
    ] = False,
    verbose: bool = False,
) -> None:
    """Run the gRPC server until SIGINT or SIGTERM (migrating the database first)."""
    from stratopt_cli.security import SecurityConfig
    from stratopt_cli.server import SIDES, StratoptServer

    _setup_logging(verbose)
    sides = SIDES if side == "both" else (side,)
    if side not in ("both", *SIDES):
        raise typer.BadParameter("must be both, command or query", param_hint="--side")
    try:
        security = SecurityConfig(
            tls_cert_file=tls_cert_file,
            tls_key_file=tls_key_file,
            tls_client_ca_file=tls_client_ca_file,
            jwt_public_keys_file=jwt_public_keys_file,
            jwt_issuer=jwt_issuer,
            jwt_audience=jwt_audience,
            jwt_roles_claim=jwt_roles_claim,
            client_roles_file=tls_client_roles_file,
            insecure=insecure,
            allow_self_approval=allow_self_approval,
        )
        security.check_address(address)  # before the database starts
    except ValueError as error:
        typer.echo(f"stratopt: {error}", err=True)
        raise typer.Exit(code=2) from None

    async def run(url: str) -> None:
        server = StratoptServer(
            url, address=address, sides=sides, workers=workers or None, max_queue=max_queue, security=security
        )
        await server.start()
        typer.echo(f"stratopt serving {', '.join(sides)} on {address.rsplit(':', 1)[0]}:{server.port}", err=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        typer.echo("stratopt stopping", err=True)
        await server.stop()

    with database() as url:
        asyncio.run(run(url))


@app.command()
def migrate() -> None:
    """Apply pending SQL migrations (to the embedded cluster when no database URL is configured)."""
    from stratopt_cli.migrate import migrate as apply

    _setup_logging(False)
    with database(run_migrations=False) as url:
        applied = apply(url)
    typer.echo("applied: " + (", ".join(applied) if applied else "nothing (schema is current)"))


@app.command()
def ingest(
    csv: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="Wide CSV: date, then one column per symbol.")
    ],
    symbol_prefix: Annotated[str, typer.Option(help="Prepended to every symbol, e.g. 'PPO.'.")] = "",
    target: TargetOption = client.DEFAULT_TARGET,
) -> None:
    """Stream a price CSV into the market_data hypertable through IngestMarketData."""
    with _channel(target) as ch:
        try:
            response = client.ingest_csv(client.command_stub(ch), csv, symbol_prefix=symbol_prefix)
        except grpc.RpcError as error:
            _fail(error)
    typer.echo(f"stored {response.rows_written} bars for {len(response.symbols)} symbols")


@app.command()
def optimize(
    request_file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="OptimizeRequest as JSON.")],
    target: TargetOption = client.DEFAULT_TARGET,
    timeout: Annotated[float, typer.Option(help="Deadline in seconds.")] = 60.0,
) -> None:
    """Send an OptimizeRequest (protobuf JSON mapping) and print the JSON response."""
    request = json_format.Parse(request_file.read_text(), cmd_pb.OptimizeRequest())
    with _channel(target) as ch:
        try:
            response = client.command_stub(ch).Optimize(request, timeout=timeout)
        except grpc.RpcError as error:
            _fail(error)
    _print_json(response)


@app.command()
def latest(portfolio_id: str, target: TargetOption = client.DEFAULT_TARGET) -> None:
    """Print the latest portfolio_optimized event of a portfolio as JSON."""
    with _channel(target) as ch:
        try:
            response = client.query_stub(ch).GetLatest(query_pb.GetLatestRequest(portfolio_id=portfolio_id), timeout=30)
        except grpc.RpcError as error:
            _fail(error)
    _print_json(response.event)


def _history_request(portfolio_id: str, start: datetime | None, end: datetime | None) -> query_pb.GetHistoryRequest:
    request = query_pb.GetHistoryRequest(portfolio_id=portfolio_id)
    if start is not None:
        request.start.FromDatetime(start)
    if end is not None:
        request.end.FromDatetime(end)
    return request


@app.command()
def history(
    portfolio_id: str,
    start: Annotated[datetime | None, typer.Option(help="Inclusive lower bound (UTC).")] = None,
    end: Annotated[datetime | None, typer.Option(help="Exclusive upper bound (UTC).")] = None,
    page_size: Annotated[int, typer.Option(help="Events per page.")] = 50,
    target: TargetOption = client.DEFAULT_TARGET,
) -> None:
    """Print every event of a portfolio in a time range, newest first, one JSON object per line."""
    request = _history_request(portfolio_id, start, end)
    request.page_size = page_size
    with _channel(target) as ch:
        stub = client.query_stub(ch)
        while True:
            try:
                page = stub.GetHistory(request, timeout=30)
            except grpc.RpcError as error:
                _fail(error)
            for event in page.events:
                typer.echo(json_format.MessageToJson(event, indent=None))
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token


@app.command()
def analytics(
    portfolio_id: str,
    bucket_hours: Annotated[float, typer.Option(help="Bucket width in hours.")] = 24.0,
    target: TargetOption = client.DEFAULT_TARGET,
) -> None:
    """Print per-bucket run statistics (DuckDB over the event history) as JSON."""
    seconds = int(bucket_hours * 3600)
    request = query_pb.GetPortfolioAnalyticsRequest(portfolio_id=portfolio_id, bucket_width=Duration(seconds=seconds))
    with _channel(target) as ch:
        try:
            response = client.query_stub(ch).GetPortfolioAnalytics(request, timeout=60)
        except grpc.RpcError as error:
            _fail(error)
    _print_json(response)


# --- trading: allocation, holdings, drift, rebalancing, approval --------------------------------------------------


def _send(method: str, request: object, target: str, *, query: bool = False, timeout: float = 60.0) -> None:
    """Call one RPC of the trading (or query) service and print the JSON response; exit 1 on an error."""
    with _channel(target) as ch:
        stub = client.query_stub(ch) if query else client.trading_stub(ch)
        try:
            response = getattr(stub, method)(request, timeout=timeout)
        except grpc.RpcError as error:
            _fail(error)
    _print_json(response)


JsonFile = Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The request as JSON (protobuf mapping).")]


@app.command()
def allocate(request_file: JsonFile, target: TargetOption = client.DEFAULT_TARGET) -> None:
    """Send an AllocateSharesRequest (integer shares for target weights) and print the allocation."""
    _send("AllocateShares", json_format.Parse(request_file.read_text(), trading_pb.AllocateSharesRequest()), target)


@app.command("allocation-cache")
def allocation_cache(
    cache_key: Annotated[str, typer.Argument(help="Cache key of an allocation.")] = "",
    clear: Annotated[bool, typer.Option(help="Remove the entry (every entry without a key).")] = False,
    target: TargetOption = client.DEFAULT_TARGET,
) -> None:
    """Print a cached allocation, or clear the cache with --clear."""
    if clear:
        _send("ClearAllocationCache", trading_pb.ClearAllocationCacheRequest(cache_key=cache_key), target)
    else:
        _send("GetCachedAllocation", trading_pb.GetCachedAllocationRequest(cache_key=cache_key), target)


@app.command()
def holdings(request_file: JsonFile, target: TargetOption = client.DEFAULT_TARGET) -> None:
    """Store a portfolio's holdings (UpsertHoldingsRequest: positions with optional tax lots, cash)."""
    _send("UpsertHoldings", json_format.Parse(request_file.read_text(), trading_pb.UpsertHoldingsRequest()), target)


@app.command()
def policy(request_file: JsonFile, target: TargetOption = client.DEFAULT_TARGET) -> None:
    """Store a portfolio's rebalance policy (UpsertRebalancePolicyRequest)."""
    request = json_format.Parse(request_file.read_text(), trading_pb.UpsertRebalancePolicyRequest())
    _send("UpsertRebalancePolicy", request, target)


@app.command()
def drift(
    portfolio_id: str,
    threshold: Annotated[float | None, typer.Option(help="Portfolio drift threshold (two-way, fraction).")] = None,
    target: TargetOption = client.DEFAULT_TARGET,
) -> None:
    """Drift of the stored holdings from the latest optimized target, with band breaches."""
    request = trading_pb.CheckDriftRequest(portfolio_id=portfolio_id)
    if threshold is not None:
        request.threshold = threshold
    _send("CheckDrift", request, target)


@app.command()
def rebalance(
    portfolio_id: str,
    request_file: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="A GenerateRebalanceRequest as JSON (targets, prices, ...)."),
    ] = None,
    target: TargetOption = client.DEFAULT_TARGET,
) -> None:
    """Generate and store a rebalance recommendation (the trade list with costs, lots and gains)."""
    request = trading_pb.GenerateRebalanceRequest()
    if request_file is not None:
        json_format.Parse(request_file.read_text(), request)
    request.portfolio_id = portfolio_id
    _send("GenerateRebalance", request, target)


@app.command()
def approve(
    recommendation_id: str,
    reason: Annotated[str, typer.Option(help="Optional comment.")] = "",
    target: TargetOption = client.DEFAULT_TARGET,
) -> None:
    """Approve a PENDING_APPROVAL rebalance recommendation (as the authenticated caller)."""
    request = trading_pb.ApproveRebalanceRequest(recommendation_id=recommendation_id, reason=reason)
    _send("ApproveRebalance", request, target)


@app.command()
def reject(
    recommendation_id: str,
    reason: Annotated[str, typer.Option(help="Why it is rejected.")],
    target: TargetOption = client.DEFAULT_TARGET,
) -> None:
    """Reject a PENDING_APPROVAL rebalance recommendation (as the authenticated caller)."""
    request = trading_pb.RejectRebalanceRequest(recommendation_id=recommendation_id, reason=reason)
    _send("RejectRebalance", request, target)


@app.command()
def recommendation(recommendation_id: str, target: TargetOption = client.DEFAULT_TARGET) -> None:
    """Print a rebalance recommendation with its current status (query side)."""
    _send("GetRebalance", query_pb.GetRebalanceRequest(recommendation_id=recommendation_id), target, query=True)


@app.command("rebalance-events")
def rebalance_events(
    portfolio_id: str,
    page_size: Annotated[int, typer.Option(help="Events per page.")] = 50,
    target: TargetOption = client.DEFAULT_TARGET,
) -> None:
    """Print the newest rebalance events of a portfolio (CREATED, APPROVED, REJECTED, EXPIRED, SHARES_ALLOCATED)."""
    request = query_pb.ListRebalanceEventsRequest(portfolio_id=portfolio_id, page_size=page_size)
    _send("ListRebalanceEvents", request, target, query=True)


@app.command()
def demo(verbose: bool = False) -> None:
    """Run the demo: serve with TLS and tokens on loopback, optimize S&P 500 portfolios, trade, approve, stop."""
    from stratopt_cli.demo import run_demo

    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, stream=sys.stderr)
    raise typer.Exit(code=run_demo())


if __name__ == "__main__":  # pragma: no cover
    app()
