"""``stratopt plot``: charts of the service's answers as PNG files (the drawing itself is :mod:`stratopt_cli.plots`).

``plot frontier`` draws ``ComputeEfficientFrontier`` for a problem in a JSON file or a stored configuration;
``plot weights`` draws ``GetWeightHistory``. matplotlib is imported by the commands only, so the rest of the
command line starts without it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import grpc
import typer
from google.protobuf import json_format

from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import query_service_pb2 as query_pb
from stratopt.v1 import types_pb2 as pb
from stratopt_cli import client

if TYPE_CHECKING:
    from stratopt.v1 import command_service_pb2_grpc as cmd_grpc

plot_app = typer.Typer(
    help="Draw charts as PNG files: the efficient frontier, a portfolio's weights over time.",
    no_args_is_help=True,
)

DEFAULT_POINTS = 40
"""Frontier points when neither --points nor the request file says."""
MAX_ASSET_POINTS = 30
"""Single assets are marked on a frontier of at most this many strategies (one small call each)."""
ASSET_CALLS_IN_FLIGHT = 4
"""Concurrent single-asset calls (the server queues beyond its workers)."""

TargetOption = Annotated[
    str, typer.Option("--target", envvar="STRATOPT_TARGET", help="host:port of a running stratopt server.")
]
TitleOption = Annotated[str | None, typer.Option(help="Chart title (default: names the portfolio).")]


OutputOption = typer.Option("--output", "-o", dir_okay=False, help="PNG file to write.")


def _channel(target: str) -> grpc.Channel:
    # The top-level TLS and token options live in stratopt_cli.main, which imports this module: import it late.
    from stratopt_cli.main import _channel as main_channel

    return main_channel(target)


def _stop(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"stratopt plot: {message}", err=True)
    raise typer.Exit(code=code)


def _rpc_failed(error: grpc.RpcError) -> NoReturn:
    typer.echo(client.describe_rpc_error(error), err=True)
    raise typer.Exit(code=1)


# --- frontier -------------------------------------------------------------------------------------------------


def _request_from_file(path: Path) -> cmd_pb.ComputeEfficientFrontierRequest:
    """An ``OptimizeRequest`` (the problem) or a whole ``ComputeEfficientFrontierRequest`` (with ``problem``)."""
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "problem" in data:
            return json_format.ParseDict(data, cmd_pb.ComputeEfficientFrontierRequest())
        return cmd_pb.ComputeEfficientFrontierRequest(problem=json_format.ParseDict(data, cmd_pb.OptimizeRequest()))
    except (ValueError, json_format.ParseError) as error:  # JSONDecodeError is a ValueError
        raise typer.BadParameter(f"{path}: {error}", param_hint="REQUEST_FILE") from None


def _problem_from_configuration(config: cmd_pb.OptimizationConfiguration) -> cmd_pb.OptimizeRequest:
    """The problem RunConfiguration solves: the stored configuration on its window of stored prices."""
    problem = cmd_pb.OptimizeRequest(
        portfolio_id=config.portfolio_id,
        strategies=config.strategies,
        market_data=pb.MarketDataWindow(lookback_periods=config.lookback_periods, market_symbol=config.market_symbol),
        objective=config.objective,
        method=config.method,
        constraints=config.constraints,
        risk_parameters=config.risk_parameters,
    )
    if config.HasField("black_litterman"):
        problem.black_litterman.CopyFrom(config.black_litterman)
    return problem


def _single_asset(problem: cmd_pb.OptimizeRequest, symbol: str) -> cmd_pb.ComputeEfficientFrontierRequest:
    """A frontier of one portfolio: everything in ``symbol`` (the problem's other constraints dropped)."""
    pinned = cmd_pb.OptimizeRequest()
    pinned.CopyFrom(problem)
    pinned.constraints.Clear()
    for strategy in problem.strategies:
        bounds = pinned.constraints.strategy_bounds[strategy.symbol]
        bounds.min_weight = bounds.max_weight = 1.0 if strategy.symbol == symbol else 0.0
    return cmd_pb.ComputeEfficientFrontierRequest(problem=pinned, points=2)


def _asset_points(
    stub: cmd_grpc.OptimizationCommandServiceStub, problem: cmd_pb.OptimizeRequest, timeout: float
) -> dict[str, tuple[float, float]]:
    """Symbol -> (volatility, expected return) of each asset held alone, with the problem's estimators.

    Raises
    ------
    grpc.RpcError
        From any of the calls.
    """
    symbols = [strategy.symbol for strategy in problem.strategies]
    points: dict[str, tuple[float, float]] = {}
    for first in range(0, len(symbols), ASSET_CALLS_IN_FLIGHT):
        batch = symbols[first : first + ASSET_CALLS_IN_FLIGHT]
        calls = [stub.ComputeEfficientFrontier.future(_single_asset(problem, s), timeout=timeout) for s in batch]
        for symbol, call in zip(batch, calls, strict=True):
            point = call.result().points[0]
            points[symbol] = (point.volatility, point.expected_return)
    return points


@plot_app.command("frontier")
def frontier(
    request_file: Annotated[
        Path | None,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="The problem: an OptimizeRequest as JSON (its objective is ignored), or a whole "
            "ComputeEfficientFrontierRequest. Or use --configuration.",
        ),
    ] = None,
    configuration: Annotated[
        str | None,
        typer.Option(help="Instead of a file: this portfolio's stored configuration on its stored prices."),
    ] = None,
    portfolio_id: Annotated[
        str | None, typer.Option(help="Mark this portfolio's latest stored result (GetLatest).")
    ] = None,
    points: Annotated[
        int | None, typer.Option(min=2, max=200, help=f"Frontier points (default: the file's, else {DEFAULT_POINTS}).")
    ] = None,
    assets: Annotated[
        bool,
        typer.Option(
            "--assets/--no-assets",
            help=f"Mark each asset held alone (one small call each; up to {MAX_ASSET_POINTS} strategies).",
        ),
    ] = True,
    output: Annotated[Path, OutputOption] = Path("frontier.png"),
    title: TitleOption = None,
    timeout: Annotated[float, typer.Option(help="Deadline of each call in seconds.")] = 60.0,
    target: TargetOption = client.DEFAULT_TARGET,
) -> None:
    """Draw the efficient frontier (volatility x, expected return y, in %), its max-Sharpe and min-volatility points.

    Max Sharpe is the sampled point with the highest Sharpe ratio; assets alone use the problem's estimators only.
    """
    if (request_file is None) == (configuration is None):
        raise typer.BadParameter("give exactly one of REQUEST_FILE and --configuration")
    request = _request_from_file(request_file) if request_file is not None else None
    with _channel(target) as ch:
        commands = client.command_stub(ch)
        try:
            if request is None:
                stored = commands.GetConfiguration(
                    cmd_pb.GetConfigurationRequest(portfolio_id=configuration or ""), timeout=timeout
                ).configuration
                request = cmd_pb.ComputeEfficientFrontierRequest(problem=_problem_from_configuration(stored))
            request.points = points or request.points or DEFAULT_POINTS
            response = commands.ComputeEfficientFrontier(request, timeout=timeout)
            marked = None
            if portfolio_id is not None:
                event = (
                    client.query_stub(ch)
                    .GetLatest(query_pb.GetLatestRequest(portfolio_id=portfolio_id), timeout=timeout)
                    .event
                )
                when = event.timestamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M UTC")
                marked = (f"{portfolio_id} (latest, {when})", event.volatility, event.expected_return)
        except grpc.RpcError as error:
            _rpc_failed(error)
        singles = None
        strategies = len(request.problem.strategies)
        if assets and strategies > MAX_ASSET_POINTS:
            typer.echo(f"stratopt plot: {strategies} strategies, single assets not drawn (--no-assets)", err=True)
        elif assets:
            try:
                singles = _asset_points(commands, request.problem, timeout)
            except grpc.RpcError as error:  # the frontier is drawn all the same
                typer.echo(f"stratopt plot: single assets not drawn: {client.describe_rpc_error(error)}", err=True)

    from stratopt_cli.plots import PortfolioPoint, plot_frontier

    name = request.problem.portfolio_id
    try:
        plot_frontier(
            [p.volatility for p in response.points],
            [p.expected_return for p in response.points],
            [p.sharpe_ratio for p in response.points],
            output,
            title=title or ("Efficient frontier: " + name if name else "Efficient frontier"),
            assets=singles,
            portfolio=PortfolioPoint(*marked) if marked else None,
        )
    except (ValueError, OSError) as error:
        _stop(f"cannot draw {output}: {error}")
    typer.echo(f"wrote {output} ({len(response.points)} frontier points)")


