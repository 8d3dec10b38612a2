"""GetSectorExposure through gRPC against a pandas recomputation from GetHistory and GetConfiguration."""

from __future__ import annotations

import uuid
from datetime import UTC
from typing import Any

import grpc
import pandas as pd
import pytest

from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import query_service_pb2 as query_pb
from stratopt.v1 import types_pb2 as pb
from tests.conftest import DATA_DIR

pytestmark = pytest.mark.integration

SECTORS = {"AAPL": "tech", "MSFT": "tech", "JPM": "financials", "BAC": "financials", "KO": "staples", "XOM": ""}


def _request(
    returns: pd.DataFrame, portfolio_id: str, sectors: dict[str, str], **fields: Any
) -> cmd_pb.OptimizeRequest:
    request = cmd_pb.OptimizeRequest(portfolio_id=portfolio_id, objective=pb.OBJECTIVE_MAX_SHARPE, **fields)
    for when in returns.index:
        request.returns.timestamps.add().FromDatetime(when.to_pydatetime().replace(tzinfo=UTC))
    for column in returns.columns:
        request.strategies.add(symbol=column, sector=sectors[column], returns=returns[column].tolist())
    return request


def test_sector_exposure_equals_the_weights_summed_by_each_runs_sectors(commands: Any, queries: Any) -> None:
    prices = pd.read_csv(DATA_DIR / "sp500_dataset.csv.gz", parse_dates=["Date"], index_col="Date")[list(SECTORS)]
    returns = prices.pct_change().dropna()
    portfolio_id = f"sectors-{uuid.uuid4().hex[:8]}"
    for end in ("2016", "2017", "2018"):
        commands.Optimize(_request(returns.loc[:end].iloc[-504:], portfolio_id, SECTORS), timeout=60)
    moved = {**SECTORS, "MSFT": "software", "XOM": "energy"}  # a new configuration version reclassifies two names
    shorts = pb.OptimizationConstraints(min_weight=-0.2, max_weight=0.6, min_net_exposure=1, max_net_exposure=1)
    commands.Optimize(_request(returns.loc[:"2019"].iloc[-504:], portfolio_id, moved, constraints=shorts), timeout=60)

    answer = queries.GetSectorExposure(query_pb.GetSectorExposureRequest(portfolio_id=portfolio_id), timeout=30)
    events = queries.GetHistory(query_pb.GetHistoryRequest(portfolio_id=portfolio_id), timeout=30).events[::-1]
    assert [r.event_id for r in answer.runs] == [e.event_id for e in events]
    assert not answer.truncated
    for run, event in zip(answer.runs, events, strict=True):
        config = commands.GetConfiguration(
            cmd_pb.GetConfigurationRequest(portfolio_id=portfolio_id, version=event.configuration_version), timeout=10
        ).configuration
        sector_of = {s.symbol: s.sector or "(no sector)" for s in config.strategies}
        weights = pd.Series(dict(event.weights))
        net = weights.groupby(weights.index.map(sector_of)).sum()
        gross = weights.abs().groupby(weights.index.map(sector_of)).sum()
        got_net = dict(zip(answer.sectors, run.net, strict=True))
        got_gross = dict(zip(answer.sectors, run.gross, strict=True))
        for sector in answer.sectors:
            assert got_net[sector] == pytest.approx(net.get(sector, 0.0), abs=1e-12)
            assert got_gross[sector] == pytest.approx(gross.get(sector, 0.0), abs=1e-12)
    assert set(answer.sectors) == {"tech", "financials", "staples", "(no sector)", "software", "energy"}
    last = dict(zip(answer.sectors, answer.runs[-1].net, strict=True))
    assert last["(no sector)"] == 0.0 and sum(last.values()) == pytest.approx(1.0)
    assert min(events[-1].weights.values()) < -1e-6  # a short: gross and net differ for its sector

    latest = queries.GetSectorExposure(
        query_pb.GetSectorExposureRequest(portfolio_id=portfolio_id, max_runs=2), timeout=30
    )
    assert latest.truncated and [r.event_id for r in latest.runs] == [e.event_id for e in events[-2:]]
    with pytest.raises(grpc.RpcError) as bad:
        queries.GetSectorExposure(query_pb.GetSectorExposureRequest(portfolio_id=portfolio_id, max_runs=10_001))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_sector_exposure_command_prints_one_row_per_run(commands: Any, server_target: str) -> None:
    from typer.testing import CliRunner

    from stratopt_cli.main import app

    prices = pd.read_csv(DATA_DIR / "sp500_dataset.csv.gz", parse_dates=["Date"], index_col="Date")[list(SECTORS)]
    portfolio_id = f"sectors-cli-{uuid.uuid4().hex[:8]}"
    commands.Optimize(_request(prices.pct_change().dropna().iloc[-504:], portfolio_id, SECTORS), timeout=60)
    result = CliRunner().invoke(app, ["sector-exposure", portfolio_id, "--target", server_target])
    assert result.exit_code == 0, result.output
    header, row = result.stdout.strip().splitlines()
    assert header.split(",") == ["timestamp", "event_id", "(no sector)", "financials", "staples", "tech"]
    assert sum(float(v) for v in row.split(",")[2:]) == pytest.approx(1.0)
