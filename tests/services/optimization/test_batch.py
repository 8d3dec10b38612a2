"""The batched active set against the single-problem path, problem by problem, on real S&P 500 windows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from services.optimization import BatchKind, solve_batch
from services.optimization._active_set import solve_max_sharpe, solve_qp
from tests.services.optimization.sp500_problems import benchmark_problem


def _problems(prices: pd.DataFrame, count: int, sizes: tuple[int, int], seed: int, cap: float | None) -> list[tuple]:
    rng = np.random.default_rng(seed)
    returns = prices.pct_change().dropna()
    out = []
    for k in range(count):
        n = int(rng.integers(*sizes))
        columns = rng.choice(returns.columns, n, replace=False)
        end = int(rng.integers(600, len(returns)))
        window = returns.iloc[end - 504 : end][columns]
        mu = window.mean().to_numpy() * 252
        sigma = window.cov().to_numpy() * 252
        upper = np.full(n, cap if cap is not None else (0.25 if k % 2 else 1.0))
        out.append((sigma, mu, np.zeros(n), upper))
    return out


@pytest.fixture(scope="module")
def problems(sp500_prices: pd.DataFrame) -> list[tuple]:
    return _problems(sp500_prices, 120, (3, 21), seed=3, cap=None)


def _sharpe(weights: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> float:
    return float((mu @ weights - 0.01) / np.sqrt(weights @ sigma @ weights))


def _unzip(problems: list[tuple]) -> tuple[list, list, list, list]:
    return tuple(list(x) for x in zip(*problems, strict=True))  # type: ignore[return-value]


def test_max_sharpe_batch_equals_the_single_path(problems: list[tuple]) -> None:
    sigmas, mus, lowers, uppers = _unzip(problems)
    rates = np.full(len(problems), 0.01)
    batch = solve_batch(sigmas, mus, lowers, uppers, kind=BatchKind.TANGENCY, risk_free_rates=rates)
    assert batch.certified.mean() >= 0.9  # the rest go to the single path (infeasible ones included)
    for k, (sigma, mu, lower, upper) in enumerate(problems):
        single = solve_max_sharpe(sigma, mu, lower, upper, 0.01)
        if single is None:  # no portfolio beats the risk-free rate: the batch must not answer either
            assert not batch.certified[k]
            continue
        if not batch.certified[k]:
            continue
        w = batch.weights[k]
        np.testing.assert_allclose(w, single.weights, atol=1e-12)
        assert _sharpe(w, mu, sigma) == pytest.approx(_sharpe(single.weights, mu, sigma), rel=1e-12)
        assert w.sum() == pytest.approx(1.0, abs=1e-12) and np.all(w >= -1e-12) and np.all(w <= upper + 1e-12)


@pytest.mark.parametrize("plan", ["CPU_STAGES", "GPU_STAGES"])
def test_both_stage_plans_give_the_single_paths_answers(
    problems: list[tuple], plan: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CPU's double-precision stages and the GPU's single-precision proposal with its polish, both on this CPU.

    Problems that take more partitions than the first stage are answered too (the repacked later stages).
    """
    from services.optimization import _batch

    monkeypatch.setattr(_batch, "_stages", lambda: getattr(_batch, plan))
    sigmas, mus, lowers, uppers = _unzip(problems)
    batch = solve_batch(
        sigmas, mus, lowers, uppers, kind=BatchKind.TANGENCY, risk_free_rates=np.full(len(problems), 0.01)
    )
    assert batch.certified.mean() >= 0.9
    later = [k for k in np.flatnonzero(batch.certified) if batch.iterations[k] > _batch.CPU_STAGES[0][1]]
    assert later  # some needed more than the first stage's 4 partitions
    for k in np.flatnonzero(batch.certified):
        single = solve_max_sharpe(*problems[k], 0.01)
        assert single is not None
        np.testing.assert_allclose(batch.weights[k], single.weights, atol=1e-12)


def test_meanwhile_runs_once_and_each_certified_problem_is_reported_once(problems: list[tuple]) -> None:
    """``meanwhile`` runs once before any stage is awaited; ``on_certified`` names each certified problem once."""
    sigmas, mus, lowers, uppers = _unzip(problems)
    calls: list[str] = []
    reported: list[int] = []
    seen: dict[int, np.ndarray] = {}

    def certified(index: list[int], weights: list[np.ndarray], iterations: np.ndarray) -> None:
        calls.append("certified")
        reported.extend(index)
        assert len(weights) == len(index) == iterations.size
        for k, w in zip(index, weights, strict=True):
            assert w.shape == mus[k].shape
            seen[k] = w

    batch = solve_batch(
        sigmas, mus, lowers, uppers, kind=BatchKind.TANGENCY, risk_free_rates=np.full(len(problems), 0.01),
        meanwhile=lambda: calls.append("meanwhile"), on_certified=certified,
    )  # fmt: skip
    assert calls[0] == "meanwhile" and calls.count("meanwhile") == 1 and len(calls) > 2
    assert sorted(reported) == np.flatnonzero(batch.certified).tolist()  # each once, only the certified
    assert all(seen[k] is batch.weights[k] for k in reported)  # the final answers, not copies
    empty = solve_batch([], [], [], [], kind=BatchKind.TANGENCY, meanwhile=lambda: calls.append("empty"))
    assert calls[-1] == "empty" and empty.certified.size == 0


