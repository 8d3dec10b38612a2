"""Writing a portfolio problem into cvxpy: one builder for every convex program of the engine.

A :class:`ProgramBuilder` owns the decision variables — the weights x (or, for a ratio objective homogenised after
Cornuejols & Tütüncü (2007, §8.2), y = κw with κ ≥ 0 and ``scale`` = κ) — and hands the constraint objects of
``_constraints`` what they need to write themselves:

- ``value(owner, name)``: a datum of the problem (a bound vector, a limit), as a constant or, in a *parametric*
  program, as a ``cvxpy.Parameter`` created once and re-loaded on the next problem of the same structure
  (``load``), so that a cached program skips cvxpy's canonicalisation (DPP; cvxportfolio's pattern);
- ``slack(owner, name)``: in an *elastic* program a non-negative slack that relaxes a limit (the relaxation's
  program minimises their sum), else the constant 0;
- ``trades()``: t ≥ |x − w₀·scale| (two-way trades against the current weights w₀), shared by turnover, per-name
  caps and transaction costs;
- ``factor()``: F with F Fᵀ = Σ for the volatility and tracking-error cones;
- ``net_return()``: μᵀx − cᵀt, plus the cash leg r_f·(scale − 1ᵀx) with net exposure bounds.

The builder knows nothing of the families: it only keeps the variables, parameters and slacks they ask for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import cvxpy as cp
import numpy as np

from services.types import FloatArray


class DataOwner(Protocol):
    """Anything whose attributes are data of a program (a constraint family, the problem model)."""

    @property
    def name(self) -> str:
        """Unique name of the owner within one problem (the key prefix of its parameters and slacks)."""
        ...


class ModelData(DataOwner, Protocol):
    """The problem-level data the builder's shared expressions read (implemented by ``ProblemModel``)."""

    @property
    def n_assets(self) -> int:
        """See ``ProblemModel``."""
        ...

    @property
    def has_net_exposure(self) -> bool:
        """See ``ProblemModel``."""
        ...

    @property
    def costs(self) -> FloatArray | None:
        """See ``ProblemModel``."""
        ...

    @property
    def factor(self) -> FloatArray:
        """F with F Fᵀ = Σ (N, N)."""
        ...


class ProgramBuilder:
    """Variables, data and slacks of one cvxpy program over N weights.

    Parameters
    ----------
    model : ModelData
        The problem-level data (expected returns, current weights, costs, the covariance factor).
    homogenised : bool
        Whether x is y = κw of a ratio objective (``scale`` is then the variable κ ≥ 0, else 1).
    parametric : bool, default=False
        Whether data enter as ``cvxpy.Parameter`` s (a program cached per structure and re-loaded), else constants.
    elastic : bool, default=False
        Whether ``slack`` creates slack variables (the relaxation's elastic program), else returns 0.
    """

    def __init__(self, model: ModelData, *, homogenised: bool, parametric: bool = False, elastic: bool = False) -> None:
        self.model = model
        self.n = model.n_assets
        self.x = cp.Variable(self.n)
        self.kappa: cp.Variable | None = cp.Variable(nonneg=True) if homogenised else None
        self.scale: cp.Expression | float = self.kappa if self.kappa is not None else 1.0
        self.parametric = parametric
        self.elastic = elastic
        self.parameters: dict[tuple[str, str], cp.Parameter] = {}
        self.slacks: dict[tuple[str, str], cp.Variable] = {}
        self.constraints: list[cp.Constraint] = []
        """Every constraint written so far, in order."""
        self.linear: list[cp.Constraint] = []
        """The linear ones (the mixed-integer master of ``_cardinality`` is built on them; the cones become cuts)."""
        self._trades: cp.Variable | None = None
        self._net_return: cp.Expression | None = None
        self._factor: cp.Expression | FloatArray | None = None

    # --- data, slacks and shared expressions --------------------------------------------------------------------

    def value(self, owner: DataOwner, name: str, *, nonneg: bool = False) -> Any:
        """``owner.<name>`` as a constant, or as the parameter ``(owner.name, name)`` in a parametric program."""
        datum = getattr(owner, name)
        if not self.parametric:
            return datum
        key = (owner.name, name)
        parameter = self.parameters.get(key)
        if parameter is None:
            parameter = self.parameters[key] = cp.Parameter(np.shape(datum), nonneg=nonneg)
        parameter.value = datum
        return parameter

    def load(self, owners: Callable[[str], DataOwner]) -> None:
        """Load a new problem's data into the parameters of a cached parametric program (same structure)."""
        for (owner_name, name), parameter in self.parameters.items():
            parameter.value = getattr(owners(owner_name), name)

    def slack(self, owner: DataOwner, name: str, size: int | None = None) -> cp.Expression | float:
        """A non-negative slack on the limit ``name`` of ``owner`` in an elastic program (else 0)."""
        if not self.elastic:
            return 0.0
        variable = cp.Variable(size, nonneg=True) if size is not None else cp.Variable(nonneg=True)
        self.slacks[(owner.name, name)] = variable
        return variable

    def slack_values(self, owner: DataOwner) -> dict[str, FloatArray]:
        """The solved slacks of ``owner`` by limit name (after an elastic solve)."""
        return {
            name: np.asarray(variable.value if variable.value is not None else 0.0, dtype=np.float64)
            for (owner_name, name), variable in self.slacks.items()
            if owner_name == owner.name
        }

    def scaled(self, value: Any) -> Any:
        """``value``·scale: the value itself in a plain program, ``value``·κ in a homogenised one."""
        if isinstance(self.scale, float):
            return value if self.scale == 1.0 else value * self.scale
        return cp.multiply(value, self.scale)

    def add(self, *constraints: cp.Constraint, linear: bool = True) -> None:
        """Append constraints (``linear=False`` for cones)."""
        self.constraints.extend(constraints)
        if linear:
            self.linear.extend(constraints)

    def trades(self) -> cp.Variable:
        """T (N,) ≥ |x − w₀·scale|, created (with its two linear constraints) on first use."""
        if self._trades is None:
            self._trades = cp.Variable(self.n, nonneg=True)
            moved = self.x - self.scaled(self.value(self.model, "current"))
            self.add(self._trades >= moved, self._trades >= -moved)
        return self._trades

    @property
    def has_trades(self) -> bool:
        """Whether the trade variable exists."""
        return self._trades is not None

    def factor(self) -> cp.Expression | FloatArray:
        """F (N, N) with F Fᵀ = Σ (a parameter in a parametric program)."""
        if self._factor is None:
            self._factor = self.value(self.model, "factor")
        return self._factor

    def cost(self) -> cp.Expression | float:
        """Transaction cost cᵀt (0 without costs)."""
        if self.model.costs is None:
            return 0.0
        cost: cp.Expression = self.value(self.model, "costs", nonneg=True) @ self.trades()
        return cost

    def net_return(self) -> cp.Expression:
        """μᵀx − cᵀt, plus the cash leg r_f·(scale − 1ᵀx) with net exposure bounds."""
        if self._net_return is None:
            expression: cp.Expression = self.value(self.model, "expected_returns") @ self.x
            if self.model.has_net_exposure:
                expression = expression + self.value(self.model, "risk_free_rate") * (self.scale - cp.sum(self.x))
            if self.model.costs is not None:
                expression = expression - self.cost()
            self._net_return = expression
        return self._net_return
