"""The engine's entry point: moments and return-history inputs agree, missing data is reported as counted.

Truth: pandas (rows with at least one observation, the common window), PyPortfolioOpt's estimates and
``EfficientFrontier`` on the same data, and the consistency of the two input kinds.
"""

from __future__ import annotations

import pickle

import grpc
import numpy as np
import pandas as pd
import pytest
from pypfopt import EfficientFrontier, expected_returns, risk_models

from services.engine import OptimizationJob, run_optimization
from services.errors import DeadlineExceededError, InvalidInputError
from services.optimization import Objective, PortfolioProblem
from services.types import EstimationSettings, MissingDataPolicy, Moments, ReturnHistory
from stratopt.rpc_errors import status_code
from tests.services.market_data import return_history


def long_only(objective: Objective, tickers: list[str], **options: float) -> PortfolioProblem:
    n = len(tickers)
    return PortfolioProblem(
        symbols=tuple(tickers),
        objective=objective,
        lower_bounds=np.zeros(n),
        upper_bounds=np.full(n, 0.35),
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def sp500_returns(sp500_prices: pd.DataFrame) -> pd.DataFrame:
    return sp500_prices.iloc[-757:].pct_change(fill_method=None).iloc[1:]


@pytest.fixture(scope="module")
def stock_returns(stock_prices: pd.DataFrame) -> pd.DataFrame:
    return stock_prices.pct_change(fill_method=None).iloc[1:]


@pytest.mark.parametrize("objective", list(Objective))
def test_moments_input_and_history_input_give_the_same_portfolio(
    sp500_returns: pd.DataFrame, objective: Objective
) -> None:
    tickers = list(sp500_returns.columns)
    problem = long_only(objective, tickers, risk_free_rate=0.02, risk_aversion=3.0)
    settings = EstimationSettings()
    from_history = run_optimization(
        OptimizationJob(problem=problem, inputs=return_history(sp500_returns), settings=settings)
    )
    # Moments computed independently by pypfopt from the same returns equal the engine's estimates ...
    moments = Moments(
        expected_returns=expected_returns.mean_historical_return(sp500_returns, returns_data=True).to_numpy(),
        covariance=risk_models.sample_cov(sp500_returns, returns_data=True).to_numpy(),
    )
    np.testing.assert_allclose(from_history.estimated.moments.expected_returns, moments.expected_returns, rtol=1e-12)
    np.testing.assert_allclose(from_history.estimated.moments.covariance, moments.covariance, rtol=1e-12)
    # ... so the caller-given moments must give the same portfolio.
    from_moments = run_optimization(OptimizationJob(problem=problem, inputs=moments, settings=settings))
    np.testing.assert_allclose(from_moments.result.weights, from_history.result.weights, rtol=0.0, atol=1e-8)
    assert from_moments.result.objective_value == pytest.approx(from_history.result.objective_value, rel=1e-9)
    assert from_moments.estimated.missing_data_policy == "NONE"
    assert from_moments.estimated.observations == 0
    assert from_history.estimated.missing_data_policy == "PAIRWISE"
    assert from_history.estimated.observations == len(sp500_returns)
    assert from_history.result.constraints_satisfied
    assert from_history.total_time_ms >= from_history.result.solve_time_ms > 0.0


@pytest.mark.parametrize("objective", [Objective.MIN_VOLATILITY, Objective.MAX_SHARPE])
def test_moments_input_hands_the_validation_cholesky_factor_to_the_active_set(
    sp500_returns: pd.DataFrame, objective: Objective, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run_optimization`` passes ``validate_moments``' factor on: Σ is not factorised twice, the answer unchanged.

    Truth: PyPortfolioOpt's answer on the same moments (to its solver's tolerance) and the engine's own answer
    without the factor (``optimize_mean_variance``, to 1e-12).
    """
    from services.optimization import _active_set, objective_value_of, optimize_mean_variance

    tickers = list(sp500_returns.columns)
    problem = long_only(objective, tickers, risk_free_rate=0.02)
    moments = Moments(
        expected_returns=expected_returns.mean_historical_return(sp500_returns, returns_data=True).to_numpy(),
        covariance=risk_models.sample_cov(sp500_returns, returns_data=True).to_numpy(),
    )
    moments = Moments(moments.expected_returns, (moments.covariance + moments.covariance.T) / 2)
    seen: list[bool] = []
    real_seed = _active_set._Problem.seed

    def seed(self: _active_set._Problem, cholesky: np.ndarray | None) -> None:
        seen.append(cholesky is not None)
        real_seed(self, cholesky)

    monkeypatch.setattr(_active_set._Problem, "seed", seed)
    outcome = run_optimization(OptimizationJob(problem=problem, inputs=moments, settings=EstimationSettings()))
    assert seen == [True] and outcome.result.solve_path == "ACTIVE_SET"
    plain = optimize_mean_variance(problem, moments)
    np.testing.assert_allclose(outcome.result.weights, plain.weights, rtol=0.0, atol=1e-12)
    frontier = EfficientFrontier(
        pd.Series(moments.expected_returns), pd.DataFrame(moments.covariance), weight_bounds=(0.0, 0.35)
    )
    if objective is Objective.MAX_SHARPE:
        frontier.max_sharpe(risk_free_rate=0.02)
    else:
        frontier.min_volatility()
    reference = np.array(list(frontier.clean_weights(cutoff=0.0, rounding=None).values()))
    ours, theirs = outcome.result.objective_value, objective_value_of(reference, problem, moments)
    if objective is Objective.MAX_SHARPE:  # the exact answer is never worse than the library's solver
        assert theirs - 1e-12 <= ours <= theirs * (1 + 1e-6)
    else:
        assert theirs * (1 - 1e-6) <= ours <= theirs + 1e-12


def test_missing_data_history_reports_pairwise_and_the_rows_observed(
    stock_prices: pd.DataFrame, stock_returns: pd.DataFrame
) -> None:
    tickers = list(stock_returns.columns)
    # Add two market holidays (all strategies missing) to the listing gaps already there.
    holidays = pd.DataFrame(
        np.nan, index=stock_returns.index[[10, 4000]] + pd.Timedelta(hours=6), columns=stock_returns.columns
    )
    history = pd.concat([stock_returns, holidays]).sort_index()
    assert history.isna().any(axis=None) and not history.notna().all(axis=1).all()
    job = OptimizationJob(
        problem=long_only(Objective.MAX_SHARPE, tickers, risk_free_rate=0.02),
        inputs=return_history(history),
        settings=EstimationSettings(),
    )
    outcome = run_optimization(job)
    assert outcome.estimated.missing_data_policy == "PAIRWISE"
    assert outcome.estimated.observations == int(history.notna().any(axis=1).sum())
    assert outcome.estimated.observations == len(history) - 2
    assert outcome.estimated.window_start == history.dropna(how="all").index[0].to_datetime64()
    # The same problem solved by pypfopt on its own estimates from the prices.
    frontier = EfficientFrontier(
        expected_returns.mean_historical_return(stock_prices),
        risk_models.sample_cov(stock_prices),
        weight_bounds=(0.0, 0.35),
    )
    frontier.max_sharpe(risk_free_rate=0.02)
    sharpe = frontier.portfolio_performance(risk_free_rate=0.02)[2]
    assert outcome.result.objective_value == pytest.approx(sharpe, rel=1e-6)


def test_common_window_history_reports_the_complete_rows(stock_returns: pd.DataFrame) -> None:
    tickers = list(stock_returns.columns)
    job = OptimizationJob(
        problem=long_only(Objective.MIN_VOLATILITY, tickers),
        inputs=return_history(stock_returns),
        settings=EstimationSettings(missing_data_policy=MissingDataPolicy.COMMON_WINDOW),
    )
    outcome = run_optimization(job)
    complete = stock_returns.dropna()
    assert outcome.estimated.missing_data_policy == "COMMON_WINDOW"
    assert outcome.estimated.observations == len(complete)
    assert outcome.estimated.window_start == complete.index[0].to_datetime64()
    assert outcome.estimated.window_end == complete.index[-1].to_datetime64()
    frontier = EfficientFrontier(None, complete.cov() * 252, weight_bounds=(0.0, 0.35))
    frontier.min_volatility()
    assert outcome.result.objective_value == pytest.approx(frontier.portfolio_performance()[1] ** 2, rel=1e-6)


def test_invalid_moments_input_is_rejected(sp500_returns: pd.DataFrame) -> None:
    tickers = list(sp500_returns.columns)
    covariance = sp500_returns.cov().to_numpy() * 252
    covariance[0, 1] += 0.01  # asymmetric
    job = OptimizationJob(
        problem=long_only(Objective.MIN_VOLATILITY, tickers),
        inputs=Moments(expected_returns=np.zeros(len(tickers)), covariance=covariance),
        settings=EstimationSettings(),
    )
    with pytest.raises(InvalidInputError) as caught:
        run_optimization(job)
    assert [v.field for v in caught.value.field_violations] == ["covariance"]


def test_a_spent_time_limit_raises_deadline_exceeded(sp500_returns: pd.DataFrame) -> None:
    tickers = list(sp500_returns.columns)
    job = OptimizationJob(
        problem=long_only(Objective.MIN_VOLATILITY, tickers),
        inputs=return_history(sp500_returns),
        settings=EstimationSettings(),
        time_limit_s=1e-9,  # gone before the estimation finishes
    )
    with pytest.raises(DeadlineExceededError) as caught:
        run_optimization(job)
    assert status_code(caught.value) is grpc.StatusCode.DEADLINE_EXCEEDED


def test_jobs_and_outcomes_pickle_round_trip(sp500_returns: pd.DataFrame) -> None:
    # The command side ships jobs to worker processes and outcomes back.
    tickers = list(sp500_returns.columns)
    job = OptimizationJob(
        problem=long_only(Objective.MAX_SHARPE, tickers, risk_free_rate=0.02),
        inputs=ReturnHistory(
            returns=sp500_returns.to_numpy(), timestamps=sp500_returns.index.to_numpy().astype("datetime64[us]")
        ),
        settings=EstimationSettings(),
    )
    outcome = run_optimization(pickle.loads(pickle.dumps(job)))
    again = pickle.loads(pickle.dumps(outcome))
    np.testing.assert_array_equal(again.result.weights, outcome.result.weights)
    assert again.estimated.observations == outcome.estimated.observations


def _outcome_or_error(job: OptimizationJob) -> object:
    from services.errors import StratoptError

    try:
        return run_optimization(job)
    except StratoptError as error:
        return error


def _errors_as_one_by_one(jobs: list[OptimizationJob], batched: list, atol: float) -> int:
    """Each batch outcome against run_optimization's: the same error (type and message) or the same weights.

    Returns how many were errors.
    """
    from services.errors import StratoptError

    errors = 0
    for job, outcome in zip(jobs, batched, strict=True):
        single = _outcome_or_error(job)
        if isinstance(single, StratoptError):
            assert isinstance(outcome, type(single)) and str(outcome) == str(single)
            errors += 1
        else:
            assert not isinstance(outcome, StratoptError)
            np.testing.assert_allclose(outcome.result.weights, single.result.weights, atol=atol)
    return errors


def test_a_batch_of_jobs_answers_as_one_by_one(sp500_returns: pd.DataFrame) -> None:
    """run_optimization_batch against run_optimization, job by job: batched, single-path and failing jobs mixed."""
    from services.engine import Method, MethodSettings, run_optimization_batch
    from services.errors import StratoptError
    from services.optimization import RiskMeasure, SectorLimit

    tickers = list(sp500_returns.columns)
    history = return_history(sp500_returns)
    rng = np.random.default_rng(5)
    jobs = []
    for k in range(24):
        chosen = sorted(rng.choice(tickers, int(rng.integers(4, 12)), replace=False))
        window = return_history(sp500_returns[chosen].iloc[k * 10 : k * 10 + 500])
        objective = (Objective.MAX_SHARPE, Objective.MIN_VOLATILITY, Objective.MAX_QUADRATIC_UTILITY)[k % 3]
        problem = long_only(objective, chosen, risk_free_rate=0.01, risk_aversion=3.0)
        jobs.append(OptimizationJob(problem=problem, inputs=window, settings=EstimationSettings()))
    # Jobs the batch leaves to the single path: a sector limit, CVaR, HRP, and two that fail.
    sectors = PortfolioProblem(
        symbols=tuple(tickers[:6]), objective=Objective.MIN_VOLATILITY, lower_bounds=np.zeros(6),
        upper_bounds=np.ones(6), sectors=("a", "a", "a", "b", "b", "b"),
        sector_limits=(SectorLimit(sector="a", max_weight=0.4),),
    )  # fmt: skip
    jobs.append(OptimizationJob(problem=sectors, inputs=history.__class__(
        returns=history.returns[:, :6], timestamps=history.timestamps), settings=EstimationSettings()))  # fmt: skip
    jobs.append(
        OptimizationJob(
            problem=long_only(Objective.MIN_VOLATILITY, tickers),
            inputs=history,
            settings=EstimationSettings(),
            method=MethodSettings(risk_measure=RiskMeasure.CVAR),
        )
    )
    jobs.append(
        OptimizationJob(
            problem=long_only(Objective.MIN_VOLATILITY, tickers),
            inputs=history,
            settings=EstimationSettings(),
            method=MethodSettings(method=Method.HIERARCHICAL_RISK_PARITY),
        )
    )
    too_small = PortfolioProblem(
        symbols=tuple(tickers[:3]), objective=Objective.MAX_SHARPE, lower_bounds=np.zeros(3),
        upper_bounds=np.full(3, 0.2),
    )  # fmt: skip
    small_moments = Moments(expected_returns=np.array([0.1, 0.2, 0.3]), covariance=np.diag([0.04, 0.09, 0.16]))
    jobs.append(OptimizationJob(problem=too_small, inputs=small_moments, settings=EstimationSettings()))
    mismatched = Moments(expected_returns=np.zeros(3), covariance=np.eye(3))  # 3 moments for 2 names
    jobs.append(
        OptimizationJob(
            problem=long_only(Objective.MIN_VOLATILITY, tickers[:2]), inputs=mismatched, settings=EstimationSettings()
        )
    )

    batched = run_optimization_batch(jobs)
    assert len(batched) == len(jobs)
    paths = []
    for job, outcome in zip(jobs, batched, strict=True):
        single = _outcome_or_error(job)
        if isinstance(single, StratoptError):
            assert isinstance(outcome, type(single)) and str(outcome) == str(single)
            continue
        assert not isinstance(outcome, StratoptError)
        paths.append(outcome.result.solve_path)
        np.testing.assert_allclose(outcome.result.weights, single.result.weights, atol=1e-9)
        assert outcome.result.performance.sharpe_ratio == pytest.approx(
            single.result.performance.sharpe_ratio, rel=1e-9
        )
        np.testing.assert_allclose(outcome.risk_contributions, single.risk_contributions, atol=1e-9)
        assert outcome.max_drawdown == pytest.approx(single.max_drawdown, rel=1e-9)
    assert paths.count("BATCH_ACTIVE_SET") >= 20  # the eligible jobs went through the batch
    assert len(set(paths)) >= 2  # and the others through their own paths


def test_efficient_return_and_risk_jobs_in_a_batch_answer_as_one_by_one(sp500_returns: pd.DataFrame) -> None:
    """Efficient return and efficient risk through run_optimization_batch against run_optimization.

    The single path is Clarabel here: the same objective to 1e-7, the targets met, infeasible targets the same
    error, and a sector limit left to the single path.
    """
    from services.engine import run_optimization_batch
    from services.errors import InfeasibleError, StratoptError
    from services.optimization import SectorLimit

    tickers = list(sp500_returns.columns)
    rng = np.random.default_rng(9)
    jobs, kinds = [], []
    for k in range(16):
        chosen = sorted(rng.choice(tickers, int(rng.integers(5, 14)), replace=False))
        window = return_history(sp500_returns[chosen].iloc[k * 12 : k * 12 + 500])
        if k % 2:
            problem = long_only(Objective.MIN_VOLATILITY, chosen, min_return=0.12 + 0.02 * (k % 4))
        else:
            problem = long_only(Objective.MAX_RETURN, chosen, max_volatility=0.17 + 0.01 * (k % 3))
        jobs.append(OptimizationJob(problem=problem, inputs=window, settings=EstimationSettings()))
        kinds.append("return" if k % 2 else "risk")
    chosen = tickers[:6]
    window = return_history(sp500_returns[chosen])
    # A volatility cap below the minimum volatility and a return above the best: the single path's errors.
    for problem in (
        long_only(Objective.MAX_RETURN, chosen, max_volatility=0.01),
        long_only(Objective.MIN_VOLATILITY, chosen, min_return=5.0),
        PortfolioProblem(
            symbols=tuple(chosen), objective=Objective.MIN_VOLATILITY, lower_bounds=np.zeros(6),
            upper_bounds=np.ones(6), min_return=0.1, sectors=("a", "a", "a", "b", "b", "b"),
            sector_limits=(SectorLimit(sector="a", max_weight=0.4),),
        ),
    ):  # fmt: skip
        jobs.append(OptimizationJob(problem=problem, inputs=window, settings=EstimationSettings()))
        kinds.append("other")

    batched = run_optimization_batch(jobs)
    paths = []
    for job, kind, outcome in zip(jobs, kinds, batched, strict=True):
        single = _outcome_or_error(job)
        if isinstance(single, StratoptError):
            assert isinstance(single, InfeasibleError)
            assert isinstance(outcome, type(single)) and str(outcome) == str(single)
            continue
        assert not isinstance(outcome, StratoptError) and not isinstance(single, StratoptError)
        paths.append(outcome.result.solve_path)
        w, reference = outcome.result.weights, single.result.weights
        assert outcome.result.constraints_satisfied
        assert outcome.result.objective_value == pytest.approx(single.result.objective_value, rel=1e-7)
        np.testing.assert_allclose(w, reference, atol=1e-5)
        if kind == "return":
            assert outcome.result.performance.expected_return >= job.problem.min_return - 1e-12
        elif kind == "risk":
            assert outcome.result.performance.volatility <= job.problem.max_volatility * (1 + 1e-9)
        else:
            assert outcome.result.solve_path != "BATCH_ACTIVE_SET"  # group limits: the single path
    assert paths.count("BATCH_ACTIVE_SET") >= 0.85 * (len(paths) - 1)  # the rest (not certified): the single path
    assert isinstance(batched[-3], InfeasibleError) and isinstance(batched[-2], InfeasibleError)


def test_a_batch_validates_given_moments_as_one_by_one() -> None:
    """Moments checked together per N: each bad one gets run_optimization's own error, a singular PSD Σ passes."""
    from services.engine import _valid_moments_together, run_optimization_batch

    rng = np.random.default_rng(4)
    factor = rng.normal(size=(4, 6)) * 0.1
    good = factor @ factor.T + np.diag([0.02, 0.03, 0.04, 0.05])
    mu = np.array([0.05, 0.07, 0.09, 0.11])
    asymmetric, negative, indefinite, missing = good.copy(), good.copy(), good.copy(), good.copy()
    asymmetric[0, 1] += 0.01
    negative[2, 2] = -0.01
    indefinite[0, 1] = indefinite[1, 0] = 1.0
    missing[3, 3] = np.nan
    loading = np.array([0.1, 0.2, 0.3, 0.4])
    singular = np.outer(loading, loading) + np.diag([0.0, 0.0, 0.0, 0.0])  # rank one: PSD, no Cholesky factor
    errors = 0
    # The stacked check passes the good ones; a singular Σ fails the stack's factorisation: each on its own.
    for covariances in ([good, asymmetric, negative, indefinite, missing, good], [good, singular]):
        jobs = [
            OptimizationJob(
                problem=long_only(Objective.MIN_VOLATILITY, ["a", "b", "c", "d"]),
                inputs=Moments(expected_returns=mu, covariance=c),
                settings=EstimationSettings(),
            )
            for c in covariances
        ]
        # Only the good ones skip the per-job check (the certificate would also refuse an asymmetric Σ's answer).
        assert _valid_moments_together(jobs) == {k for k, c in enumerate(covariances) if c is good}
        errors += _errors_as_one_by_one(jobs, run_optimization_batch(jobs), atol=1e-9)
    assert errors == 4


def test_bad_given_moments_get_their_own_error_whatever_the_problem() -> None:
    """Bad moments beside every kind of problem a batch builds: each job gets run_optimization's own error.

    The batch solves the plain problems while it checks their moments, and builds the others (a return target,
    a volatility cap, a sector limit) before solving; a bad Σ or μ must still give the moments' error, never sink
    the batch or leak an answer.
    """
    from services.engine import run_optimization_batch
    from services.optimization import SectorLimit

    rng = np.random.default_rng(8)
    factor = rng.normal(size=(4, 6)) * 0.1
    good = factor @ factor.T + np.diag([0.02, 0.03, 0.04, 0.05])
    mu = np.array([0.05, 0.07, 0.09, 0.11])
    nan_sigma, indefinite, infinite_mu = good.copy(), good.copy(), mu.copy()
    nan_sigma[1, 2] = nan_sigma[2, 1] = np.nan
    indefinite[0, 1] = indefinite[1, 0] = 1.0
    infinite_mu[0] = np.inf
    moments = [
        Moments(expected_returns=mu, covariance=good),
        Moments(expected_returns=mu, covariance=nan_sigma),
        Moments(expected_returns=mu, covariance=indefinite),
        Moments(expected_returns=infinite_mu, covariance=good),
        Moments(expected_returns=mu[:3], covariance=good[:3, :3]),  # 3 moments for 4 names
        Moments(expected_returns=mu, covariance=np.ones((4, 5))),  # not square
    ]
    names = ["a", "b", "c", "d"]
    problems = [
        long_only(Objective.MAX_SHARPE, names),
        long_only(Objective.MIN_VOLATILITY, names, min_return=0.08),
        long_only(Objective.MAX_RETURN, names, max_volatility=0.25),
        PortfolioProblem(
            symbols=tuple(names), objective=Objective.MIN_VOLATILITY, lower_bounds=np.zeros(4),
            upper_bounds=np.ones(4), sectors=("x", "x", "y", "y"),
            sector_limits=(SectorLimit(sector="x", max_weight=0.4),),
        ),
    ]  # fmt: skip
    jobs = [
        OptimizationJob(problem=problem, inputs=moment, settings=EstimationSettings())
        for moment in moments
        for problem in problems
    ]
    errors = _errors_as_one_by_one(jobs, run_optimization_batch(jobs), atol=1e-8)
    assert errors == 5 * len(problems)  # every bad moment, beside every problem


def test_a_batch_answers_each_jobs_unexpected_exception_as_its_own(
    sp500_returns: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug raised for one job (not a domain error) is that job's answer; the others are answered as one by one.

    Narrow fakes of the engine's own steps stand in for the bugs: the estimation of one job raises LinAlgError,
    the single path of another RuntimeError; then the batched solve itself raises, and every job is answered by
    the single path instead (the same weights as ``run_optimization``).
    """
    import services.engine as engine
    from services.engine import Method, MethodSettings, run_optimization, run_optimization_batch

    tickers = list(sp500_returns.columns)
    windows = [return_history(sp500_returns[tickers[k : k + 8]].iloc[k * 20 : k * 20 + 500]) for k in range(4)]
    jobs = [
        OptimizationJob(
            problem=long_only(Objective.MAX_SHARPE, tickers[k : k + 8], risk_free_rate=0.01),
            inputs=windows[k],
            settings=EstimationSettings(),
            method=MethodSettings(method=Method.HIERARCHICAL_RISK_PARITY) if k == 1 else MethodSettings(),
        )
        for k in range(4)
    ]
    singles = [run_optimization(job) for job in jobs]
    real_estimate, real_single = engine.estimate_moments, engine.run_optimization

    def estimate(inputs: object, settings: EstimationSettings) -> object:
        if inputs is windows[3]:
            raise np.linalg.LinAlgError("a bug in job 3's estimation")
        return real_estimate(inputs, settings)  # type: ignore[arg-type]

    def single(job: OptimizationJob) -> object:
        if job is jobs[1]:
            raise RuntimeError("a bug in job 1's path")
        return real_single(job)

    monkeypatch.setattr(engine, "estimate_moments", estimate)
    monkeypatch.setattr(engine, "run_optimization", single)
    outcomes = run_optimization_batch(jobs)
    assert isinstance(outcomes[1], RuntimeError) and isinstance(outcomes[3], np.linalg.LinAlgError)
    for k in (0, 2):
        answer = outcomes[k]
        assert not isinstance(answer, Exception) and answer.result.solve_path == "BATCH_ACTIVE_SET"
        np.testing.assert_allclose(answer.result.weights, singles[k].result.weights, atol=1e-9)

    def broken_batch(*args: object, **kwargs: object) -> object:
        raise AssertionError("a bug in the batched solve")

    monkeypatch.setattr(engine, "estimate_moments", real_estimate)
    monkeypatch.setattr(engine, "run_optimization", real_single)
    monkeypatch.setattr(engine, "optimize_mean_variance_batch", broken_batch)
    outcomes = run_optimization_batch(jobs)
    for answer, expected in zip(outcomes, singles, strict=True):
        assert not isinstance(answer, Exception)
        assert answer.result.solve_path == expected.result.solve_path != "BATCH_ACTIVE_SET"
        np.testing.assert_allclose(answer.result.weights, expected.result.weights, atol=1e-12)