@pytest.mark.parametrize("risk_aversion", [None, 2.0])
def test_min_volatility_and_quadratic_utility_batches_equal_the_single_path(
    problems: list[tuple], risk_aversion: float | None
) -> None:
    sigmas, mus, lowers, uppers = _unzip(problems)
    lam = np.zeros(len(problems)) if risk_aversion is None else np.full(len(problems), 1.0 / risk_aversion)
    batch = solve_batch(sigmas, mus, lowers, uppers, kind=BatchKind.FIXED_LAMBDA, lam=lam)
    assert batch.certified.mean() >= 0.9
    for k, (sigma, mu, lower, upper) in enumerate(problems):
        single = solve_qp(sigma, mu, lower, upper, float(lam[k]))
        if single is None:  # caps that cannot reach the budget (3 names at 25 %): no answer from either
            assert upper.sum() < 1.0 and not batch.certified[k]
            continue
        if not batch.certified[k]:
            continue
        w, ref = batch.weights[k], single.weights
        objective, reference = 0.5 * w @ sigma @ w - lam[k] * mu @ w, 0.5 * ref @ sigma @ ref - lam[k] * mu @ ref
        assert objective == pytest.approx(reference, rel=1e-10, abs=1e-14)
        np.testing.assert_allclose(batch.weights[k], single.weights, atol=1e-10)


def test_min_volatility_is_the_closed_form_when_no_bound_binds() -> None:
    """Σ⁻¹1 / 1ᵀΣ⁻¹1 for positive-weight problems: an independent truth for the padded batch."""
    rng = np.random.default_rng(11)
    sigmas = []
    for n in (2, 5, 9, 17):
        factor = rng.normal(size=(n, n)) * 0.05
        sigmas.append(factor @ factor.T + np.diag(rng.uniform(0.04, 0.09, n)))
    mus = [np.zeros(s.shape[0]) for s in sigmas]
    lowers = [np.full(s.shape[0], -10.0) for s in sigmas]
    uppers = [np.full(s.shape[0], 10.0) for s in sigmas]
    batch = solve_batch(sigmas, mus, lowers, uppers, kind=BatchKind.FIXED_LAMBDA, lam=np.zeros(4))
    assert batch.certified.all()
    for sigma, w in zip(sigmas, batch.weights, strict=True):
        closed = np.linalg.solve(sigma, np.ones(sigma.shape[0]))
        np.testing.assert_allclose(w, closed / closed.sum(), rtol=1e-10)


def test_an_uncertifiable_problem_is_flagged_not_answered() -> None:
    """Bounds whose sum cannot reach 1 have no feasible portfolio: the batch must not certify an answer."""
    sigma = np.diag([0.04, 0.09, 0.16])
    good = (sigma, np.array([0.05, 0.07, 0.09]), np.zeros(3), np.ones(3))
    infeasible = (sigma, np.array([0.05, 0.07, 0.09]), np.zeros(3), np.full(3, 0.2))
    sigmas, mus, lowers, uppers = _unzip([good, infeasible])
    batch = solve_batch(sigmas, mus, lowers, uppers, kind=BatchKind.TANGENCY)
    assert list(batch.certified) == [True, False]


def test_bad_batches_raise() -> None:
    sigma = np.eye(3)
    with pytest.raises(ValueError, match="FIXED_LAMBDA needs lam"):
        solve_batch([sigma], [np.zeros(3)], [np.zeros(3)], [np.ones(3)], kind=BatchKind.FIXED_LAMBDA)
    with pytest.raises(ValueError, match="one covariance"):
        solve_batch([sigma], [], [np.zeros(3)], [np.ones(3)], kind=BatchKind.TANGENCY)


