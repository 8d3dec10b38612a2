"""The main job on real data: serve, ingest S&P 500 prices, optimize portfolios over gRPC, query, stop.

Data: ``data/sp500_dataset.csv.gz`` (20 S&P 500 stocks, daily, 1990-2022) and ``data/sp500_index.csv.gz``
from skfolio (BSD-3-Clause, see ``data/LICENSE-skfolio.txt``).

Security as in production, on loopback: the demo makes a throwaway CA, a server certificate for 127.0.0.1 and a
JWT signing key (``stratopt_cli.dev_credentials``), serves with TLS and bearer tokens, and calls as three
principals: ``demo-operator`` (admin: ingest, optimize, query), ``demo-trader`` (trade, approve, read: allocation,
holdings, drift, the rebalance) and ``demo-risk-desk`` (approve, read). The trader's own approval is refused
(four-eyes rule); the risk desk's is stored as the approver.

Last, a paper-traded rotation day (2022-12-28, New York time): the operator ingests a 12-month momentum score
of each stock, the trader configures a greedy rotation over the 20 stocks for a $1,000,000 cash portfolio and
runs a cycle at each scheduled window (and one between windows); the first trades and the paper broker fills its
orders; the risk desk engages the portfolio's kill-switch over one window; the decisions, their reason codes
and a reconciliation against the filled positions are printed.
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.table import Table

from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import execution_service_pb2 as ex_pb
from stratopt.v1 import execution_service_pb2_grpc as ex_grpc
from stratopt.v1 import query_service_pb2 as query_pb
from stratopt.v1 import rotation_service_pb2 as rot_pb
from stratopt.v1 import rotation_service_pb2_grpc as rot_grpc
from stratopt.v1 import trading_service_pb2 as trading_pb
from stratopt.v1 import types_pb2 as pb
from stratopt_cli import client
from stratopt_cli.dev_credentials import LOCAL_NAMES, DevCertificateAuthority, DevTokenIssuer, write_files
from stratopt_cli.runtime import database
from stratopt_cli.security import SecurityConfig
from stratopt_cli.server import ServerThread, StratoptServer

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DEFAULT_PLOTS_DIR = Path("stratopt-demo-plots")
"""Where the demo writes its charts by default (relative to the working directory)."""

SECTORS = {
    "AAPL": "Information Technology", "AMD": "Information Technology", "MSFT": "Information Technology",
    "BAC": "Financials", "JPM": "Financials",
    "BBY": "Consumer Discretionary", "HD": "Consumer Discretionary",
    "CVX": "Energy", "XOM": "Energy", "RRC": "Energy",
    "GE": "Industrials",
    "JNJ": "Health Care", "LLY": "Health Care", "MRK": "Health Care", "PFE": "Health Care", "UNH": "Health Care",
    "KO": "Consumer Staples", "PEP": "Consumer Staples", "PG": "Consumer Staples", "WMT": "Consumer Staples",
}  # fmt: skip
"""GICS sectors of the 20 stocks of the skfolio S&P 500 data set."""


def _strategies() -> list[pb.Strategy]:
    return [pb.Strategy(symbol=s, sector=sector) for s, sector in SECTORS.items()]


def _window(end_year: int, years: int = 3) -> pb.MarketDataWindow:
    window = pb.MarketDataWindow(market_symbol="SP500")
    window.start.FromDatetime(datetime(end_year - years, 12, 31, tzinfo=UTC))
    window.end.FromDatetime(datetime(end_year, 12, 31, tzinfo=UTC))
    return window


def demo_requests(run_tag: str) -> list[cmd_pb.OptimizeRequest]:
    """The demo's portfolios: max Sharpe, min volatility, sector-constrained, efficient return (2020-2022)."""
    risk = pb.RiskParameters(risk_free_rate=0.02)
    window = _window(2022)
    return [
        cmd_pb.OptimizeRequest(
            portfolio_id="sp500-max-sharpe", request_id=f"{run_tag}-max-sharpe", strategies=_strategies(),
            market_data=window, objective=pb.OBJECTIVE_MAX_SHARPE,
            constraints=pb.OptimizationConstraints(max_weight=0.25), risk_parameters=risk,
        ),
        cmd_pb.OptimizeRequest(
            portfolio_id="sp500-min-volatility", request_id=f"{run_tag}-min-vol", strategies=_strategies(),
            market_data=window, objective=pb.OBJECTIVE_MIN_VOLATILITY,
            risk_parameters=pb.RiskParameters(
                risk_free_rate=0.02, covariance_estimator=pb.COVARIANCE_ESTIMATOR_LEDOIT_WOLF
            ),
        ),
        cmd_pb.OptimizeRequest(
            portfolio_id="sp500-sector-limits", request_id=f"{run_tag}-sector", strategies=_strategies(),
            market_data=window, objective=pb.OBJECTIVE_MAX_SHARPE,
            constraints=pb.OptimizationConstraints(
                max_weight=0.15,
                sector_limits=[
                    pb.SectorLimit(sector="Information Technology", max_weight=0.20),
                    pb.SectorLimit(sector="Health Care", min_weight=0.25),
                    pb.SectorLimit(sector="Energy", max_weight=0.10),
                    pb.SectorLimit(sector="Financials", min_weight=0.05),
                ],
            ),
            risk_parameters=risk,
        ),
        cmd_pb.OptimizeRequest(
            portfolio_id="sp500-efficient-return", request_id=f"{run_tag}-efficient-return",
            strategies=_strategies(), market_data=window, objective=pb.OBJECTIVE_MIN_VOLATILITY,
            constraints=pb.OptimizationConstraints(min_return=0.15, max_weight=0.30), risk_parameters=risk,
        ),
    ]  # fmt: skip


