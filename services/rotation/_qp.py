"""QP rotation: the rotation as one convex program on the mean-variance engine, with reasons from the solution.

    maximise   z'w − λ w'Cw − γ Σ_i c_i |w_i − w_cur,i|
    subject to |w_i| ≤ name_cap, Σ|w_i| ≤ max_gross, |Σ w_i| ≤ max_abs_net, Σ|w_i − w_cur,i| ≤ max_turnover,
               |w_i − w_cur,i| ≤ max_name_turnover, |β'w| ≤ beta_tolerance, |Σ_{i∈s} w_i| ≤ sector_cap per sector

with z the risk-scaled scores, C their (shrunk) correlation matrix, c the per-name one-way costs in basis points
and γ the utility per basis point per unit of weight traded (as the greedy engine's). It runs on
``services.optimization.optimize_mean_variance`` (its quadratic-utility objective with ``risk_aversion = 2λ``,
per-name costs, bounds, gross and net exposure, turnover, beta and sector limits: the same backends, checks and
solve paths as an Optimize call). Each change then gets the reason of the constraint that bounds it, or
``QP_UTILITY`` when none does (the score, risk and cost trade-off alone set it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from services.errors import InvalidInputError
from services.optimization import Objective, PortfolioProblem, SectorLimit, optimize_mean_variance
from services.rotation._greedy import Action, ReasonCode, RotationChange
from services.types import FloatArray, Moments

_ACTIVE = 1e-6
"""A constraint within this of its limit is binding; a weight change smaller than this is no change."""


@dataclass(frozen=True, slots=True, kw_only=True)
class QpRotationParams:
    """Parameters of the QP rotation; the defaults are the specification's.

    Attributes
    ----------
    risk_aversion : float
        λ of ``λ w'Cw`` (0.1).
    gamma : float
        Utility per basis point of cost per unit of weight traded (0.05).
    name_cap : float
        Largest |w_i| (0.1).
    max_gross, max_abs_net : float
        Σ|w_i| ≤ 1.5 and |Σ w_i| ≤ 0.3.
    sector_cap : float
        |Σ_{i∈s} w_i| ≤ 0.3 per sector.
    max_turnover : float
        Two-way turnover Σ|w_i − w_cur,i| ≤ 0.2 (fractions of portfolio value).
    max_name_turnover : float
        |w_i − w_cur,i| ≤ 0.05.
    beta_tolerance : float
        |β'w| ≤ 0.05 (when betas are given).
    """

    risk_aversion: float = 0.1
    gamma: float = 0.05
    name_cap: float = 0.1
    max_gross: float = 1.5
    max_abs_net: float = 0.3
    sector_cap: float = 0.3
    max_turnover: float = 0.2
    max_name_turnover: float = 0.05
    beta_tolerance: float = 0.05

    def __post_init__(self) -> None:
        for name in ("risk_aversion", "name_cap", "max_gross", "sector_cap", "max_turnover", "max_name_turnover"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise InvalidInputError.for_field(name, f"must be finite and > 0, got {value}")
        for name in ("gamma", "max_abs_net", "beta_tolerance"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise InvalidInputError.for_field(name, f"must be finite and ≥ 0, got {value}")


@dataclass(frozen=True, slots=True, kw_only=True)
class QpRotationInputs:
    """The cross-section of a QP rotation; arrays share the order of ``symbols``.

    Attributes
    ----------
    symbols : tuple of str, length N
    z : ndarray, shape (N,)
        Risk-scaled z-scores.
    correlation : ndarray, shape (N, N)
        Their correlation (e.g. ``shrunk_correlation``), symmetric positive semidefinite.
    current_weights : ndarray, shape (N,)
        Current weights (fractions of portfolio value; negative = short).
    costs_bps : ndarray, shape (N,), optional
        One-way cost per name, basis points of traded value (default 0).
    betas : ndarray, shape (N,), optional
        Betas against the market; the beta limit applies only when given.
    sectors : tuple of str, optional
        Sector of each name ("" = none); the sector cap applies to each named sector.
    """

    symbols: tuple[str, ...]
    z: FloatArray
    correlation: FloatArray
    current_weights: FloatArray
    costs_bps: FloatArray | None = None
    betas: FloatArray | None = None
    sectors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class QpRotationDecision:
    """Target weights of the QP rotation with a reason per traded or held name.

    Attributes
    ----------
    target_weights : ndarray, shape (N,)
        Fractions of portfolio value (negative = short); the rest is cash.
    changes : tuple of RotationChange
        Every name traded or held (current or target weight non-zero), by descending z; ``reason`` holds a
        ``ReasonCode`` of the QP family (``QP_UTILITY``, ``BOUND_*``, ``HOLD_COST``, ``HOLD_CONSTRAINED``).
    objective_value : float
        ``z'w − λ w'Cw − γ Σ c_i |Δw_i|`` at the target.
    turnover : float
        One-way turnover ``Σ|Δw| / 2``.
    solve_path : str
        The engine backend that solved it.
    """

    target_weights: FloatArray
    changes: tuple[RotationChange, ...]
    objective_value: float
    turnover: float
    solve_path: str
    binding: tuple[str, ...] = field(default=())
    """The portfolio-level constraints that bind (``BOUND_TURNOVER``, ``BOUND_GROSS`` ...)."""


def rotation_problem(inputs: QpRotationInputs, params: QpRotationParams) -> tuple[PortfolioProblem, Moments]:
    """The QP rotation as a ``PortfolioProblem`` with ``Moments(z, correlation)`` for the engine.

    Quadratic utility with ``risk_aversion = 2λ`` (the engine maximises ``μ'w − δ/2 w'Σw``), per-name costs
    ``γ c_i`` expressed in the engine's basis points (``1e4 γ c_i``: the engine charges ``c/1e4`` per unit
    traded), bounds ±name_cap, net exposure in [−max_abs_net, max_abs_net] instead of a budget, no risk-free
    return on the cash.

    Raises
    ------
    InvalidInputError
        Mismatched shapes, non-finite values, duplicate symbols.
    """
    n = len(inputs.symbols)
    z = np.asarray(inputs.z, dtype=np.float64)
    w0 = np.asarray(inputs.current_weights, dtype=np.float64)
    for name, array in (("z", z), ("current_weights", w0)):
        if array.shape != (n,) or not np.all(np.isfinite(array)):
            raise InvalidInputError.for_field(name, f"needs {n} finite values")
    costs = np.zeros(n) if inputs.costs_bps is None else np.asarray(inputs.costs_bps, dtype=np.float64)
    if costs.shape != (n,) or not np.all(np.isfinite(costs)) or np.any(costs < 0):
        raise InvalidInputError.for_field("costs_bps", f"needs {n} finite values ≥ 0")
    if inputs.sectors and len(inputs.sectors) != n:
        raise InvalidInputError.for_field("sectors", f"needs {n} entries, got {len(inputs.sectors)}")
    sector_limits = tuple(
        SectorLimit(sector, min_weight=-params.sector_cap, max_weight=params.sector_cap)
        for sector in sorted(set(inputs.sectors) - {""})
    )
    problem = PortfolioProblem(
        symbols=inputs.symbols,
        objective=Objective.MAX_QUADRATIC_UTILITY,
        lower_bounds=np.full(n, -params.name_cap),
        upper_bounds=np.full(n, params.name_cap),
        sectors=inputs.sectors,
        sector_limits=sector_limits,
        risk_free_rate=0.0,
        risk_aversion=2.0 * params.risk_aversion,
        current_weights=w0,
        turnover_limit=params.max_turnover,
        turnover_caps=np.full(n, params.max_name_turnover),
        leverage_limit=params.max_gross,
        transaction_costs_bps=1e4 * params.gamma * costs,
        betas=None if inputs.betas is None else np.asarray(inputs.betas, dtype=np.float64),
        beta_tolerance=None if inputs.betas is None else params.beta_tolerance,
        min_net_exposure=-params.max_abs_net,
        max_net_exposure=params.max_abs_net,
    )
    return problem, Moments(expected_returns=z, covariance=np.asarray(inputs.correlation, dtype=np.float64))


def qp_rotation(inputs: QpRotationInputs, params: QpRotationParams | None = None) -> QpRotationDecision:
    """Solve the QP rotation (module docstring) and give every traded or held name its reason.

    Parameters
    ----------
    inputs : QpRotationInputs
        Scores, correlation, current weights and the optional costs, betas and sectors (N names).
    params : QpRotationParams, optional
        Limits and weights; default the specification's.

    Returns
    -------
    QpRotationDecision
        Target weights (N,), the changes with their reasons, the objective value and the solve path.

    Raises
    ------
    InvalidInputError
        Malformed inputs (shapes, non-finite values, a correlation that is not PSD).
    InfeasibleError
        The limits admit no portfolio from the current weights (e.g. a position beyond its cap that the
        per-name turnover cannot bring back), from the engine's pre-checks or the solver.

    Notes
    -----
    Reasons: a changed name gets the first of ``BOUND_NAME_CAP``, ``BOUND_NAME_TURNOVER`` (its own limits),
    then ``BOUND_SECTOR_CAP``, ``BOUND_TURNOVER``, ``BOUND_GROSS``, ``BOUND_NET``, ``BOUND_BETA`` (shared limits
    that bind), else ``QP_UTILITY``. An unchanged held name gets ``HOLD_COST`` when the marginal utility
    ``g_i = z_i − 2λ (Cw)_i`` satisfies ``|g_i| ≤ γ c_i`` (the cost's subgradient alone explains it), else
    ``HOLD_CONSTRAINED``.
    """
    p = params or QpRotationParams()
    problem, moments = rotation_problem(inputs, p)
    result = optimize_mean_variance(problem, moments)
    w = np.asarray(result.weights, dtype=np.float64)
    w0 = np.asarray(problem.current_weights, dtype=np.float64)
    z, corr = moments.expected_returns, moments.covariance
    costs = np.zeros(len(w)) if inputs.costs_bps is None else np.asarray(inputs.costs_bps, dtype=np.float64)
    delta = w - w0
    objective = float(z @ w - p.risk_aversion * w @ corr @ w - p.gamma * costs @ np.abs(delta))

    binding: list[ReasonCode] = []
    sector_bound: set[str] = set()
    for sector in {s for s in inputs.sectors if s}:
        members = np.array([s == sector for s in inputs.sectors])
        if abs(w[members].sum()) >= p.sector_cap - _ACTIVE:
            sector_bound.add(sector)
    if np.abs(delta).sum() >= p.max_turnover - _ACTIVE:
        binding.append(ReasonCode.BOUND_TURNOVER)
    if np.abs(w).sum() >= p.max_gross - _ACTIVE:
        binding.append(ReasonCode.BOUND_GROSS)
    if abs(w.sum()) >= p.max_abs_net - _ACTIVE:
        binding.append(ReasonCode.BOUND_NET)
    if inputs.betas is not None and abs(np.asarray(inputs.betas) @ w) >= p.beta_tolerance - _ACTIVE:
        binding.append(ReasonCode.BOUND_BETA)

    gradient = z - 2.0 * p.risk_aversion * (corr @ w)
    order = np.lexsort((np.array(inputs.symbols), -z))  # z descending, ties by symbol
    rank = np.empty(len(w), dtype=np.int64)
    rank[order] = np.arange(1, len(w) + 1)
    changes: list[RotationChange] = []
    for i in order:
        if abs(w[i]) <= _ACTIVE and abs(w0[i]) <= _ACTIVE:
            continue
        numbers = {"marginal_utility": float(gradient[i]), "cost_utility": float(p.gamma * costs[i])}
        if abs(delta[i]) <= _ACTIVE:
            action = Action.HOLD
            reason = (
                ReasonCode.HOLD_COST
                if abs(gradient[i]) <= p.gamma * costs[i] + _ACTIVE
                else ReasonCode.HOLD_CONSTRAINED
            )
        else:
            action = Action.BUY if delta[i] > 0 else Action.SELL
            sector = inputs.sectors[i] if inputs.sectors else ""
            if abs(w[i]) >= p.name_cap - _ACTIVE:
                reason = ReasonCode.BOUND_NAME_CAP
            elif abs(delta[i]) >= p.max_name_turnover - _ACTIVE:
                reason = ReasonCode.BOUND_NAME_TURNOVER
            elif sector in sector_bound:
                reason = ReasonCode.BOUND_SECTOR_CAP
            elif binding:
                reason = binding[0]
            else:
                reason = ReasonCode.QP_UTILITY
        change = RotationChange(
            inputs.symbols[i], action, reason, int(rank[i]), float(z[i]), float(w0[i]), float(w[i]),
            MappingProxyType(numbers),
        )  # fmt: skip
        changes.append(change)
    return QpRotationDecision(
        target_weights=w,
        changes=tuple(changes),
        objective_value=objective,
        turnover=float(np.abs(delta).sum() / 2.0),
        solve_path=str(result.solve_path),
        binding=tuple(str(b) for b in binding)
        + tuple(f"{ReasonCode.BOUND_SECTOR_CAP}:{s}" for s in sorted(sector_bound)),
    )