def _greedy_max_return(mu: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """The LP vertex of max μᵀw under the budget and the bounds: fill the best names up to their caps."""
    w = lower.copy()
    room = 1.0 - w.sum()
    for i in np.argsort(-mu):
        step = min(upper[i] - w[i], room)
        w[i] += step
        room -= step
    return w


def _clarabel(sigma: np.ndarray, mu: np.ndarray, lower: np.ndarray, upper: np.ndarray, kind: str, target: float):
    """The independent truth: cvxpy with Clarabel at tight tolerances."""
    import cvxpy as cp

    w = cp.Variable(mu.size)
    constraints = [cp.sum(w) == 1, w >= lower, w <= upper]
    if kind == "return":
        problem = cp.Problem(cp.Minimize(cp.quad_form(w, cp.psd_wrap(sigma))), [*constraints, mu @ w >= target])
    else:
        factor = np.linalg.cholesky(sigma)
        problem = cp.Problem(cp.Maximize(mu @ w), [*constraints, cp.norm(factor.T @ w, 2) <= target])
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)
    return np.asarray(w.value), float(problem.value)


@pytest.fixture(scope="module")
def frontier_problems(problems: list[tuple]) -> list[tuple]:
    """Efficient-return and efficient-risk problems on the S&P 500 windows.

    Targets are spread along each frontier between its min-volatility and max-return ends (a slack return target
    among them).
    """
    out = []
    for k, (sigma, mu, lower, upper) in enumerate(problems[:48]):
        if upper.sum() < 1.0:
            continue
        low = solve_qp(sigma, mu, lower, upper, 0.0)
        assert low is not None
        top = _greedy_max_return(mu, lower, upper)
        t = (-0.2, 0.3, 0.7, 0.95)[k % 4]
        if k % 2:
            ret_lo = float(mu @ low.weights)
            out.append(("return", sigma, mu, lower, upper, ret_lo + t * (float(mu @ top) - ret_lo)))
        else:
            vol_lo, vol_hi = np.sqrt(low.weights @ sigma @ low.weights), np.sqrt(top @ sigma @ top)
            out.append(("risk", sigma, mu, lower, upper, vol_lo + abs(t) * (vol_hi - vol_lo)))
    return out


def test_efficient_return_and_risk_batches_equal_clarabel(frontier_problems: list[tuple]) -> None:
    """Both kinds in one batch: the certified answers meet the targets and match Clarabel's objective to 1e-7."""
    kinds = [BatchKind.TARGET_RETURN if p[0] == "return" else BatchKind.TARGET_RISK for p in frontier_problems]
    targets = np.array([p[5] for p in frontier_problems])
    batch = solve_batch(
        [p[1] for p in frontier_problems], [p[2] for p in frontier_problems], [p[3] for p in frontier_problems],
        [p[4] for p in frontier_problems], kind=kinds, targets=targets,
    )  # fmt: skip
    assert batch.certified.mean() >= 0.9
    for k, (kind, sigma, mu, lower, upper, target) in enumerate(frontier_problems):
        if not batch.certified[k]:
            continue
        w = batch.weights[k]
        reference, value = _clarabel(sigma, mu, lower, upper, kind, target)
        assert w.sum() == pytest.approx(1.0, abs=1e-12) and np.all(w >= lower - 1e-12) and np.all(w <= upper + 1e-12)
        if kind == "return":
            assert mu @ w >= target - 1e-12
            assert w @ sigma @ w == pytest.approx(value, rel=1e-7)
        else:
            assert np.sqrt(w @ sigma @ w) <= target * (1 + 1e-9)
            assert mu @ w == pytest.approx(value, rel=1e-7)
        np.testing.assert_allclose(w, reference, atol=2e-5)


def test_a_slack_return_target_is_the_minimum_volatility_portfolio(problems: list[tuple]) -> None:
    """μᵀw ≥ r below the min-volatility portfolio's return does not bind: λ = 0 and the same weights."""
    sigma, mu, lower, upper = problems[1]
    low = solve_qp(sigma, mu, lower, upper, 0.0)
    assert low is not None
    batch = solve_batch([sigma], [mu], [lower], [upper], kind=BatchKind.TARGET_RETURN,
                        targets=np.array([float(mu @ low.weights) - 0.05]))  # fmt: skip
    assert batch.certified[0] and batch.lam[0] == 0.0
    np.testing.assert_allclose(batch.weights[0], low.weights, atol=1e-12)


def test_infeasible_targets_are_not_certified(problems: list[tuple]) -> None:
    """A volatility cap below the minimum volatility, a return above the best the bounds allow: no answer."""
    sigma, mu, lower, upper = problems[1]
    low = solve_qp(sigma, mu, lower, upper, 0.0)
    assert low is not None
    vol_lo = float(np.sqrt(low.weights @ sigma @ low.weights))
    best = float(mu @ _greedy_max_return(mu, lower, upper))
    batch = solve_batch(
        [sigma, sigma], [mu, mu], [lower, lower], [upper, upper],
        kind=[BatchKind.TARGET_RISK, BatchKind.TARGET_RETURN], targets=np.array([0.9 * vol_lo, best + 0.01]),
    )  # fmt: skip
    assert not batch.certified.any()


