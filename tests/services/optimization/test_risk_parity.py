"""Risk budgeting against closed forms, NumPy risk contributions, skfolio and Riskfolio-Lib.

Truth: the closed forms for a diagonal covariance (w_i ∝ √b_i / σ_i) and for two assets (Roncalli, 2013: with
x = w₁σ₁ / (w₂σ₂) and β = b₁/b₂, x² + ρ(1 − β)x − β = 0); risk contributions w_i (Σw)_i / wᵀΣw recomputed
here with NumPy from the returned weights; skfolio's ``RiskBudgeting(risk_measure=VARIANCE)`` and Riskfolio-Lib's
``Portfolio.rp_optimization(model="Classic", rm="MV")`` (both Clarabel, with tightened tolerances) on the same
sample covariance of skfolio's S&P 500 data set.
"""

from __future__ import annotations

import dataclasses
import warnings

import grpc
import jax
import numpy as np
import pandas as pd
import pytest
import riskfolio as rp
from skfolio import RiskMeasure
from skfolio.moments import EmpiricalCovariance
from skfolio.optimization import RiskBudgeting
from skfolio.prior import EmpiricalPrior

from services.errors import InfeasibleError, InvalidInputError
from services.optimization import (
    RiskParityResult,
    bucket_size,
    check_no_binding_bounds,
    risk_budgeting,
    risk_contributions,
    warm_up,
)
from services.optimization._risk_budgeting import SOLVER
from stratopt.rpc_errors import status_code