def rolling_requests(run_tag: str) -> list[cmd_pb.OptimizeRequest]:
    """Max Sharpe re-optimized on the three years to each year end 2013-2021 (a history of runs)."""
    requests = []
    for year in range(2013, 2022):
        requests.append(
            cmd_pb.OptimizeRequest(
                portfolio_id="sp500-max-sharpe", request_id=f"{run_tag}-rolling-{year}", strategies=_strategies(),
                market_data=_window(year), objective=pb.OBJECTIVE_MAX_SHARPE,
                constraints=pb.OptimizationConstraints(max_weight=0.25),
                risk_parameters=pb.RiskParameters(risk_free_rate=0.02),
            )
        )  # fmt: skip
    return requests


def _weights_table(responses: list[cmd_pb.OptimizeResponse]) -> Table:
    table = Table(title="Optimal weights (%), S&P 500 stocks, 3 years to 2022-12-28")
    table.add_column("strategy")
    table.add_column("sector")
    for r in responses:
        table.add_column(r.portfolio_id.removeprefix("sp500-"), justify="right")
    for symbol, sector in SECTORS.items():
        cells = [
            f"{100 * r.optimal_weights[symbol]:.1f}" if r.optimal_weights[symbol] >= 5e-4 else "." for r in responses
        ]
        table.add_row(symbol, sector, *cells)
    return table


def _metrics_table(responses: list[cmd_pb.OptimizeResponse]) -> Table:
    table = Table(title="Metrics (annualised; risk-free rate 2 %)")
    for name in ("portfolio", "exp. return", "volatility", "Sharpe", "solver", "status", "iters", "solve ms",
                 "constraints ok", "missing data", "obs", "config v", "replayed"):  # fmt: skip
        table.add_column(name, justify="left" if name == "portfolio" else "right")
    for r in responses:
        m = r.optimization_metadata
        table.add_row(
            r.portfolio_id, f"{100 * r.expected_return:.2f}%", f"{100 * r.expected_volatility:.2f}%",
            f"{r.sharpe_ratio:.3f}", m.solver, pb.ConvergenceStatus.Name(m.convergence_status).split("_", 2)[-1],
            str(m.iterations), f"{m.optimization_time_ms:.1f}", "yes" if m.constraints_satisfied else "NO",
            m.missing_data_policy, str(m.observations), str(m.configuration_version), "yes" if m.replayed else "no",
        )  # fmt: skip
    return table