def test_compiled_calls_cover_every_problem_once() -> None:
    """Chunks of 64, and a remainder of at most 24 in calls of 8 (CPU); each problem in exactly one call."""
    from services.optimization._batch import CHUNK, _calls

    for count in (1, 8, 9, 24, 25, 63, 64, 65, 88, 89, 434):
        calls = _calls(count, CHUNK)
        covered = [i for start, width in calls for i in range(start, min(start + width, count))]
        assert covered == list(range(count))
        assert all(width in (8, CHUNK) for _, width in calls)
        full = [start for start, width in calls if width == CHUNK]
        assert count - (full[-1] + CHUNK if full else 0) <= 24
    assert _calls(20, CHUNK) == [(0, 8), (8, 8), (16, 8)]
    assert _calls(434, CHUNK)[-1] == (384, CHUNK)  # 50 left: one padded chunk beats seven calls of 8
    assert _calls(20, 512) == [(0, 512)]  # a GPU: one wide call


@pytest.mark.parametrize(("seed", "index"), [(7, 707), (11, 932), (3, 177)])
@pytest.mark.parametrize("start", ["all free", "default"])
def test_a_tangency_that_cycles_on_direct_steps_is_certified(
    sp500_prices: pd.DataFrame, seed: int, index: int, start: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Problems of the batch benchmark whose tangency λ, taken on each line, cycles from the all-free start.

    The batch left them to the single path; the safeguarded search on λ with single pivots settles them in the
    batch, at PyPortfolioOpt's answer. The default start (negative excess returns at their lower bound) reaches
    the same answer in fewer partitions.
    """
    from pypfopt import EfficientFrontier

    from services.optimization import _batch

    if start == "all free":  # the start these problems cycled from, so that the last stage's search is exercised
        monkeypatch.setattr(
            _batch, "_first_partition", lambda group: np.where(group.upper - group.lower <= 0.0, -1, 0).astype(np.int8)
        )
    sigma, mu, lower, upper = benchmark_problem(sp500_prices, seed, index)
    batch = solve_batch([sigma], [mu], [lower], [upper], kind=BatchKind.TANGENCY)
    assert batch.certified[0]
    if start == "all free":
        assert batch.iterations[0] > 10  # it took the last stage, the one with the safeguarded search
    w = batch.weights[0]
    single = solve_max_sharpe(sigma, mu, lower, upper, 0.0)
    assert single is not None
    np.testing.assert_allclose(w, single.weights, atol=1e-12)
    frontier = EfficientFrontier(mu, sigma, weight_bounds=(0.0, float(upper[0])))
    frontier.max_sharpe(risk_free_rate=0.0)
    reference = np.array(list(frontier.clean_weights(cutoff=0.0, rounding=None).values()))
    sharpe = float(mu @ w / np.sqrt(w @ sigma @ w))
    assert sharpe >= float(mu @ reference / np.sqrt(reference @ sigma @ reference)) * (1.0 - 1e-9)


_TWO_THREADS = """
import sys, threading
import numpy as np
from services.optimization import BatchKind, solve_batch
from tests.services.market_data import load_sp500_prices
from tests.services.optimization.test_batch import _problems, _unzip

sigmas, mus, lowers, uppers = _unzip(_problems(load_sp500_prices(), 120, (3, 21), seed=3, cap=None) * 6)
alone = solve_batch(sigmas, mus, lowers, uppers, kind=BatchKind.TANGENCY)
answers = [None, None]

def solve(slot):
    answers[slot] = solve_batch(sigmas, mus, lowers, uppers, kind=BatchKind.TANGENCY)

threads = [threading.Thread(target=solve, args=(slot,), daemon=True) for slot in range(2)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join(timeout=60)
if any(thread.is_alive() for thread in threads):
    print("deadlocked", flush=True)
    import os
    os._exit(3)
for answer in answers:
    assert np.array_equal(answer.certified, alone.certified)
    assert all(np.array_equal(w, r) for w, r in zip(answer.weights, alone.weights, strict=True))
print("both finished, same answers")
"""


def test_batches_from_two_threads_at_once_both_finish() -> None:
    """Two threads solving batches at once both finish, with the answers of one thread alone.

    Before ``solve_batch`` held a lock, two threads with many compiled calls in flight each (720 problems a
    thread; 360 did not) deadlocked in XLA's CPU client. Run in a fresh interpreter: the deadlock did not show
    inside pytest's process, and a deadlocked thread could not be stopped there.
    """
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run(
        [sys.executable, "-c", _TWO_THREADS], cwd=root, capture_output=True, text=True, timeout=280, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "both finished, same answers" in done.stdout
