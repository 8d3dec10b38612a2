"""Mean-variance (Markowitz, 1952) as a cvxpy program solved by Clarabel: the backend for every constraint family.

Formulations (w: weights, μ: expected returns, Σ = F Fᵀ: covariance, the constraint families of ``_constraints``):

- min volatility: minimise wᵀΣw;
- max return: maximise μᵀw − cost (an LP, or an SOCP with a volatility or tracking-error cap);
- quadratic utility: maximise μᵀw − cost − δ/2 wᵀΣw;
- multi-objective: maximise a·(μᵀw − cost) − b·wᵀΣw − g·Σ|w − w₀| − λ‖w‖²;
- max Sharpe: the homogenised problem of Cornuejols and Tütüncü (2007, §8.2) that PyPortfolioOpt also uses:
  minimise yᵀΣy s.t. (μ − r_f)ᵀy = 1 (with costs: (μ − r_f)ᵀy − cᵀ|y − w₀κ| ≥ 1), every family times κ; w = y/κ.

Up to ``PARAMETRIC_MAX_ASSETS`` the program is built once per structure (``ProblemModel.structure``) with every
datum a ``cvxpy.Parameter`` and re-solved with new values (DPP: no re-canonicalisation); above it the covariance
enters as a constant quadratic form.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, cast

import cvxpy as cp
import numpy as np

from services.errors import OptimizationError
from services.optimization._model import ProblemModel
from services.optimization._problem import Objective, OptimizationResult
from services.optimization._program import DataOwner, ProgramBuilder
from services.optimization._solver import CLARABEL_SETTINGS, solve_program

SOLVE_PATH = "CONIC"
PARAMETRIC_MAX_ASSETS = 64
"""Up to this N a compiled program is cached per problem structure and re-solved with new parameter values (cvxpy
DPP: no re-canonicalisation; 13 ms -> 4 ms at N = 20). Above it the covariance enters as a constant quadratic
form, which Clarabel solves faster than the dense factor a parametric program needs (measured crossover between
N = 60 and 80 on this project's 2-core machine)."""
_CACHE_SIZE = 32


class MeanVarianceProgram:
    """One mean-variance program in cvxpy (see the module docstring).

    Parameters
    ----------
    model : ProblemModel
        The problem (its cardinality family, if any, is not written: see ``_cardinality``).
    parametric : bool
        Whether the data are parameters (a program cached and re-loaded), else constants.
    """

    def __init__(self, model: ProblemModel, *, parametric: bool) -> None:
        sharpe = model.objective is Objective.MAX_SHARPE
        self.builder = builder = ProgramBuilder(model, homogenised=sharpe, parametric=parametric)
        self.parametric = parametric
        x = builder.x
        if sharpe:
            excess = builder.value(model, "excess_returns") @ x
            if model.costs is not None:
                # Net excess return (μ − r_f)ᵀy − cᵀ|y − w₀κ| ≥ 1: concave ≥ constant; tight at the optimum.
                builder.add(excess - builder.cost() >= 1)
            else:
                builder.add(excess == 1)
        for constraint in model.convex_constraints:
            constraint.write(builder)
        self.problem = cp.Problem(self._objective(model), builder.constraints)

    def _risk(self, model: ProblemModel) -> cp.Expression:
        """wᵀΣw (or yᵀΣy)."""
        if self.parametric:
            return cast(cp.Expression, cp.sum_squares(self.builder.factor().T @ self.builder.x))
        # Validated PSD: psd_wrap skips cvxpy's own eigenvalue check.
        return cast(cp.Expression, cp.quad_form(self.builder.x, cp.psd_wrap(model.covariance)))

    def _penalty(self, model: ProblemModel) -> cp.Expression:
        """δ/2·wᵀΣw (utility) or b·wᵀΣw (multi-objective).

        A parameter times a parametric quadratic breaks DPP, so a parametric program holds sqrt(δ/2)·F instead.
        """
        builder = self.builder
        if self.parametric:
            return cast(cp.Expression, cp.sum_squares(builder.value(model, "utility_factor").T @ builder.x))
        quadratic = cp.quad_form(builder.x, cp.psd_wrap(model.covariance))
        return cast(cp.Expression, builder.value(model, "half_risk_aversion", nonneg=True) * quadratic)

    def _objective(self, model: ProblemModel) -> cp.Minimize | cp.Maximize:
        builder, x = self.builder, self.builder.x
        objective = model.objective
        if objective in (Objective.MAX_SHARPE, Objective.MIN_VOLATILITY):
            return cp.Minimize(self._risk(model))
        if objective is Objective.MAX_RETURN:
            return cp.Maximize(builder.net_return())
        if objective is Objective.MULTI_OBJECTIVE:
            # a·μᵀw is not DPP (a parameter times a parameter-affine term): μ, c and r_f come pre-multiplied by a.
            gain: cp.Expression = builder.value(model, "scaled_expected_returns") @ x
            if model.has_net_exposure:
                gain = gain + builder.value(model, "cash_return") * (1.0 - cp.sum(x))
            if model.costs is not None:
                gain = gain - builder.value(model, "scaled_costs", nonneg=True) @ builder.trades()
            penalty = self._penalty(model)
            if model.turnover_weight > 0:
                penalty = penalty + builder.value(model, "turnover_weight", nonneg=True) * cp.sum(builder.trades())
            if model.l2_weight > 0:
                penalty = penalty + builder.value(model, "l2_weight", nonneg=True) * cp.sum_squares(x)
            return cp.Maximize(gain - penalty)
        return cp.Maximize(builder.net_return() - self._penalty(model))

    def load(self, model: ProblemModel) -> None:
        """Load another problem of the same structure into the parameters."""
        by_name: dict[str, DataOwner] = {c.name: c for c in model.constraints}
        by_name[model.name] = model
        self.builder.load(by_name.__getitem__)

    def weights(self) -> tuple[np.ndarray[Any, np.dtype[np.float64]], float | None]:
        """The solved x and κ (None when not homogenised).

        Raises
        ------
        OptimizationError
            The solver left no solution.
        """
        builder = self.builder
        if builder.x.value is None:
            raise OptimizationError("the solver returned no solution")
        kappa = None
        if builder.kappa is not None:
            kappa = float(builder.kappa.value) if builder.kappa.value is not None else 0.0
        return np.asarray(builder.x.value, dtype=np.float64), kappa


_PROGRAMS: OrderedDict[tuple[Any, ...], MeanVarianceProgram] = OrderedDict()


def cached_program(model: ProblemModel) -> MeanVarianceProgram:
    """The cached program of this problem's structure loaded with its data (small N), or a new one (large N)."""
    parametric = model.n_assets <= PARAMETRIC_MAX_ASSETS
    if not parametric:
        return MeanVarianceProgram(model, parametric=False)
    key = model.structure()
    program = _PROGRAMS.get(key)
    if program is None:
        program = _PROGRAMS[key] = MeanVarianceProgram(model, parametric=True)
        if len(_PROGRAMS) > _CACHE_SIZE:
            _PROGRAMS.popitem(last=False)
    else:
        _PROGRAMS.move_to_end(key)
        program.load(model)
    return program


class ConicBackend:
    """Clarabel through cvxpy (SCS as the fallback): every objective and every convex family."""

    solve_path = SOLVE_PATH

    def supports(self, model: ProblemModel) -> bool:
        """Every problem without cardinality."""
        return model.cardinality is None

    def solve(self, model: ProblemModel, *, started: float, time_limit_s: float | None) -> OptimizationResult:
        """Solve on the (cached) program.

        Raises
        ------
        InfeasibleError
            The solver proved the constraints infeasible (``SOLVER_INFEASIBLE``).
        DeadlineExceededError
            The solver hit ``time_limit_s``.
        OptimizationError
            The solver failed otherwise (numerical trouble, unbounded, a degenerate κ = 0).
        """
        program = cached_program(model)
        outcome = solve_program(
            program.problem, CLARABEL_SETTINGS, description=str(model.objective), started=started,
            time_limit_s=time_limit_s,
        )  # fmt: skip
        raw, kappa = program.weights()
        if kappa is not None:
            if not kappa > 1e-12:
                raise OptimizationError("max Sharpe solution degenerated (κ = 0)")
            raw = raw / kappa
        stats = program.problem.solver_stats
        return model.result(
            raw,
            status=outcome.status,
            solver=outcome.solver,
            iterations=int(stats.num_iters or 0) if stats is not None else 0,
            started=started,
            solve_path=SOLVE_PATH,
            fallback_used=outcome.fallback_used,
        )