def _redacted(url: str) -> str:
    """The URL without its password (for printing)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


def run_demo(
    database_url: str | None = None, console: Console | None = None, plots_dir: Path = DEFAULT_PLOTS_DIR
) -> int:
    """Run the demo end to end; return the process exit code (0 on success).

    Parameters
    ----------
    database_url : str, optional
        A PostgreSQL + TimescaleDB database; default an embedded throwaway cluster.
    console : rich.console.Console, optional
        Where to print.
    plots_dir : pathlib.Path
        Directory the PNG charts are written to (created if missing).
    """
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=160)  # piped output (CI, logs): wide enough for the tables
    run_tag = f"demo-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    authority, issuer = DevCertificateAuthority(), DevTokenIssuer(issuer="stratopt-demo")
    server_cert = authority.issue("localhost", server_names=LOCAL_NAMES)
    with database(database_url) as url, tempfile.TemporaryDirectory(prefix="stratopt-demo-") as secrets:
        console.print(f"[bold]database[/] {_redacted(url)}")
        files = write_files(
            Path(secrets),
            {"server.pem": server_cert.certificate, "server.key": server_cert.private_key,
             "jwt-keys.pem": issuer.public_key_pem},
        )  # fmt: skip
        security = SecurityConfig(
            tls_cert_file=files["server.pem"],
            tls_key_file=files["server.key"],
            jwt_public_keys_file=files["jwt-keys.pem"],
            jwt_issuer=issuer.issuer,
            jwt_audience=issuer.audience,
        )
        thread = ServerThread(StratoptServer(url, address="127.0.0.1:0", security=security, recompute_tick_s=0.2))
        started = time.perf_counter()
        thread.start()
        console.print(
            f"[bold]server[/] listening on {thread.target} with TLS and bearer tokens "
            f"(ready in {time.perf_counter() - started:.1f} s)"
        )

        def as_principal(name: str, *roles: str) -> grpc.Channel:
            token = issuer.token(name, roles)
            return client.channel(
                thread.target, client.ChannelSecurity(root_certificates=authority.certificate, token=token)
            )

        try:
            with (
                as_principal("demo-operator", "admin") as ch,
                as_principal("demo-trader", "trade", "approve", "read") as trader,
                as_principal("demo-risk-desk", "approve", "read") as risk_desk,
            ):
                commands, queries = client.command_stub(ch), client.query_stub(ch)
                # The stocks' last day is held back: ingesting it later triggers a recompute.
                stocks = client.read_wide_prices(DATA_DIR / "sp500_dataset.csv.gz")
                last_day = cast(datetime, stocks["timestamp"].max())
                held_back = stocks.filter(stocks["timestamp"] == last_day)
                stored = commands.IngestMarketData(
                    client.bar_messages(stocks.filter(stocks["timestamp"] < last_day)), timeout=600
                )
                console.print(
                    f"[bold]ingested[/] sp500_dataset.csv.gz up to the day before {last_day:%Y-%m-%d}: "
                    f"{stored.rows_written} bars, {len(stored.symbols)} symbols"
                )
                stored = client.ingest_csv(commands, DATA_DIR / "sp500_index.csv.gz", quiet=True)
                console.print(f"[bold]ingested[/] sp500_index.csv.gz: {stored.rows_written} bars")
                batch = commands.BatchOptimize(
                    cmd_pb.BatchOptimizeRequest(requests=rolling_requests(run_tag)), timeout=120
                )
                console.print(
                    f"[bold]batch[/] rolling max Sharpe 2013-2021: {batch.succeeded} stored, {batch.failed} failed"
                )
                responses = [commands.Optimize(r, timeout=60) for r in demo_requests(run_tag)]
                console.print(_weights_table(responses))
                console.print(_metrics_table(responses))
                replay = commands.Optimize(demo_requests(run_tag)[0], timeout=60)
                replayed = replay.optimization_metadata.replayed
                console.print(f"[bold]idempotent retry[/] of {replay.request_id}: replayed={replayed}")
                try:
                    bad = demo_requests(run_tag + "-bad")[2]
                    bad.constraints.sector_limits.append(pb.SectorLimit(sector="Consumer Staples", min_weight=0.9))
                    commands.Optimize(bad, timeout=60)
                except grpc.RpcError as error:
                    console.print("[bold]infeasible request[/] answered with:\n" + client.describe_rpc_error(error))

                _print_queries(console, queries)
                _recompute_on_new_data(console, commands, queries, held_back)
                _analysis(console, commands, queries, plots_dir)
                _trading(
                    console,
                    client.trading_stub(trader),
                    client.trading_stub(risk_desk),
                    queries,
                    responses[0],
                    ex_grpc.ExecutionCommandServiceStub(trader),
                )
                _rotation_day(console, ch, trader, risk_desk, run_tag)
        finally:
            thread.stop()
            console.print("[bold]server[/] stopped")
    console.print("[bold]done[/]: the embedded database was stopped. `stratopt serve` keeps the service running.")
    return 0


def _print_queries(console: Console, queries: object) -> None:
    stub = queries  # typed loosely: the generated stub has no static types for mypy
    latest = Table(title="GetLatest (query side, read model)")
    for name in (
        "portfolio",
        "event time (UTC)",
        "exp. return",
        "volatility",
        "Sharpe",
        "config v",
        "top holdings",
    ):
        latest.add_column(name)
    for portfolio in (
        "sp500-max-sharpe",
        "sp500-min-volatility",
        "sp500-sector-limits",
        "sp500-efficient-return",
    ):
        event = stub.GetLatest(query_pb.GetLatestRequest(portfolio_id=portfolio), timeout=30).event  # type: ignore[attr-defined]
        top = sorted(event.weights.items(), key=lambda kv: -kv[1])[:3]
        latest.add_row(
            portfolio, event.timestamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
            f"{100 * event.expected_return:.2f}%", f"{100 * event.volatility:.2f}%", f"{event.sharpe_ratio:.3f}",
            str(event.configuration_version), ", ".join(f"{k} {100 * v:.0f}%" for k, v in top),
        )  # fmt: skip
    console.print(latest)

    history = Table(title="GetHistory sp500-max-sharpe (newest first, pages of 4)")
    for name in ("page", "event time (UTC)", "estimation window", "exp. return", "volatility", "Sharpe"):
        history.add_column(name)
    request = query_pb.GetHistoryRequest(portfolio_id="sp500-max-sharpe", page_size=4)
    page_number = 0
    while page_number < 3:
        page_number += 1
        page = stub.GetHistory(request, timeout=30)  # type: ignore[attr-defined]
        for event in page.events:
            m = event.metadata
            window = f"{m.window_start.ToDatetime():%Y-%m-%d} .. {m.window_end.ToDatetime():%Y-%m-%d}"
            history.add_row(
                str(page_number), event.timestamp.ToDatetime().strftime("%H:%M:%S.%f")[:-3], window,
                f"{100 * event.expected_return:.2f}%", f"{100 * event.volatility:.2f}%", f"{event.sharpe_ratio:.3f}",
            )  # fmt: skip
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    console.print(history)

    analytics = stub.GetPortfolioAnalytics(  # type: ignore[attr-defined]
        query_pb.GetPortfolioAnalyticsRequest(portfolio_id="sp500-max-sharpe", bucket_width=Duration(seconds=3600)),
        timeout=60,
    )
    table = Table(title="GetPortfolioAnalytics sp500-max-sharpe (DuckDB, 1-hour buckets)")
    for name in ("bucket start (UTC)", "runs", "mean Sharpe", "mean volatility", "mean exp. return",
                 "mean one-way turnover", "max turnover"):  # fmt: skip
        table.add_column(name, justify="right")
    for b in analytics.buckets:
        table.add_row(
            f"{b.bucket_start.ToDatetime():%Y-%m-%d %H:%M}", str(b.run_count), f"{b.mean_sharpe_ratio:.3f}",
            f"{100 * b.mean_volatility:.2f}%", f"{100 * b.mean_expected_return:.2f}%",
            f"{100 * b.mean_turnover:.1f}%", f"{100 * b.max_turnover:.1f}%",
        )  # fmt: skip
    console.print(table)


def _prices_on(day: str) -> dict[str, float]:
    """Closing prices of the 20 stocks on ``day`` (YYYY-MM-DD) from the bundled data set."""
    frame = client.read_wide_prices(DATA_DIR / "sp500_dataset.csv.gz")
    row = frame.filter(frame["timestamp"].dt.strftime("%Y-%m-%d") == day)
    return {str(symbol): float(price) for symbol, price in zip(row["symbol"], row["price"], strict=True)}


def _trading(
    console: Console,
    trading: object,
    approving: object,
    queries: object,
    optimized: cmd_pb.OptimizeResponse,
    execution: ex_grpc.ExecutionCommandServiceStub,
) -> None:
    """Weights to trades: allocation, drift, a rebalance recommendation and its approval.

    Whole shares for the max-Sharpe weights at mid-2022 prices, their drift at the end of 2022, the rebalance
    recommendation (above the approval limit) generated by the trader (``trading``), the trader's own approval
    refused and the risk desk's approval (``approving``). A rerun on the same database first cancels the orders
    the last run's approval left open (``ClaimOrders`` then ``CancelOrders``): the rebalance plans from the
    holdings plus open orders, and the book is stored afresh.
    """
    stub: Any = trading
    portfolio = optimized.portfolio_id
    left = execution.ClaimOrders(ex_pb.ClaimOrdersRequest(portfolio_id=portfolio, limit=1000), timeout=30).orders
    if left:
        execution.CancelOrders(
            ex_pb.CancelOrdersRequest(
                portfolio_id=portfolio, order_ids=[o.order_id for o in left], reason="demo: a new run"
            ),
            timeout=30,
        )
        console.print(f"[bold]CancelOrders[/]: {len(left)} orders the last demo run left open, cancelled")
    buy_day = _prices_on("2022-06-30")
    targets = [(s, w) for s, w in sorted(optimized.optimal_weights.items()) if w > 1e-4]
    total = sum(w for _, w in targets)
    request = trading_pb.AllocateSharesRequest(
        portfolio_id=portfolio, extra_cash=100_000.0, commission_per_trade=1.0, fee_per_share=0.005
    )
    for symbol, weight in targets:
        request.targets.add(symbol=symbol, target_weight=weight / total, price=buy_day[symbol])
    allocation = stub.AllocateShares(request, timeout=60)
    table = Table(title="AllocateShares: $100,000 into the max-Sharpe weights at 2022-06-30 prices")
    for name in ("symbol", "shares", "price", "value", "target", "actual"):
        table.add_column(name, justify="right")
    for line in allocation.lines:
        table.add_row(
            line.symbol, str(line.final_shares), f"{line.price:.2f}", f"{line.final_value:,.2f}",
            f"{100 * line.target_weight:.2f}%", f"{100 * line.actual_weight:.2f}%",
        )  # fmt: skip
    console.print(table)
    m = allocation.metrics
    console.print(
        f"[bold]allocation[/] used {100 * (1 - m.unused_fraction):.4f}% of ${m.budget:,.2f} "
        f"(unused ${m.unused_budget:.2f}, fees ${m.fees_total:.2f}) by {m.solver} in {m.solve_time_ms:.1f} ms"
    )
    holdings = trading_pb.UpsertHoldingsRequest(portfolio_id=portfolio, cash=m.unused_budget)
    for line in allocation.lines:
        position = holdings.positions.add(symbol=line.symbol, shares=float(line.final_shares))
        lot = position.lots.add(lot_id=f"{line.symbol}-2022-06-30", shares=float(line.final_shares))
        lot.cost_basis = line.price
        lot.acquired.FromDatetime(datetime(2022, 6, 30, tzinfo=UTC))
    stub.UpsertHoldings(holdings, timeout=30)
    drift = stub.CheckDrift(trading_pb.CheckDriftRequest(portfolio_id=portfolio), timeout=30)
    console.print(
        f"[bold]drift[/] at the latest stored prices (2022-12-28): {100 * drift.portfolio_drift:.2f}% two-way "
        f"(threshold {100 * drift.threshold:.0f}%, exceeded: {drift.exceeds_threshold}); breached: "
        + ", ".join(n.symbol for n in drift.names if n.breached)
    )
    as_of = trading_pb.GenerateRebalanceRequest(portfolio_id=portfolio)
    as_of.as_of.FromDatetime(datetime(2022, 12, 28, tzinfo=UTC))
    recommendation = stub.GenerateRebalance(as_of, timeout=60).recommendation
    trades = Table(title=f"GenerateRebalance: {trading_pb.RecommendationStatus.Name(recommendation.status)}")
    for name in ("symbol", "side", "shares", "value", "cost", "realised gain"):
        trades.add_column(name, justify="right")
    for trade in recommendation.trades:
        trades.add_row(
            trade.symbol, trading_pb.TradeSide.Name(trade.side).removeprefix("TRADE_SIDE_"), f"{trade.shares:.0f}",
            f"{trade.value:,.2f}", f"{trade.total_cost:.2f}", f"{trade.short_term_gain + trade.long_term_gain:,.2f}",
        )  # fmt: skip
    console.print(trades)
    console.print(
        f"[bold]rebalance[/] trade value ${recommendation.total_trade_value:,.2f} (approval limit "
        f"${recommendation.approval_limit:,.0f}), one-way turnover {100 * recommendation.turnover:.2f}%, "
        f"drift {100 * recommendation.drift_before:.2f}% → {100 * recommendation.drift_after:.2f}%, "
        f"estimated tax ${recommendation.estimated_tax:,.2f}"
    )
    if recommendation.status == trading_pb.RECOMMENDATION_STATUS_PENDING_APPROVAL:
        approval = trading_pb.ApproveRebalanceRequest(recommendation_id=recommendation.recommendation_id)
        try:
            stub.ApproveRebalance(approval, timeout=30)
            raise RuntimeError("the trader approved its own recommendation")
        except grpc.RpcError as error:
            console.print("[bold]trader's own approval[/] answered with: " + client.describe_rpc_error(error))
        approved = approving.ApproveRebalance(approval, timeout=30).recommendation  # type: ignore[attr-defined]
        console.print(
            f"[bold]approved[/] by {approved.decided_by}: {trading_pb.RecommendationStatus.Name(approved.status)}"
        )
    events = queries.ListRebalanceEvents(  # type: ignore[attr-defined]
        query_pb.ListRebalanceEventsRequest(portfolio_id=portfolio), timeout=30
    ).events
    console.print("[bold]rebalance events[/] (query side): " + ", ".join(e.event_type for e in reversed(events)))


NEW_YORK = "America/New_York"


def _momentum_scores(day: str) -> dict[str, float]:
    """12-month momentum (price on ``day`` over the price 252 trading days before, minus 1) from the data file."""
    frame = client.read_wide_prices(DATA_DIR / "sp500_dataset.csv.gz")
    scores = {}
    for symbol in sorted(SECTORS):
        rows = frame.filter(frame["symbol"] == symbol).sort("timestamp")
        prices: list[float] = rows.filter(rows["timestamp"].dt.strftime("%Y-%m-%d") <= day)["price"].to_list()
        scores[symbol] = prices[-1] / prices[-253] - 1.0
    return scores


def _rotation_day(
    console: Console, operator: grpc.Channel, trader: grpc.Channel, risk_desk: grpc.Channel, run_tag: str
) -> None:
    """A paper-traded rotation day on the stored prices (module docstring)."""
    from zoneinfo import ZoneInfo

    def at(hour: int, minute: int) -> Any:
        stamp = Timestamp()
        stamp.FromDatetime(datetime(2022, 12, 28, hour, minute, tzinfo=ZoneInfo(NEW_YORK)).astimezone(UTC))
        return stamp

    portfolio, signal_set = f"{run_tag}-rotation", f"{run_tag}-momentum"
    ops, rot = rot_grpc.RotationCommandServiceStub(operator), rot_grpc.RotationCommandServiceStub(trader)
    scores = _momentum_scores("2022-12-27")
    ops.IngestSignals(
        iter([rot_pb.IngestSignalsRequest(
            signal_set=signal_set,
            signals=[rot_pb.Signal(symbol=s, time=at(9, 0), score=v) for s, v in scores.items()],
        )]),
        timeout=30,
    )  # fmt: skip
    config = rot_pb.RotationConfiguration(
        portfolio_id=portfolio, enabled=True, signal_set=signal_set, lookback_periods=126,
        universe=[rot_pb.RotationMember(symbol=s, sector=SECTORS[s], cost_bps=5.0) for s in sorted(SECTORS)],
        # The stored prices are daily closes: nothing moves within the day, so T_max is 8 hours here, lest the
        # dead-money rule (no progress after T_max minutes) cut the morning's buys in the afternoon.
        greedy=rot_pb.GreedyParameters(k=5, k_buy=4, k_sell=8, name_cap=0.2, t_max_minutes=480),
    )  # fmt: skip
    stored = rot.UpsertRotationConfiguration(rot_pb.UpsertRotationConfigurationRequest(configuration=config))
    client.trading_stub(trader).UpsertHoldings(
        trading_pb.UpsertHoldingsRequest(portfolio_id=portfolio, cash=1_000_000.0), timeout=30
    )
    console.print(
        f"[bold]rotation[/] {portfolio}: greedy K = 5 (buy at rank <= 4, sell below rank 8), T_max 8 h, 20 names, "
        f"configuration v{stored.configuration.version}; signals: 12-month momentum of 2022-12-27"
    )
    execution = ex_grpc.ExecutionCommandServiceStub(trader)
    filled: dict[str, float] = {}
    cycles = Table(title="A paper-traded rotation day, 2022-12-28 (New York time)")
    for name in ("time", "decision", "policy", "orders", "fills", "reasons"):
        cycles.add_column(name)
    for hour, minute, note in ((9, 37, ""), (10, 32, ""), (11, 15, ""), (12, 2, "kill"), (15, 52, "")):
        if note == "kill":
            rot_grpc.RotationCommandServiceStub(risk_desk).SetKillSwitch(
                rot_pb.SetKillSwitchRequest(portfolio_id=portfolio, engaged=True, reason="demo: desk halt"),
                timeout=30,
            )
        decision = rot.RunRotationCycle(
            rot_pb.RunRotationCycleRequest(portfolio_id=portfolio, as_of=at(hour, minute)), timeout=60
        ).decision
        fills = ""
        if decision.action == rot_pb.ROTATION_ACTION_TRADE:
            executed = execution.ExecuteOrders(
                ex_pb.ExecuteOrdersRequest(portfolio_id=portfolio, as_of=at(hour, minute)), timeout=60
            )
            fills = ", ".join(f"{f.side} {f.shares:.0f} {f.symbol} @ {f.price:.2f}" for f in executed.fills)
            for f in executed.fills:
                filled[f.symbol] = filled.get(f.symbol, 0.0) + (f.shares if f.side == "BUY" else -f.shares)
        if note == "kill":
            rot_grpc.RotationCommandServiceStub(risk_desk).SetKillSwitch(
                rot_pb.SetKillSwitchRequest(portfolio_id=portfolio, engaged=False, reason="demo: resumed"),
                timeout=30,
            )
        reasons: dict[str, int] = {}
        for change in decision.changes:
            reasons[change.reason] = reasons.get(change.reason, 0) + 1
        cycles.add_row(
            f"{hour:02d}:{minute:02d}", rot_pb.RotationAction.Name(decision.action).removeprefix("ROTATION_ACTION_"),
            decision.policy_reason, str(len(decision.orders)), fills or "-",
            ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())),
        )  # fmt: skip
    console.print(cycles)
    queries = client.query_stub(trader)
    history = queries.ListRotationDecisions(query_pb.ListRotationDecisionsRequest(portfolio_id=portfolio), timeout=30)
    counts = queries.CountRotationReasons(query_pb.CountRotationReasonsRequest(portfolio_id=portfolio), timeout=30)
    holds = {k: v for b in counts.buckets for k, v in b.hold_reasons.items()}
    console.print(
        f"[bold]rotation history[/] (query side): {len(history.decisions)} decisions, "
        f"{sum(b.trades for b in counts.buckets)} TRADE, holds by reason {holds}"
    )
    reported = [ex_pb.ReportedPosition(symbol=s, shares=n) for s, n in sorted(filled.items())]
    reconciled = execution.Reconcile(ex_pb.ReconcileRequest(portfolio_id=portfolio, positions=reported), timeout=30)
    console.print(
        f"[bold]reconcile[/] of the stored holdings against the {len(reported)} filled positions: "
        f"{len(reconciled.breaks)} breaks, reconciled={reconciled.reconciled}"
    )


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _analysis(console: Console, commands: Any, queries: Any, plots_dir: Path) -> None:
    """Ex-ante against realised, a walk-forward backtest, and the PNG charts of both."""
    from stratopt.v1 import backtest_pb2 as bt_pb
    from stratopt_cli import plots

    realised = queries.GetRealisedPerformance(
        query_pb.GetRealisedPerformanceRequest(portfolio_id="sp500-max-sharpe", risk_free_rate=0.02), timeout=60
    )
    table = Table(
        title="GetRealisedPerformance sp500-max-sharpe: ex-ante (estimation window) against realised (the year after)"
    )
    for name in ("window end", "held to", "exp. return", "exp. vol", "exp. Sharpe", "realised return (ann.)",
                 "realised vol", "realised Sharpe", "max drawdown"):  # fmt: skip
        table.add_column(name, justify="right")
    for run in realised.runs:
        if not run.HasField("window_end") or not run.HasField("volatility"):
            continue
        table.add_row(
            f"{run.window_end.ToDatetime():%Y-%m-%d}", f"{run.period_end.ToDatetime():%Y-%m-%d}",
            _percent(run.expected_return), _percent(run.expected_volatility), _ratio(run.expected_sharpe_ratio),
            _percent(run.annualised_return if run.HasField("annualised_return") else None),
            _percent(run.volatility), _ratio(run.sharpe_ratio if run.HasField("sharpe_ratio") else None),
            _percent(run.max_drawdown if run.HasField("max_drawdown") else None),
        )  # fmt: skip
    console.print(table)

    request = bt_pb.BacktestRequest(
        portfolio_id="sp500-max-sharpe",
        estimation_periods=756,
        costs=bt_pb.BacktestCosts(commission_bps=5, spread_bps=10),
    )
    request.start.FromDatetime(datetime(2013, 1, 1, tzinfo=UTC))
    request.end.FromDatetime(datetime(2022, 12, 31, tzinfo=UTC))
    summary = None
    for message in commands.Backtest(request, timeout=600):  # progress messages, then the stored result
        if message.HasField("result"):
            summary = message.result
    assert summary is not None
    m = summary.metrics
    backtest = Table(
        title=f"Backtest sp500-max-sharpe (configuration v{summary.configuration_version}): monthly walk-forward "
        f"{summary.first_date.ToDatetime():%Y-%m-%d} .. {summary.last_date.ToDatetime():%Y-%m-%d}, 3-year windows, "
        "5 bps commission + 10 bps spread, buy and hold"
    )
    for name in ("decisions", "CAGR", "volatility", "Sharpe", "Sortino", "max drawdown", "Calmar",
                 "turnover / year (one-way)", "cost drag", "hit rate", "final value", "time"):  # fmt: skip
        backtest.add_column(name, justify="right")
    backtest.add_row(
        f"{summary.decisions} ({summary.failed_decisions} failed)", _percent(m.cagr), _percent(m.volatility),
        _ratio(m.sharpe_ratio), _ratio(m.sortino_ratio), _percent(m.max_drawdown), _ratio(m.calmar_ratio),
        f"{m.annual_turnover:.2f}", f"{m.cost_drag_bps:.1f} bps/yr", _percent(m.hit_rate), f"${m.final_value:,.0f}",
        f"{summary.computation_time_ms / 1000:.2f} s",
    )  # fmt: skip
    console.print(backtest)

    plots_dir.mkdir(parents=True, exist_ok=True)
    stored = queries.GetBacktest(query_pb.GetBacktestRequest(backtest_id=summary.backtest_id), timeout=60)
    times = [p.timestamp.ToDatetime(tzinfo=UTC) for p in stored.points]
    equity = [p.equity for p in stored.points]
    written = [
        plots.plot_equity(times, equity, plots_dir / "equity.png", title="Backtest equity: sp500-max-sharpe, monthly"),
        plots.plot_drawdown(times, equity, plots_dir / "drawdown.png", title="Backtest drawdown: sp500-max-sharpe"),
        plots.plot_weights(
            times, [list(p.weights) for p in stored.points], list(stored.summary.symbols),
            plots_dir / "backtest_weights.png", title="Backtest weights: sp500-max-sharpe", xlabel="Simulated close",
        ),
    ]  # fmt: skip
    frontier_request = demo_requests("frontier")[0]
    frontier = commands.ComputeEfficientFrontier(
        cmd_pb.ComputeEfficientFrontierRequest(problem=frontier_request, points=30), timeout=120
    )
    latest = queries.GetLatest(query_pb.GetLatestRequest(portfolio_id="sp500-max-sharpe"), timeout=30).event
    written.append(
        plots.plot_frontier(
            [p.volatility for p in frontier.points], [p.expected_return for p in frontier.points],
            [p.sharpe_ratio for p in frontier.points], plots_dir / "frontier.png",
            title="Efficient frontier 2020-2022, weights ≤ 25 % (sp500-max-sharpe)",
            portfolio=plots.PortfolioPoint("sp500-max-sharpe (stored)", latest.volatility, latest.expected_return),
        )
    )  # fmt: skip
    console.print("[bold]charts[/] " + ", ".join(str(path) for path in written))


def _recompute_on_new_data(console: Console, commands: Any, queries: Any, held_back: Any) -> None:
    """A configuration that re-runs on new market data: ingest the held-back day, see the run on a watch stream.

    The configuration (min volatility, Ledoit-Wolf, the last 756 returns) re-runs on new bars of its symbols after a
    0.5 s debounce (``RecomputePolicy``); the server's recompute worker claims the job the ingest enqueued.
    """
    config = cmd_pb.OptimizationConfiguration(
        portfolio_id="sp500-live",
        strategies=_strategies(),
        objective=pb.OBJECTIVE_MIN_VOLATILITY,
        risk_parameters=pb.RiskParameters(covariance_estimator=pb.COVARIANCE_ESTIMATOR_LEDOIT_WOLF),
        lookback_periods=756,
        enabled=True,
        recompute=cmd_pb.RecomputePolicy(on_market_data=True, debounce_seconds=0.5),
    )
    commands.UpsertConfiguration(cmd_pb.UpsertConfigurationRequest(configuration=config), timeout=30)
    before = commands.RunConfiguration(cmd_pb.RunConfigurationRequest(portfolio_id="sp500-live"), timeout=60).result
    stream = queries.WatchEvents(query_pb.WatchEventsRequest(portfolio_ids=["sp500-live"]), timeout=60)
    time.sleep(0.3)  # the stream subscribes first; the run comes after the debounce anyway
    day = held_back["timestamp"].max()
    started = time.perf_counter()
    ingested = commands.IngestMarketData(client.bar_messages(held_back), timeout=60)
    message = next(stream)
    seen = time.perf_counter() - started
    stream.cancel()
    event = message.event
    old, new = dict(before.optimal_weights), dict(event.weights)
    turnover = 0.5 * sum(abs(new.get(s, 0.0) - old.get(s, 0.0)) for s in set(old) | set(new))
    job = None
    for _ in range(50):  # the job is marked DONE just after its run commits
        newest = queries.ListRecomputeJobs(
            query_pb.ListRecomputeJobsRequest(portfolio_id="sp500-live", page_size=1), timeout=30
        ).jobs
        job = newest[0] if newest else None
        if job is not None and pb_status(job.status) in ("DONE", "DEAD"):
            break
        time.sleep(0.1)
    window_before = before.optimization_metadata.window_end.ToDatetime()
    window_after = event.metadata.window_end.ToDatetime()
    console.print(
        f"[bold]recompute on new data[/]: ingested {ingested.rows_written} bars of {day:%Y-%m-%d}; WatchEvents "
        f"delivered the re-run of sp500-live {seen:.2f} s later: estimation window end {window_before:%Y-%m-%d} → "
        f"{window_after:%Y-%m-%d}, volatility {100 * event.volatility:.2f}%, one-way turnover {100 * turnover:.2f}% "
        "against the run before"
        + (f"; recompute job {pb_status(job.status)} after {job.attempts} attempt(s)" if job is not None else "")
        + (
            " (the day was already stored by an earlier demo run on this database)"
            if window_before == window_after
            else ""
        )
    )


def pb_status(value: int) -> str:
    """``DONE`` for ``RECOMPUTE_JOB_STATUS_DONE`` (and so on)."""
    return query_pb.RecomputeJobStatus.Name(value).removeprefix("RECOMPUTE_JOB_STATUS_")  # type: ignore[arg-type]
