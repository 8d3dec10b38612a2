"""QP rotation: the engine's answer against plain cvxpy with every constraint family on, and its reasons."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pandas as pd
import pytest

from services.errors import InvalidInputError
from services.estimation import estimate_betas
from services.rotation import (
    Action,
    QpRotationInputs,
    QpRotationParams,
    ReasonCode,
    qp_rotation,
    risk_scaled_z,
    shrunk_correlation,
)
from tests.services.market_data import DATA_DIR

SECTORS = {
    "AAPL": "TECH", "AMD": "TECH", "MSFT": "TECH", "BBY": "RETAIL", "HD": "RETAIL", "WMT": "RETAIL",
    "BAC": "FIN", "JPM": "FIN", "CVX": "ENERGY", "XOM": "ENERGY", "RRC": "ENERGY", "GE": "INDUSTRIAL",
    "JNJ": "HEALTH", "LLY": "HEALTH", "MRK": "HEALTH", "PFE": "HEALTH", "UNH": "HEALTH",
    "KO": "STAPLES", "PEP": "STAPLES", "PG": "STAPLES",
}  # fmt: skip


@pytest.fixture(scope="module")
def book(sp500_prices: pd.DataFrame) -> QpRotationInputs:
    """20 real S&P 500 stocks, scores, correlation, betas, costs, sectors and a long-short book.

    Scores: 60-day momentum over the 20-day σ; a year of returns for the shrunk correlation and the betas
    against the S&P 500 index; current weights a long-short book inside the limits.
    """
    window = sp500_prices.iloc[-253:]
    returns = window.pct_change(fill_method=None).iloc[1:]
    index = pd.read_csv(DATA_DIR / "sp500_index.csv.gz", index_col=0, parse_dates=True).squeeze("columns")
    market = index.pct_change(fill_method=None).reindex(returns.index).to_numpy()
    momentum = (window.iloc[-1] / window.iloc[-61] - 1.0).to_numpy()
    sigma = returns.iloc[-20:].std().to_numpy()
    symbols = tuple(window.columns)
    current = np.array([0.05, -0.05, 0.02, 0.0, -0.03, 0.04, 0.0, 0.06, -0.02, 0.03] * 2)
    return QpRotationInputs(
        symbols=symbols,
        z=risk_scaled_z(momentum, sigma),
        correlation=shrunk_correlation(returns.to_numpy()),
        current_weights=current,
        costs_bps=np.linspace(2.0, 20.0, len(symbols)),
        betas=estimate_betas(returns.to_numpy(), market),
        sectors=tuple(SECTORS[s] for s in symbols),
    )


def plain_cvxpy(inputs: QpRotationInputs, p: QpRotationParams) -> tuple[float, np.ndarray]:
    """The same program written out in cvxpy, solved by Clarabel at tight tolerances."""
    n = len(inputs.symbols)
    w = cp.Variable(n)
    w0 = inputs.current_weights
    costs = inputs.costs_bps
    assert costs is not None
    assert inputs.betas is not None
    objective = inputs.z @ w - p.risk_aversion * cp.quad_form(w, cp.psd_wrap(inputs.correlation))
    objective -= p.gamma * costs @ cp.abs(w - w0)
    constraints = [
        cp.abs(w) <= p.name_cap,
        cp.norm1(w) <= p.max_gross,
        cp.abs(cp.sum(w)) <= p.max_abs_net,
        cp.norm1(w - w0) <= p.max_turnover,
        cp.abs(w - w0) <= p.max_name_turnover,
        cp.abs(inputs.betas @ w) <= p.beta_tolerance,
    ]
    for sector in set(inputs.sectors):
        members = np.array([s == sector for s in inputs.sectors], dtype=float)
        constraints.append(cp.abs(members @ w) <= p.sector_cap)
    problem = cp.Problem(cp.Maximize(objective), constraints)
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)
    return float(problem.value), np.asarray(w.value)


@pytest.mark.parametrize(
    "params",
    [
        QpRotationParams(),  # the specification's defaults: turnover and per-name turnover bind
        QpRotationParams(max_turnover=2.0, max_name_turnover=0.2, gamma=0.001),  # caps, sectors, net, beta bind
        QpRotationParams(max_turnover=2.0, max_name_turnover=0.2, gamma=0.001, beta_tolerance=0.001, max_gross=0.6),
    ],
)
def test_the_qp_rotation_matches_plain_cvxpy_in_objective(book: QpRotationInputs, params: QpRotationParams) -> None:
    decision = qp_rotation(book, params)
    theirs, their_weights = plain_cvxpy(book, params)
    assert decision.objective_value == pytest.approx(theirs, rel=1e-7, abs=1e-9)
    w, w0 = decision.target_weights, book.current_weights
    tol = 1e-7
    assert np.all(np.abs(w) <= params.name_cap + tol)
    assert np.abs(w).sum() <= params.max_gross + tol
    assert abs(w.sum()) <= params.max_abs_net + tol
    assert np.abs(w - w0).sum() <= params.max_turnover + tol
    assert np.all(np.abs(w - w0) <= params.max_name_turnover + tol)
    assert book.betas is not None
    assert abs(book.betas @ w) <= params.beta_tolerance + tol
    np.testing.assert_allclose(w, their_weights, atol=1e-5)


def test_every_traded_or_held_name_has_the_reason_its_limits_give(book: QpRotationInputs) -> None:
    params = QpRotationParams()
    decision = qp_rotation(book, params)
    w, w0 = decision.target_weights, book.current_weights
    by_symbol = {c.symbol: c for c in decision.changes}
    assert set(by_symbol) == {s for s, a, b in zip(book.symbols, w, w0, strict=True) if abs(a) > 1e-6 or abs(b) > 1e-6}
    assert "BOUND_TURNOVER" in decision.binding  # the defaults' 0.2 two-way turnover is tight for this book
    for i, symbol in enumerate(book.symbols):
        change = by_symbol.get(symbol)
        if change is None:
            continue
        moved = abs(w[i] - w0[i]) > 1e-6
        assert (change.action is Action.HOLD) == (not moved)
        if change.reason is ReasonCode.BOUND_NAME_CAP:
            assert abs(w[i]) == pytest.approx(params.name_cap, abs=1e-6)
        if change.reason is ReasonCode.BOUND_NAME_TURNOVER:
            assert abs(w[i] - w0[i]) == pytest.approx(params.max_name_turnover, abs=1e-6)
        if change.reason is ReasonCode.HOLD_COST:
            # Not traded because |∂U/∂w_i| ≤ γ c_i: the subgradient condition of the cost term at Δw_i = 0.
            assert abs(change.numbers["marginal_utility"]) <= change.numbers["cost_utility"] + 1e-6


def test_a_name_whose_gain_does_not_cover_its_cost_is_held() -> None:
    # Two uncorrelated names, A held at 0.05. Its marginal utility z_A − 2λ w_A = 0.01 − 0.01 = 0 ≤ γ c:
    # held. B has z = 1 and no cost: bought up to its per-name turnover cap 0.05.
    inputs = QpRotationInputs(
        symbols=("A", "B"),
        z=np.array([0.01, 1.0]),
        correlation=np.eye(2),
        current_weights=np.array([0.05, 0.0]),
        costs_bps=np.array([10.0, 0.0]),
    )
    decision = qp_rotation(inputs, QpRotationParams())
    reasons = {c.symbol: (c.action, c.reason) for c in decision.changes}
    assert reasons["A"] == (Action.HOLD, ReasonCode.HOLD_COST)
    assert reasons["B"] == (Action.BUY, ReasonCode.BOUND_NAME_TURNOVER)
    np.testing.assert_allclose(decision.target_weights, [0.05, 0.05], atol=1e-7)


def test_bad_qp_inputs_name_their_field() -> None:
    with pytest.raises(InvalidInputError, match="max_turnover"):
        QpRotationParams(max_turnover=0.0)
    with pytest.raises(InvalidInputError, match="costs_bps"):
        qp_rotation(
            QpRotationInputs(
                symbols=("A", "B"),
                z=np.ones(2),
                correlation=np.eye(2),
                current_weights=np.zeros(2),
                costs_bps=np.array([-1.0, 0.0]),
            )
        )
