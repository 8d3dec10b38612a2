"""The ``stratopt`` command line.

Service: serve, migrate, retention, demo. Optimization: ingest, optimize, latest, history, analytics. Backtests:
backtest, get-backtest, list-backtests. Trading: allocate, allocation-cache, holdings, policy, drift, rebalance,
approve, reject, recommendation, rebalance-events. Analytics (``analytics_commands``): realised, weights, compare,
rebalance-stats. Export (``export``): export. Charts: plot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration

from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import query_service_pb2 as query_pb
from stratopt.v1 import trading_service_pb2 as trading_pb
from stratopt_cli import analytics_commands, client, export
from stratopt_cli.health import HEALTH_ADDRESS_ENV
from stratopt_cli.jax_cache import configure_jax_cache, default_jax_cache_dir
from stratopt_cli.logs import LOG_FORMAT_ENV, setup_logging
from stratopt_cli.plot_commands import plot_app
from stratopt_cli.runtime import DatabaseTimeouts, database, startup_limit_from_env

app = typer.Typer(
    help="stratopt: portfolio strategy optimization over gRPC (command + query sides).",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(plot_app, name="plot")

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


LogFormatOption = Annotated[
    str | None,
    typer.Option(
        "--log-format",
        envvar=LOG_FORMAT_ENV,
        help="json or text log lines (default: text on a terminal, json otherwise).",
    ),
]


def _days(name: str, table: str) -> Any:
    return typer.Option(envvar=name, min=0.0, help=f"Keep this many days of {table} (0 = forever).")


EventsDays = Annotated[float, _days("STRATOPT_RETENTION_EVENTS_DAYS", "portfolio_optimized events")]
RebalanceEventsDays = Annotated[float, _days("STRATOPT_RETENTION_REBALANCE_EVENTS_DAYS", "rebalance_events")]
MarketDataDays = Annotated[float, _days("STRATOPT_RETENTION_MARKET_DATA_DAYS", "market_data")]


def _retention_days(events: float, rebalance_events: float, market_data: float) -> dict[str, float | None]:
    """Every hypertable's retention: the three options, the other tables from their ``STRATOPT_RETENTION_*``."""
    from stratopt_cli.retention import env_days

    try:
        days = env_days()
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    days.update({"portfolio_optimized": events, "rebalance_events": rebalance_events, "market_data": market_data})
    return days