RC_RTOL = 1e-8
"""Required max_i |RC_i / b_i − 1| on real data (the solver reaches ~1e-15)."""
REFERENCE_ATOL = 1e-7
"""Largest weight difference to skfolio and Riskfolio-Lib run with the tight Clarabel settings below (observed
1e-12 to 1e-9; with the libraries' default tolerances it is ~4e-6)."""
TIGHT_CLARABEL = {"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12, "tol_ktratio": 1e-10}
SKFOLIO_EXAMPLE_BUDGETS = {"AAPL": 1.5, "GE": 0.2, "JPM": 0.2}
"""Non-uniform budgets of skfolio's RiskBudgeting docstring example (others 1), before normalisation."""


# --- fixtures and helpers -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sp500_returns(sp500_prices: pd.DataFrame) -> pd.DataFrame:
    """Daily simple returns of the 20 stocks, 1990-2022 (8312 rows, complete)."""
    return sp500_prices.pct_change().iloc[1:]


@pytest.fixture(scope="module")
def sp500_covariance(sp500_returns: pd.DataFrame) -> np.ndarray:
    """Sample covariance (ddof = 1) by NumPy."""
    return np.cov(sp500_returns.to_numpy(), rowvar=False)


@pytest.fixture(scope="module")
def example_budgets(sp500_returns: pd.DataFrame) -> np.ndarray:
    return np.array([SKFOLIO_EXAMPLE_BUDGETS.get(str(name), 1.0) for name in sp500_returns.columns])


def numpy_relative_rc_error(weights: np.ndarray, covariance: np.ndarray, budgets: np.ndarray) -> float:
    """max_i |RC_i / b_i − 1| with RC_i = w_i (Σw)_i / wᵀΣw, b normalised, computed independently."""
    marginal = covariance @ weights
    contributions = weights * marginal / (weights @ marginal)
    return float(np.max(np.abs(contributions / (budgets / budgets.sum()) - 1.0)))


def factor_covariance(n_assets: int, seed: int) -> np.ndarray:
    """Daily covariance of a 5-factor model (as ``benchmarks.risk_parity_speed``).

    Market loadings ~ N(1, 0.3), style loadings ~ N(0, 0.4), 1 %/day factor volatility, idiosyncratic
    volatility uniform in [0.8 %, 2 %]/day.
    """
    rng = np.random.default_rng(seed)
    loadings = np.column_stack([rng.normal(1.0, 0.3, n_assets), rng.normal(0.0, 0.4, (n_assets, 4))])
    idiosyncratic = rng.uniform(0.008, 0.02, n_assets)
    covariance: np.ndarray = 1e-4 * loadings @ loadings.T + np.diag(idiosyncratic**2)
    return covariance


def skfolio_weights(returns: pd.DataFrame, budgets: np.ndarray | None) -> np.ndarray:
    model = RiskBudgeting(
        risk_measure=RiskMeasure.VARIANCE,
        risk_budget=budgets,
        prior_estimator=EmpiricalPrior(covariance_estimator=EmpiricalCovariance()),
        solver_params=TIGHT_CLARABEL,
    )
    model.fit(returns)
    covariance = model.prior_estimator_.return_distribution_.covariance
    assert np.array_equal(covariance, np.cov(returns.to_numpy(), rowvar=False))
    return np.asarray(model.weights_, dtype=np.float64)


def riskfolio_weights(returns: pd.DataFrame, budgets: np.ndarray | None) -> np.ndarray:
    portfolio = rp.Portfolio(returns=returns)
    portfolio.assets_stats(method_mu="hist", method_cov="hist")
    assert np.allclose(portfolio.cov.to_numpy(), np.cov(returns.to_numpy(), rowvar=False), rtol=1e-14, atol=0.0)
    portfolio.solvers = ["CLARABEL"]
    portfolio.sol_params = {"CLARABEL": TIGHT_CLARABEL}
    b = None if budgets is None else (budgets / budgets.sum()).reshape(-1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cvxpy's "Solution may be inaccurate" at these tolerances
        frame = portfolio.rp_optimization(model="Classic", rm="MV", rf=0, b=b, hist=True)
    return np.asarray(frame.to_numpy().ravel(), dtype=np.float64)


# --- closed forms -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("budgets", [None, np.array([1.0, 2.0, 3.0, 4.0, 0.5])])
def test_diagonal_covariance_closed_form(budgets: np.ndarray | None) -> None:
    volatilities = np.array([0.10, 0.25, 0.05, 0.40, 0.18])
    b = np.ones(5) if budgets is None else budgets
    expected = np.sqrt(b) / volatilities
    expected /= expected.sum()

    result = risk_budgeting(np.diag(volatilities**2), budgets)

    np.testing.assert_allclose(result.weights, expected, rtol=1e-13)
    np.testing.assert_allclose(result.risk_contributions, b / b.sum(), rtol=1e-13)
    assert result.converged
    assert result.iterations == 0  # the starting point is the diagonal closed form


@pytest.mark.parametrize("correlation", [-0.8, -0.3, 0.0, 0.5, 0.95])
@pytest.mark.parametrize("budgets", [None, np.array([0.8, 0.2]), np.array([1.0, 9.0])])
def test_two_asset_closed_form(correlation: float, budgets: np.ndarray | None) -> None:
    sigma_1, sigma_2 = 0.2, 0.07
    covariance = np.array(
        [[sigma_1**2, correlation * sigma_1 * sigma_2], [correlation * sigma_1 * sigma_2, sigma_2**2]]
    )
    beta = 1.0 if budgets is None else budgets[0] / budgets[1]
    # x = w₁σ₁ / (w₂σ₂) solves x (x + ρ) / (1 + ρ x) = β, the positive root of x² + ρ(1 − β)x − β = 0.
    linear = correlation * (1.0 - beta)
    x = (-linear + np.sqrt(linear**2 + 4.0 * beta)) / 2.0
    ratio = x * sigma_2 / sigma_1
    expected = np.array([ratio, 1.0]) / (1.0 + ratio)

    result = risk_budgeting(covariance, budgets)

    np.testing.assert_allclose(result.weights, expected, rtol=1e-12)
    assert result.converged
    if budgets is None:  # ERC: w₁σ₁ = w₂σ₂ whatever the correlation
        assert result.weights[0] * sigma_1 == pytest.approx(result.weights[1] * sigma_2, rel=1e-12)


def test_single_strategy() -> None:
    result = risk_budgeting(np.array([[0.04]]))
    np.testing.assert_array_equal(result.weights, [1.0])
    np.testing.assert_array_equal(result.risk_contributions, [1.0])


def test_perfectly_correlated_singular_covariance() -> None:
    """A singular but PSD Σ still has a unique risk-budgeting portfolio (the log term makes f strictly convex)."""
    volatilities = np.array([0.1, 0.2, 0.4])
    covariance = np.outer(volatilities, volatilities)  # ρ = 1: RC_i = w_i σ_i / Σ w_j σ_j
    budgets = np.array([0.5, 0.3, 0.2])
    expected = budgets / volatilities
    expected /= expected.sum()

    result = risk_budgeting(covariance, budgets)

    np.testing.assert_allclose(result.weights, expected, rtol=1e-12)


# --- real data --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("budgeting", ["erc", "skfolio_example"])
def test_sp500_risk_contributions_match_budgets(
    budgeting: str, sp500_covariance: np.ndarray, example_budgets: np.ndarray
) -> None:
    budgets = None if budgeting == "erc" else example_budgets
    b = np.ones(20) if budgets is None else budgets

    result = risk_budgeting(sp500_covariance, budgets)

    independent_error = numpy_relative_rc_error(result.weights, sp500_covariance, b)
    assert independent_error <= RC_RTOL
    assert independent_error <= 1e-12  # what the solver actually reaches (default tolerance)
    assert result.max_relative_rc_error == pytest.approx(independent_error, abs=1e-15)
    assert result.converged
    assert result.iterations <= 20
    assert np.all(result.weights > 0.0)
    assert result.weights.sum() == pytest.approx(1.0, abs=1e-15)
    np.testing.assert_allclose(result.risk_contributions, b / b.sum(), rtol=1e-12)
    assert result.risk_contributions.sum() == pytest.approx(1.0, abs=1e-14)


@pytest.mark.parametrize("budgeting", ["erc", "skfolio_example"])
def test_sp500_matches_skfolio(
    budgeting: str, sp500_returns: pd.DataFrame, sp500_covariance: np.ndarray, example_budgets: np.ndarray
) -> None:
    budgets = None if budgeting == "erc" else example_budgets

    reference = skfolio_weights(sp500_returns, budgets)
    result = risk_budgeting(sp500_covariance, budgets)

    np.testing.assert_allclose(result.weights, reference, rtol=0.0, atol=REFERENCE_ATOL)


@pytest.mark.parametrize("budgeting", ["erc", "skfolio_example"])
def test_sp500_matches_riskfolio(
    budgeting: str, sp500_returns: pd.DataFrame, sp500_covariance: np.ndarray, example_budgets: np.ndarray
) -> None:
    budgets = None if budgeting == "erc" else example_budgets

    reference = riskfolio_weights(sp500_returns, budgets)
    result = risk_budgeting(sp500_covariance, budgets)

    np.testing.assert_allclose(result.weights, reference, rtol=0.0, atol=REFERENCE_ATOL)


def test_budgets_and_covariance_scale_free(sp500_covariance: np.ndarray, example_budgets: np.ndarray) -> None:
    base = risk_budgeting(sp500_covariance, example_budgets)
    scaled = risk_budgeting(252.0 * sp500_covariance, 7.0 * example_budgets)

    np.testing.assert_allclose(scaled.weights, base.weights, rtol=1e-12)


# --- large synthetic ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("uniform", [True, False])
def test_n500_synthetic_converges(uniform: bool) -> None:
    covariance = factor_covariance(500, seed=7)
    budgets = None if uniform else np.random.default_rng(8).uniform(0.1, 10.0, 500)
    b = np.ones(500) if budgets is None else budgets

    result = risk_budgeting(covariance, budgets)

    assert result.converged
    assert result.iterations <= 30
    assert numpy_relative_rc_error(result.weights, covariance, b) <= 1e-12


# --- solver behaviour ------------------------------------------------------------------------------------------


def test_iteration_limit_reports_not_converged(sp500_covariance: np.ndarray, example_budgets: np.ndarray) -> None:
    result = risk_budgeting(sp500_covariance, example_budgets, max_iterations=1)

    assert result.iterations == 1
    assert not result.converged
    assert result.max_relative_rc_error > 1e-12
    assert result.max_relative_rc_error == pytest.approx(
        numpy_relative_rc_error(result.weights, sp500_covariance, example_budgets), abs=1e-15
    )


def test_loose_tolerance_stops_early(sp500_covariance: np.ndarray, example_budgets: np.ndarray) -> None:
    tight = risk_budgeting(sp500_covariance, example_budgets)
    loose = risk_budgeting(sp500_covariance, example_budgets, tolerance=1e-3)

    assert loose.converged
    assert loose.max_relative_rc_error <= 1e-3
    assert loose.iterations < tight.iterations


def test_result_shape_and_solver(sp500_covariance: np.ndarray) -> None:
    result = risk_budgeting(sp500_covariance)

    assert isinstance(result, RiskParityResult)
    assert result.solver == SOLVER == "JAX_NEWTON"
    assert result.weights.shape == result.risk_contributions.shape == (20,)
    assert result.weights.dtype == np.float64
    assert result.solve_time_ms > 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.iterations = 0  # type: ignore[misc]


def test_process_wide_x64_flag_untouched(sp500_covariance: np.ndarray) -> None:
    before = jax.config.jax_enable_x64
    risk_budgeting(sp500_covariance)
    assert jax.config.jax_enable_x64 == before


def test_warm_up_compiles_a_size() -> None:
    assert warm_up(7) > 0.0
    result = risk_budgeting(np.diag([0.01, 0.04, 0.09, 0.16, 0.25, 0.36, 0.49]))
    assert result.converged
    with pytest.raises(InvalidInputError) as error:
        warm_up(0)
    assert _field(error) == "n_assets"


def test_risk_contributions_helper() -> None:
    covariance = np.array([[0.04, 0.01], [0.01, 0.09]])
    weights = np.array([0.6, 0.4])
    variance = weights @ covariance @ weights
    expected = np.array([0.6 * (0.024 + 0.004), 0.4 * (0.006 + 0.036)]) / variance

    np.testing.assert_allclose(risk_contributions(weights, covariance), expected, rtol=1e-15)


# --- validation --------------------------------------------------------------------------------------------------


def _field(error: pytest.ExceptionInfo[InvalidInputError]) -> str:
    assert status_code(error.value) is grpc.StatusCode.INVALID_ARGUMENT
    (violation,) = error.value.field_violations
    return violation.field


@pytest.mark.parametrize(("index", "value"), [(2, 0.0), (0, -1.0), (4, np.nan), (1, np.inf)])
def test_invalid_budget_names_its_index(index: int, value: float) -> None:
    budgets = np.ones(5)
    budgets[index] = value
    with pytest.raises(InvalidInputError) as error:
        risk_budgeting(np.eye(5), budgets)
    assert _field(error) == f"risk_budgets[{index}]"


def test_budgets_of_wrong_length() -> None:
    with pytest.raises(InvalidInputError) as error:
        risk_budgeting(np.eye(3), np.ones(4))
    assert _field(error) == "risk_budgets"


def test_zero_variance_names_the_strategy() -> None:
    covariance = np.diag([0.04, 0.09, 0.0, 0.01])
    with pytest.raises(InvalidInputError) as error:
        risk_budgeting(covariance)
    assert _field(error) == "covariance[2, 2]"
    assert "variance" in error.value.message


@pytest.mark.parametrize(
    ("covariance", "field", "words"),
    [
        (np.ones((2, 3)), "covariance", "square"),
        (np.zeros((0, 0)), "covariance", "square"),
        (np.array([[1.0, np.nan], [np.nan, 1.0]]), "covariance[0, 1]", "finite"),
        (np.array([[1.0, 0.5], [0.4, 1.0]]), "covariance", "symmetric"),
        (np.array([[1.0, 2.0], [2.0, 1.0]]), "covariance", "positive semidefinite"),
    ],
)
def test_invalid_covariance(covariance: np.ndarray, field: str, words: str) -> None:
    with pytest.raises(InvalidInputError) as error:
        risk_budgeting(covariance)
    assert _field(error) == field
    assert words in error.value.message


@pytest.mark.parametrize(("keyword", "value"), [("tolerance", 0.0), ("tolerance", np.nan), ("max_iterations", 0)])
def test_invalid_solver_settings(keyword: str, value: float) -> None:
    with pytest.raises(InvalidInputError) as error:
        risk_budgeting(np.eye(2), **{keyword: value})  # type: ignore[arg-type]
    assert _field(error) == keyword


@pytest.mark.parametrize(
    "covariance",
    [
        np.array([[1.0, -1.0], [-1.0, 1.0]]),  # ρ = −1, equal volatilities: (½, ½) has zero variance
        np.array([[1.0, 1.0, -1.0], [1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]]),  # (¼, ¼, ½) has zero variance
        np.cov(np.random.default_rng(3).standard_normal((4, 13)), rowvar=False),  # T = 4 < N = 13
    ],
)
def test_zero_variance_long_only_portfolio_has_no_solution(covariance: np.ndarray) -> None:
    """No risk-budgeting portfolio exists when some long-only portfolio has zero variance (f unbounded below)."""
    with pytest.raises(InfeasibleError) as caught:
        risk_budgeting(covariance)
    assert status_code(caught.value) is grpc.StatusCode.FAILED_PRECONDITION
    assert [v.type for v in caught.value.precondition_violations] == ["SINGULAR_COVARIANCE"]


@pytest.mark.parametrize(
    ("lower", "upper", "field"),
    [
        (np.full(3, 0.05), None, "lower_bounds[0]"),
        (None, np.array([1.0, 0.3, 1.0]), "upper_bounds[1]"),
        (np.array([0.0, np.nan, 0.0]), None, "lower_bounds[1]"),
    ],
)
def test_binding_bounds_are_unsupported(lower: np.ndarray | None, upper: np.ndarray | None, field: str) -> None:
    with pytest.raises(InvalidInputError) as error:
        check_no_binding_bounds(lower, upper)
    assert _field(error) == field
    assert "not supported" in error.value.message


@pytest.mark.parametrize(("lower", "upper"), [(None, None), (np.zeros(3), np.ones(3)), (np.full(3, -1.0), None)])
def test_non_binding_bounds_are_accepted(lower: np.ndarray | None, upper: np.ndarray | None) -> None:
    check_no_binding_bounds(lower, upper)


@pytest.mark.parametrize(("n", "size"), [(2, 2), (5, 6), (20, 24), (100, 128), (500, 512), (2000, 2048)])
def test_the_solver_is_compiled_per_bucket_of_sizes(n: int, size: int) -> None:
    """Sizes pad to 2^k or 3·2^k; the padded block is independent, so the weights are those of the N-block."""
    assert bucket_size(n) == size
    if n <= 100:
        rng = np.random.default_rng(n)
        factor = rng.standard_normal((3 * n, n))
        covariance = factor.T @ factor / (3 * n)
        weights = risk_budgeting(covariance).weights
        contributions = weights * (covariance @ weights) / (weights @ covariance @ weights)
        np.testing.assert_allclose(contributions, 1 / n, rtol=1e-10)