# --- weights --------------------------------------------------------------------------------------------------


@plot_app.command("weights")
def weights(
    portfolio_id: str,
    start: Annotated[datetime | None, typer.Option(help="Inclusive lower bound on the run time (UTC).")] = None,
    end: Annotated[datetime | None, typer.Option(help="Exclusive upper bound on the run time (UTC).")] = None,
    max_runs: Annotated[
        int, typer.Option(min=0, max=10_000, help="Draw at most the latest this many runs (0: the server's 1000).")
    ] = 0,
    output: Annotated[Path, OutputOption] = Path("weights.png"),
    title: TitleOption = None,
    target: TargetOption = client.DEFAULT_TARGET,
) -> None:
    """Draw a portfolio's weights over its optimization runs (GetWeightHistory) as stacked areas."""
    request = query_pb.GetWeightHistoryRequest(portfolio_id=portfolio_id, max_runs=max_runs)
    if start is not None:
        request.start.FromDatetime(start)
    if end is not None:
        request.end.FromDatetime(end)
    with _channel(target) as ch:
        try:
            history = client.query_stub(ch).GetWeightHistory(request, timeout=60)
        except grpc.RpcError as error:
            _rpc_failed(error)
    if not history.runs:
        in_range = " in that range" if start is not None or end is not None else ""
        _stop(f"portfolio '{portfolio_id}' has no optimization runs{in_range}: nothing to draw")
    if history.truncated:
        typer.echo(f"stratopt plot: only the latest {len(history.runs)} runs are drawn (--max-runs)", err=True)

    from stratopt_cli.plots import plot_weights

    try:
        plot_weights(
            [run.timestamp.ToDatetime(tzinfo=UTC) for run in history.runs],
            [list(run.weights) for run in history.runs],
            list(history.symbols),
            output,
            title=title or f"Weights: {portfolio_id}",
        )
    except (ValueError, OSError) as error:
        _stop(f"cannot draw {output}: {error}")
    typer.echo(f"wrote {output} ({len(history.runs)} runs, {len(history.symbols)} symbols)")