def _setup_logging(verbose: bool, log_format: str | None = None) -> None:
    try:
        setup_logging(verbose=verbose, log_format=log_format, stream=sys.stderr)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--log-format") from None


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
    heavy_workers: Annotated[
        int | None,
        typer.Option(
            min=0,
            envvar="STRATOPT_HEAVY_WORKERS",
            help="Solver processes of the heavy pool (N >= --heavy-assets, CVaR/MAD/CDaR, cardinality, robust); "
            "0 = heavy problems share the main pool (default one per four CPUs, at least one).",
        ),
    ] = None,
    heavy_max_queue: Annotated[
        int | None,
        typer.Option(
            min=0,
            envvar="STRATOPT_HEAVY_MAX_QUEUE",
            help="Heavy calls admitted beyond the heavy workers before RESOURCE_EXHAUSTED (default 4 per worker).",
        ),
    ] = None,
    heavy_assets: Annotated[
        int,
        typer.Option(
            min=2,
            envvar="STRATOPT_HEAVY_ASSETS",
            help="Strategies from which a problem is heavy whatever its method (services.workload).",
        ),
    ] = 500,
    jax_cache_dir: Annotated[
        str | None,
        typer.Option(
            envvar="STRATOPT_JAX_CACHE_DIR",
            help="Directory of JAX's persistent compilation cache: solver processes load the batched solver's "
            "compiled sizes from it instead of compiling them again after a start (default "
            "$XDG_CACHE_HOME/stratopt/jax; 'off' turns it off).",
        ),
    ] = None,
    warm_batch_assets: Annotated[
        int,
        typer.Option(
            min=0,
            envvar="STRATOPT_WARM_BATCH_ASSETS",
            help="Solver workers compile BatchOptimize's batched solver for up to this many strategies before "
            "they are ready (0 = on first use; about 10-20 s of a core per worker).",
        ),
    ] = 0,
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
    health_address: Annotated[
        str | None,
        typer.Option(
            envvar=HEALTH_ADDRESS_ENV,
            help="Extra plaintext host:port serving only grpc.health.v1 (Kubernetes gRPC probes cannot do TLS).",
        ),
    ] = None,
    shutdown_grace: Annotated[
        float,
        typer.Option(
            envvar="STRATOPT_SHUTDOWN_GRACE_S",
            min=0,
            help="On SIGTERM: seconds of NOT_SERVING (still answering) before new calls are refused.",
        ),
    ] = 2.0,
    shutdown_timeout: Annotated[
        float,
        typer.Option(
            envvar="STRATOPT_SHUTDOWN_TIMEOUT_S", min=0, help="Then: seconds in-flight calls may take to finish."
        ),
    ] = 30.0,
    migrate: Annotated[
        bool,
        typer.Option(
            "--migrate/--no-migrate",
            envvar="STRATOPT_MIGRATE",
            help="Apply pending migrations before serving; off where a separate job migrates (the Helm chart).",
        ),
    ] = True,
    verbose: bool = False,
    log_format: LogFormatOption = None,
    access_log: Annotated[
        bool, typer.Option(envvar="STRATOPT_ACCESS_LOG", help="One log line per call (logger stratopt.access).")
    ] = True,
    rotation_tick: Annotated[
        float,
        typer.Option(
            envvar="STRATOPT_ROTATION_TICK_S",
            min=0.0,
            help="Seconds between the rotation scheduler's looks for due cycles (0: no scheduler on this replica).",
        ),
    ] = 15.0,
    recompute_tick: Annotated[
        float,
        typer.Option(
            envvar="STRATOPT_RECOMPUTE_TICK_S",
            min=0.0,
            help="Seconds between the recompute worker's looks for due re-runs of configurations (new market data, "
            "schedules); 0: no worker on this replica.",
        ),
    ] = 1.0,
    recompute_retry: Annotated[
        float,
        typer.Option(
            envvar="STRATOPT_RECOMPUTE_RETRY_S",
            min=0.0,
            help="Back-off before a failed re-run's first retry (doubled per attempt, at most an hour).",
        ),
    ] = 30.0,
    recompute_max_attempts: Annotated[
        int,
        typer.Option(
            envvar="STRATOPT_RECOMPUTE_MAX_ATTEMPTS", min=1, help="Attempts of a re-run before it is a dead letter."
        ),
    ] = 5,
    query_event_cache: Annotated[
        int,
        typer.Option(
            envvar="STRATOPT_QUERY_EVENT_CACHE",
            min=0,
            help="Serialized events GetHistory keeps to serve again without decoding their rows (about 1 KB each "
            "with overheads; 0: none).",
        ),
    ] = 65_536,
    metrics_address: Annotated[
        str | None,
        typer.Option(
            envvar="STRATOPT_METRICS_ADDRESS",
            help="host:port of the Prometheus /metrics endpoint (off when unset; TLS with STRATOPT_TLS_CERT_FILE).",
        ),
    ] = None,
    otel: Annotated[
        bool,
        typer.Option(envvar="STRATOPT_OTEL_ENABLED", help="Export OpenTelemetry traces over OTLP (OTEL_* settings)."),
    ] = False,
    retention_events_days: EventsDays = 0.0,
    retention_rebalance_events_days: RebalanceEventsDays = 0.0,
    retention_market_data_days: MarketDataDays = 0.0,
    retention_interval_s: Annotated[
        float, typer.Option(envvar="STRATOPT_RETENTION_INTERVAL_S", min=1.0, help="Seconds between retention rounds.")
    ] = 3600.0,
) -> None:
    """Run the gRPC server until SIGINT or SIGTERM (migrating the database first unless --no-migrate).

    Listens at once and reports NOT_SERVING until the database answers (waiting with back-off up to
    STRATOPT_DB_WAIT_LIMIT_S, default 600 s, 0 = no limit); database calls are bounded by
    STRATOPT_DB_STATEMENT_TIMEOUT_S (default 10 s) and STRATOPT_DB_CONNECT_TIMEOUT_S (default 5 s).
    """
    from command_side import default_heavy_workers
    from stratopt_cli.metrics import MetricsEndpoint
    from stratopt_cli.retention import RetentionSettings
    from stratopt_cli.security import SecurityConfig
    from stratopt_cli.server import SIDES, StratoptServer
    from stratopt_cli.tracing import Tracing, otlp_tracer_provider

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
        timeouts, limit = DatabaseTimeouts.from_env(), startup_limit_from_env()
    except ValueError as error:
        typer.echo(f"stratopt: {error}", err=True)
        raise typer.Exit(code=2) from None

    endpoint = None
    if metrics_address:
        endpoint = MetricsEndpoint.from_env(metrics_address)
        if insecure:  # --insecure covers the metrics endpoint as it covers the gRPC port
            endpoint = dataclasses.replace(endpoint, insecure=True)
        try:
            endpoint.check()
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint="--metrics-address") from None
    _setup_logging(verbose, log_format)
    off = jax_cache_dir is not None and jax_cache_dir.strip().lower() in ("", "off")
    cache = None if off else (default_jax_cache_dir() if jax_cache_dir is None else Path(jax_cache_dir))
    if cache is not None and configure_jax_cache(cache) is None:
        logging.getLogger("stratopt").warning("JAX compilation cache off: cannot create %s", cache)
    retention = RetentionSettings.from_days(
        _retention_days(retention_events_days, retention_rebalance_events_days, retention_market_data_days),
        retention_interval_s,
    )

    async def run(url: str) -> int:
        tracing = Tracing(otlp_tracer_provider()) if otel else None
        server = StratoptServer(
            url,
            address=address,
            sides=sides,
            workers=workers or None,
            max_queue=max_queue,
            heavy_workers=default_heavy_workers() if heavy_workers is None else heavy_workers,
            heavy_max_queue=heavy_max_queue,
            heavy_assets=heavy_assets,
            warm_batch_assets=warm_batch_assets,
            metrics_endpoint=endpoint,
            tracing=tracing,
            retention=retention,
            access_log=access_log,
            timeouts=timeouts,
            startup_limit_s=limit,
            migrate=migrate,
            health_address=health_address,
            shutdown_grace_s=shutdown_grace,
            security=security,
            freeze_gc=True,
            rotation_tick_s=rotation_tick,
            recompute_tick_s=recompute_tick,
            recompute_retry_s=recompute_retry,
            recompute_max_attempts=recompute_max_attempts,
            query_event_cache=query_event_cache,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await server.listen()
        if endpoint is not None:
            logging.getLogger(__name__).info("metrics on port %d", server.metrics_port)
        host = address.rsplit(":", 1)[0]
        typer.echo(f"stratopt listening for {', '.join(sides)} on {host}:{server.port}", err=True)
        if health_address:
            health_host = health_address.rsplit(":", 1)[0]
            typer.echo(f"stratopt health only (plaintext) on {health_host}:{server.health_port}", err=True)
        ready = asyncio.create_task(server.ready())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({ready, stopping}, return_when=asyncio.FIRST_COMPLETED)
        code = 0
        if ready.done() and ready.exception() is not None:
            typer.echo(f"stratopt could not start: {ready.exception()}", err=True)
            code = 1
        elif ready.done():
            typer.echo(f"stratopt serving {', '.join(sides)} on {host}:{server.port}", err=True)
            await stopping
        ready.cancel()
        stopping.cancel()
        typer.echo("stratopt stopping", err=True)
        await server.stop(shutdown_timeout)
        if tracing is not None:
            tracing.provider.shutdown()
        return code

    with database(run_migrations=False) as url:
        code = asyncio.run(run(url))
    if code:
        raise typer.Exit(code=code)


@app.command()
def migrate() -> None:
    """Apply pending SQL migrations (to the embedded cluster when no database URL is configured).

    Waits for the database with back-off first (STRATOPT_DB_WAIT_LIMIT_S, default 600 s, 0 = no limit).
    """
    from stratopt_cli.runtime import migrate_when_reachable

    _setup_logging(False)
    with database(run_migrations=False) as url:
        try:
            applied = migrate_when_reachable(
                url, limit_s=startup_limit_from_env(), timeouts=DatabaseTimeouts.from_env()
            )
        except TimeoutError as error:
            typer.echo(f"stratopt migrate: {error}", err=True)
            raise typer.Exit(code=1) from None
    typer.echo("applied: " + (", ".join(applied) if applied else "nothing (schema is current)"))


@app.command("retention")
def retention_command(
    events_days: EventsDays = 0.0,
    rebalance_events_days: RebalanceEventsDays = 0.0,
    market_data_days: MarketDataDays = 0.0,
    dry_run: Annotated[bool, typer.Option(help="List the chunks that are due instead of dropping them.")] = False,
) -> None:
    """Run one retention round now: drop (or list) hypertable chunks older than each table's retention."""
    from stratopt_cli.retention import RetentionSettings, run_round

    settings = RetentionSettings.from_days(_retention_days(events_days, rebalance_events_days, market_data_days))
    if not settings.enabled:
        typer.echo("no retention configured (every table is kept forever)")
        return

    async def once(url: str) -> None:
        import asyncpg

        connection = await asyncpg.connect(url)
        try:
            result = await run_round(connection, settings.policies, dry_run=dry_run)
        finally:
            await connection.close()
        if not result.ran:
            typer.echo("another process is running retention now; nothing done")
            return
        verb = "due" if dry_run else "dropped"
        for table, chunks in result.chunks.items():
            typer.echo(f"{table}: {len(chunks)} chunk(s) {verb}" + "".join(f"\n  {c}" for c in chunks))

    with database(run_migrations=False) as url:
        asyncio.run(once(url))


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


# --- backtests ---------------------------------------------------------------------------------------------------

_FREQUENCIES = ("periods", "weekly", "monthly", "quarterly", "annually", "drift")


@app.command()
def backtest(
    portfolio_id: Annotated[str, typer.Argument(help="Portfolio whose stored configuration is backtested.")],
    start: Annotated[
        datetime | None, typer.Option(help="First simulated date (UTC); default: earliest possible.")
    ] = None,
    end: Annotated[
        datetime | None, typer.Option(help="Last simulated date (UTC); default: the last stored price.")
    ] = None,
    frequency: Annotated[str, typer.Option(help=f"Rebalance schedule: {', '.join(_FREQUENCIES)}.")] = "monthly",
    every_periods: Annotated[int, typer.Option(help="Observations between decisions (--frequency periods).")] = 21,
    absolute_band: Annotated[
        float | None, typer.Option(help="Drift band |w - target| (fraction; --frequency drift).")
    ] = None,
    relative_band: Annotated[
        float | None, typer.Option(help="Drift band as a fraction of the target (--frequency drift).")
    ] = None,
    estimation_periods: Annotated[
        int, typer.Option(help="Returns per estimation window (0 = the configuration's lookback, or 252).")
    ] = 0,
    initial_cash: Annotated[float, typer.Option(help="Starting cash ($).")] = 1_000_000.0,
    whole_shares: Annotated[bool, typer.Option(help="Hold whole shares (buy and hold only).")] = False,
    constant_weights: Annotated[
        bool, typer.Option(help="Restore the targets at every close for free (skfolio's definition).")
    ] = False,
    commission_bps: Annotated[float, typer.Option(help="Commission on traded value (bps).")] = 0.0,
    spread_bps: Annotated[float, typer.Option(help="Quoted spread (bps); each trade pays half.")] = 0.0,
    commission_per_trade: Annotated[float, typer.Option(help="Fixed commission per symbol traded ($).")] = 0.0,
    version: Annotated[int, typer.Option(help="Configuration version (0 = latest).")] = 0,
    timeout: Annotated[float, typer.Option(help="Deadline in seconds.")] = 3600.0,
    target: TargetOption = client.DEFAULT_TARGET,
) -> None:
    """Run a walk-forward backtest of a stored configuration; show progress, then print the summary as JSON.

    Ctrl-C cancels it (nothing is stored). Read the stored path with ``stratopt get-backtest``.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from stratopt.v1 import backtest_pb2 as bt_pb

    if frequency not in _FREQUENCIES:
        raise typer.BadParameter(f"--frequency must be one of {', '.join(_FREQUENCIES)}")
    request = bt_pb.BacktestRequest(
        portfolio_id=portfolio_id,
        configuration_version=version,
        estimation_periods=estimation_periods,
        initial_cash=initial_cash,
        whole_shares=whole_shares,
        holding=bt_pb.BACKTEST_HOLDING_CONSTANT_WEIGHTS if constant_weights else bt_pb.BACKTEST_HOLDING_BUY_AND_HOLD,
        schedule=bt_pb.RebalanceSchedule(
            frequency=bt_pb.RebalanceFrequency.Value(f"REBALANCE_FREQUENCY_{frequency.upper()}"),
            every_periods=every_periods,
        ),
        costs=bt_pb.BacktestCosts(
            commission_bps=commission_bps, spread_bps=spread_bps, commission_per_trade=commission_per_trade
        ),
    )
    if absolute_band is not None:
        request.schedule.absolute_band = absolute_band
    if relative_band is not None:
        request.schedule.relative_band = relative_band
    if start is not None:
        request.start.FromDatetime(start)
    if end is not None:
        request.end.FromDatetime(end)
    summary = None
    with _channel(target) as ch, Progress(
        TextColumn("backtest"), BarColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
        console=_stderr_console(), transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("starting", total=None)
        try:
            for message in client.command_stub(ch).Backtest(request, timeout=timeout):
                if message.HasField("result"):
                    summary = message.result
                    continue
                p = message.progress
                bar.update(
                    task,
                    completed=p.decisions_done,
                    total=p.decisions_planned or None,
                    description=f"{p.simulated_through.ToDatetime():%Y-%m-%d}  equity {p.equity:,.0f}",
                )
        except grpc.RpcError as error:
            _fail(error)
    _print_json(summary)


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


@app.command("get-backtest")
def get_backtest(
    backtest_id: str,
    points: Annotated[bool, typer.Option(help="Print the path (one JSON object per close) after the summary.")] = False,
    target: TargetOption = client.DEFAULT_TARGET,
) -> None:
    """Print a stored backtest's summary (and with --points its equity, cash and weights per close) as JSON."""
    with _channel(target) as ch:
        try:
            response = client.query_stub(ch).GetBacktest(
                query_pb.GetBacktestRequest(backtest_id=backtest_id), timeout=60
            )
        except grpc.RpcError as error:
            _fail(error)
    _print_json(response.summary)
    if points:
        for point in response.points:
            typer.echo(json_format.MessageToJson(point, indent=None))


@app.command("list-backtests")
def list_backtests(portfolio_id: str, target: TargetOption = client.DEFAULT_TARGET) -> None:
    """Print a portfolio's stored backtests, newest first, one JSON summary per line."""
    request = query_pb.ListBacktestsRequest(portfolio_id=portfolio_id, page_size=100)
    with _channel(target) as ch:
        stub = client.query_stub(ch)
        while True:
            try:
                page = stub.ListBacktests(request, timeout=30)
            except grpc.RpcError as error:
                _fail(error)
            for summary in page.backtests:
                typer.echo(json_format.MessageToJson(summary, indent=None))
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token


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
def demo(
    verbose: bool = False,
    plots_dir: Annotated[Path, typer.Option(help="Directory for the PNG charts.")] = Path("stratopt-demo-plots"),
) -> None:
    """Run the demo: serve with TLS and tokens on loopback, optimize S&P 500 portfolios, backtest, trade, stop."""
    from stratopt_cli.demo import run_demo

    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, stream=sys.stderr)
    raise typer.Exit(code=run_demo(plots_dir=plots_dir))


app.add_typer(analytics_commands.app)  # realised, weights, compare, rebalance-stats
app.add_typer(export.app)  # export

if __name__ == "__main__":  # pragma: no cover
    app()