def _backtest(backtest_id: str, target: str) -> query_pb.GetBacktestResponse:
    with _channel(target) as ch:
        try:
            response: query_pb.GetBacktestResponse = client.query_stub(ch).GetBacktest(
                query_pb.GetBacktestRequest(backtest_id=backtest_id), timeout=60
            )
        except grpc.RpcError as error:
            _rpc_failed(error)
    if not response.points:
        _stop(f"backtest '{backtest_id}' has no simulated closes: nothing to draw")
    return response


def _backtest_title(response: query_pb.GetBacktestResponse, what: str) -> str:
    summary = response.summary
    return (
        f"{what}: {summary.portfolio_id} backtest {summary.backtest_id[:8]} "
        f"(CAGR {summary.metrics.cagr:.1%}, max drawdown {summary.metrics.max_drawdown:.1%})"
    )


@plot_app.command("equity")
def equity(
    backtest_id: Annotated[str, typer.Argument(help="A stored backtest (stratopt backtest / list-backtests).")],
    output: Annotated[Path, OutputOption] = Path("equity.png"),
    title: TitleOption = None,
    target: TargetOption = client.DEFAULT_TARGET,
) -> None:
    """Draw a stored backtest's equity curve (GetBacktest)."""
    response = _backtest(backtest_id, target)

    from stratopt_cli.plots import plot_equity

    try:
        plot_equity(
            [p.timestamp.ToDatetime(tzinfo=UTC) for p in response.points],
            [p.equity for p in response.points],
            output,
            title=title or _backtest_title(response, "Equity"),
        )
    except (ValueError, OSError) as error:
        _stop(f"cannot draw {output}: {error}")
    typer.echo(f"wrote {output} ({len(response.points)} closes)")


@plot_app.command("drawdown")
def drawdown(
    backtest_id: Annotated[str, typer.Argument(help="A stored backtest (stratopt backtest / list-backtests).")],
    output: Annotated[Path, OutputOption] = Path("drawdown.png"),
    title: TitleOption = None,
    target: TargetOption = client.DEFAULT_TARGET,
) -> None:
    """Draw a stored backtest's drawdown (equity / running maximum − 1, in %) under its peak."""
    response = _backtest(backtest_id, target)

    from stratopt_cli.plots import plot_drawdown

    try:
        plot_drawdown(
            [p.timestamp.ToDatetime(tzinfo=UTC) for p in response.points],
            [p.equity for p in response.points],
            output,
            title=title or _backtest_title(response, "Drawdown"),
        )
    except (ValueError, OSError) as error:
        _stop(f"cannot draw {output}: {error}")
    typer.echo(f"wrote {output} ({len(response.points)} closes)")


@plot_app.command("backtest-weights")
def backtest_weights(
    backtest_id: Annotated[str, typer.Argument(help="A stored backtest (stratopt backtest / list-backtests).")],
    output: Annotated[Path, OutputOption] = Path("backtest_weights.png"),
    title: TitleOption = None,
    target: TargetOption = client.DEFAULT_TARGET,
) -> None:
    """Draw a stored backtest's weights at every simulated close (drift between rebalances) as stacked areas."""
    response = _backtest(backtest_id, target)

    from stratopt_cli.plots import plot_weights

    try:
        plot_weights(
            [p.timestamp.ToDatetime(tzinfo=UTC) for p in response.points],
            [list(p.weights) for p in response.points],
            list(response.summary.symbols),
            output,
            title=title or _backtest_title(response, "Weights"),
            xlabel="Simulated close",
        )
    except (ValueError, OSError) as error:
        _stop(f"cannot draw {output}: {error}")
    typer.echo(f"wrote {output} ({len(response.points)} closes, {len(response.summary.symbols)} symbols)")
