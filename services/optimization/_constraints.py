"""The constraint families of a portfolio problem, each an object that writes, checks, pre-checks and relaxes itself.

One object per family present in a problem, built once by ``ProblemModel`` (``_model``) from the validated request:

========================  ==========================================================  =========================
family                    constraint on the weights w (x = scale·w in a program)       pre-check
========================  ==========================================================  =========================
``Budget``                1ᵀw = 1                                                      (with the bounds)
``NetExposure``           low ≤ 1ᵀw ≤ high (the rest is cash at r_f)                   (with the bounds)
``Bounds``                l ≤ w ≤ u                                                    ``BOUNDS_SUM``
``GroupLimits``           min_k ≤ m_kᵀw ≤ max_k per limited group of any scheme        ``SECTOR_BOUNDS``,
                                                                                       ``SECTOR_MINIMA``
``MinReturn``             μᵀw − cost (+ cash leg) ≥ r_min                              ``TARGET_RETURN``
``MaxVolatility``         ‖Fᵀw‖ ≤ σ_max (a cone)                                        —
``TurnoverLimit``         Σ|w − w₀| ≤ τ (two-way)                                      ``TURNOVER``
``TurnoverCaps``          |w_i − w₀_i| ≤ c_i                                           ``TURNOVER``
``LeverageLimit``         Σ|w_i| ≤ L (gross exposure)                                  ``LEVERAGE``
``TrackingErrorLimit``    ‖Fᵀ(w − b)‖ ≤ TE (a cone)                                     —
``BetaNeutrality``        |βᵀw| ≤ tol                                                  ``BETA``
``Cardinality``           at most K names held, each held |w_i| ≥ m (mixed-integer)    ``CARDINALITY``
========================  ==========================================================  =========================

Each family gives:

- ``write(builder)``: its rows and cones in a cvxpy program (``_program.ProgramBuilder``), homogenised by the
  builder's ``scale`` for ratio objectives, parametric or elastic as the builder is;
- ``violations(weights, model)``: what the weights break by more than ``TOLERANCE`` (NumPy, solver-independent);
- ``precheck(model)``: necessary conditions of feasibility, named, before any solve;
- ``relax(slacks, model)``: after an elastic solve, the problem fields to change and the ``Relaxation`` records;
- ``rows(model)``: for the linear families, dense rows (a, lower, upper) on w for solvers fed with matrices.

Backends declare which family types they support (``_dispatch``); a family added here is unsupported by every
backend until it is listed there. Transaction costs are not a constraint: they enter the expected return
(``ProblemModel.costs``, ``ProgramBuilder.net_return``).

Why one long module: it is the one place where each family is defined; splitting it would scatter a family's
five faces over several files.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar, Protocol, cast

import cvxpy as cp
import numpy as np
from numpy.typing import NDArray

from services.errors import InvalidInputError, PreconditionViolation
from services.optimization._problem import Relaxation, SectorLimit
from services.optimization._program import ProgramBuilder
from services.types import FloatArray

TOLERANCE = 1e-6
"""Tolerance of the post-solve constraint check (weights, sums, group totals, return, volatility, trades)."""
HELD_THRESHOLD = 1e-8
"""|w_i| above which a strategy counts as held (cardinality and minimum position size)."""
SLACK_THRESHOLD = 1e-7
"""Slacks of an elastic solve at or below this are solver noise: the limit is not reported as relaxed."""
RELAXATION_MARGIN = 1e-7
"""Added to each relaxation so the relaxed problem is strictly (not just barely) feasible for the re-solve."""


class ModelView(Protocol):
    """What the families read of the whole problem (implemented by ``_model.ProblemModel``)."""

    @property
    def symbols(self) -> tuple[str, ...]:
        """See ``ProblemModel``."""
        ...

    @property
    def lower(self) -> FloatArray:
        """See ``ProblemModel``."""
        ...

    @property
    def upper(self) -> FloatArray:
        """See ``ProblemModel``."""
        ...

    @property
    def budget(self) -> tuple[float, float]:
        """See ``ProblemModel``."""
        ...

    @property
    def current(self) -> FloatArray:
        """See ``ProblemModel``."""
        ...

    @property
    def costs(self) -> FloatArray | None:
        """See ``ProblemModel``."""
        ...

    @property
    def expected_returns(self) -> FloatArray:
        """See ``ProblemModel``."""
        ...

    @property
    def covariance(self) -> FloatArray:
        """See ``ProblemModel``."""
        ...

    @property
    def risk_free_rate(self) -> float:
        """See ``ProblemModel``."""
        ...

    @property
    def has_net_exposure(self) -> bool:
        """See ``ProblemModel``."""
        ...

    @property
    def best_total_return(self) -> float:
        """The highest total expected return (cash leg included) the bounds and the budget allow."""
        ...

    @property
    def bounds_ok(self) -> bool:
        """Whether Σl ≤ the budget's high end and Σu ≥ its low end (the bounds admit a portfolio)."""
        ...

    def best_return(self, coefficients: FloatArray) -> float:
        """Largest cᵀw over the bounds and the budget (``max_achievable_return``)."""
        ...


@dataclass(frozen=True, slots=True)
class LinearRows:
    """Dense linear rows ``lower ≤ A w ≤ upper`` on the weights (±inf where a side is open)."""

    matrix: FloatArray
    """A, shape (k, N)."""
    lower: FloatArray
    """Shape (k,)."""
    upper: FloatArray
    """Shape (k,)."""


def _amount(values: FloatArray) -> FloatArray:
    """Slack values above the noise threshold, plus the margin; 0 elsewhere."""
    return np.where(values > SLACK_THRESHOLD, values + RELAXATION_MARGIN, 0.0)


class Constraint(ABC):
    """One constraint family of a problem (see the module docstring)."""

    name: ClassVar[str]
    """Unique within a problem: the key of its data and slacks in a program, and its family name."""
    conic: ClassVar[bool] = False
    """Whether it writes a second-order cone (else only linear rows)."""

    def structure(self) -> tuple[Any, ...]:
        """What, beyond its presence, shapes a program of this family (part of the program cache key)."""
        return ()

    @abstractmethod
    def write(self, builder: ProgramBuilder) -> None:
        """Add its rows or cones to a cvxpy program."""

    @abstractmethod
    def violations(self, weights: FloatArray, model: ModelView) -> list[str]:
        """Human-readable breaches by more than ``TOLERANCE`` (empty when it holds)."""

    def precheck(self, model: ModelView) -> list[PreconditionViolation]:
        """Necessary conditions of feasibility that fail (empty when none does)."""
        return []

    def relax(self, slacks: dict[str, FloatArray], model: ModelView) -> tuple[dict[str, Any], list[Relaxation]]:
        """Problem field changes and ``Relaxation`` records from an elastic solve's slacks (none by default)."""
        return {}, []

    def rows(self, model: ModelView) -> LinearRows | None:
        """Its dense rows on w, or None when it is not a plain linear family."""
        return None


# --- validation helpers ------------------------------------------------------------------------------------------


def vector(value: FloatArray | None, field: str, n_assets: int, *, allow_inf: bool = False) -> FloatArray | None:
    """``value`` as a float array of shape (N,), or None; InvalidInputError naming ``<field>`` or ``<field>[i]``."""
    if value is None:
        return None
    array = np.asarray(value, dtype=np.float64)
    if array.shape != (n_assets,):
        raise InvalidInputError.for_field(field, f"has {array.size} values for {n_assets} strategies")
    bad = np.flatnonzero(np.isnan(array) if allow_inf else ~np.isfinite(array))
    if bad.size:
        raise InvalidInputError.for_field(
            f"{field}[{int(bad[0])}]", "must be finite" if not allow_inf else "must not be NaN"
        )
    return array


def limit(value: float | None, field: str) -> float | None:
    """A finite non-negative limit, or None; InvalidInputError naming ``<field>``."""
    if value is None:
        return None
    if not np.isfinite(value) or value < 0:
        raise InvalidInputError.for_field(field, f"must be finite and non-negative, got {value:g}")
    return float(value)


# --- the budget --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Budget(Constraint):
    """Fully invested: 1ᵀw = 1 (never relaxed)."""

    name: ClassVar[str] = "budget"

    def write(self, builder: ProgramBuilder) -> None:
        builder.add(cp.sum(builder.x) == builder.scale)

    def violations(self, weights: FloatArray, model: ModelView) -> list[str]:
        total = float(weights.sum())
        return [f"weights sum to {total:.9g}, not 1"] if abs(total - 1.0) > TOLERANCE else []

    def rows(self, model: ModelView) -> LinearRows:
        return LinearRows(np.ones((1, len(model.lower))), np.ones(1), np.ones(1))


@dataclass(frozen=True, slots=True)
class NetExposure(Constraint):
    """Net exposure bounds low ≤ 1ᵀw ≤ high in place of the budget; the rest of the capital is cash at r_f."""

    name: ClassVar[str] = "net_exposure"
    low: float
    """Lower bound of 1ᵀw (−inf when open)."""
    high: float
    """Upper bound of 1ᵀw (+inf when open)."""

    def structure(self) -> tuple[Any, ...]:
        return (bool(np.isfinite(self.low)), bool(np.isfinite(self.high)))

    def write(self, builder: ProgramBuilder) -> None:
        total = cp.sum(builder.x)
        if np.isfinite(self.low):
            low = builder.value(self, "low")
            builder.add(total >= builder.scaled(low) - builder.slack(self, "low"))
        if np.isfinite(self.high):
            high = builder.value(self, "high")
            builder.add(total <= builder.scaled(high) + builder.slack(self, "high"))

    def violations(self, weights: FloatArray, model: ModelView) -> list[str]:
        total = float(weights.sum())
        found = []
        if total < self.low - TOLERANCE:
            found.append(f"net exposure {total:.9g} below {self.low:g}")
        if total > self.high + TOLERANCE:
            found.append(f"net exposure {total:.9g} above {self.high:g}")
        return found

    def relax(self, slacks: dict[str, FloatArray], model: ModelView) -> tuple[dict[str, Any], list[Relaxation]]:
        changes: dict[str, Any] = {}
        relaxations = []
        low_by = float(_amount(slacks.get("low", np.zeros(()))))
        high_by = float(_amount(slacks.get("high", np.zeros(()))))
        if low_by:
            relaxed = self.low - low_by
            relaxations.append(
                Relaxation(
                    "min_net_exposure",
                    self.low,
                    relaxed,
                    f"lower min_net_exposure from {self.low:.6g} to {relaxed:.6g}",
                )
            )
            changes["min_net_exposure"] = relaxed
        if high_by:
            relaxed = self.high + high_by
            relaxations.append(
                Relaxation(
                    "max_net_exposure",
                    self.high,
                    relaxed,
                    f"raise max_net_exposure from {self.high:.6g} to {relaxed:.6g}",
                )
            )
            changes["max_net_exposure"] = relaxed
        return changes, relaxations

    def rows(self, model: ModelView) -> LinearRows:
        return LinearRows(np.ones((1, len(model.lower))), np.array([self.low]), np.array([self.high]))


# --- per-name bounds ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bounds(Constraint):
    """Per-name weight bounds l ≤ w ≤ u (a positive minimum relaxes to 0 at most: long-only is a mandate)."""

    name: ClassVar[str] = "bounds"
    lower: FloatArray
    upper: FloatArray
    low_name: str = "1"
    """How the budget's low end is named in the ``BOUNDS_SUM`` message (``1``, ``min_net_exposure``, ``-inf``)."""
    high_name: str = "1"

    def write(self, builder: ProgramBuilder) -> None:
        x = builder.x
        below = builder.slack(self, "below", builder.n)
        above = builder.slack(self, "above", builder.n)
        builder.add(
            x >= builder.scaled(builder.value(self, "lower")) - below,
            x <= builder.scaled(builder.value(self, "upper")) + above,
        )
        if builder.elastic:
            # A positive minimum may fall to 0, never below; a negative one (a short limit) not at all.
            builder.add(cast(cp.Constraint, below <= np.maximum(self.lower, 0.0)))

    def violations(self, weights: FloatArray, model: ModelView) -> list[str]:
        ids = model.symbols
        found = [
            f"{ids[i]} weight {weights[i]:.9g} below {self.lower[i]:g}"
            for i in _where(weights < self.lower - TOLERANCE)
        ]
        found += [
            f"{ids[i]} weight {weights[i]:.9g} above {self.upper[i]:g}"
            for i in _where(weights > self.upper + TOLERANCE)
        ]
        return found

    def precheck(self, model: ModelView) -> list[PreconditionViolation]:
        found = []
        budget = model.budget
        if self.lower.sum() > budget[1] + 1e-9:
            found.append(
                PreconditionViolation(
                    "BOUNDS_SUM",
                    "lower_bounds",
                    f"minimum weights sum to {self.lower.sum():.6g} > {self.high_name} ({budget[1]:g})",
                )
            )
        if self.upper.sum() < budget[0] - 1e-9:
            found.append(
                PreconditionViolation(
                    "BOUNDS_SUM",
                    "upper_bounds",
                    f"maximum weights sum to {self.upper.sum():.6g} < {self.low_name} ({budget[0]:g})",
                )
            )
        return found

    def relax(self, slacks: dict[str, FloatArray], model: ModelView) -> tuple[dict[str, Any], list[Relaxation]]:
        lower, upper, ids = self.lower, self.upper, model.symbols
        new_lower = lower - _amount(slacks["below"])
        new_upper = upper + _amount(slacks["above"])
        new_lower = np.where((lower >= 0.0) & (new_lower < lower), np.maximum(new_lower, 0.0), new_lower)
        relaxations = [
            Relaxation(
                f"lower_bounds[{i}]",
                float(lower[i]),
                float(new_lower[i]),
                f"lower the minimum weight of {ids[i]} from {lower[i]:.6g} to {new_lower[i]:.6g}",
            )
            for i in _where(new_lower < lower)
        ]
        relaxations += [
            Relaxation(
                f"upper_bounds[{i}]",
                float(upper[i]),
                float(new_upper[i]),
                f"raise the maximum weight of {ids[i]} from {upper[i]:.6g} to {new_upper[i]:.6g}",
            )
            for i in _where(new_upper > upper)
        ]
        return {"lower_bounds": new_lower, "upper_bounds": new_upper}, relaxations


def _where(mask: NDArray[np.bool_]) -> list[int]:
    return [int(i) for i in np.flatnonzero(mask)]


# --- group limits ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GroupRow:
    """One group limit: the 0/1 membership of the group in its classification scheme and its bounds."""

    label: str
    """``group`` for the default sector scheme, ``scheme:group`` otherwise."""
    scheme: str
    members: FloatArray
    """Shape (N,), 1 for a member."""
    min_weight: float | None
    max_weight: float | None


@dataclass(frozen=True, slots=True)
class GroupLimits(Constraint):
    """Bounds on the summed weight of the members of groups of any classification scheme (sectors, countries …)."""

    name: ClassVar[str] = "group_limits"
    limits: tuple[SectorLimit, ...]
    """As asked (index k names ``sector_limits[k]``)."""
    groups: tuple[GroupRow, ...]
    """One row per limit, in the order of ``limits``."""
    min_matrix: FloatArray
    """Memberships of the groups with a minimum, shape (k_min, N)."""
    min_weights: FloatArray
    max_matrix: FloatArray
    """Memberships of the groups with a maximum, shape (k_max, N)."""
    max_weights: FloatArray
    linear_rows: LinearRows
    """Every limit as a row ``min ≤ mᵀw ≤ max`` (±inf where open), in the order of ``limits`` (read-only)."""

    @classmethod
    def build(
        cls,
        limits: tuple[SectorLimit, ...],
        sectors: tuple[str, ...],
        classifications: tuple[tuple[str, tuple[str, ...]], ...],
        n_assets: int,
    ) -> GroupLimits | None:
        """The validated family, or None without limits.

        Raises
        ------
        InvalidInputError
            An unknown scheme or a group without members (``sector_limits[k].scheme`` / ``.sector``), or
            a minimum above its maximum (``sector_limits[k]``).
        """
        if not limits:
            return None
        if n_assets > GROUP_CACHE_MAX_ASSETS:
            return cls.assemble(limits, sectors, classifications, n_assets)
        try:
            return _cached_group_limits(limits, sectors, classifications, n_assets)
        except TypeError:  # an unhashable argument (a list where a tuple belongs): built afresh
            return cls.assemble(limits, sectors, classifications, n_assets)

    @classmethod
    def assemble(
        cls,
        limits: tuple[SectorLimit, ...],
        sectors: tuple[str, ...],
        classifications: tuple[tuple[str, tuple[str, ...]], ...],
        n_assets: int,
    ) -> GroupLimits:
        """:meth:`build` without its cache (the same errors)."""
        schemes = dict(classifications)
        label_arrays: dict[str, NDArray[np.str_]] = {}  # each scheme's labels as one array, compared per limit
        groups = []
        for k, group_limit in enumerate(limits):
            if group_limit.scheme:
                if group_limit.scheme not in schemes:
                    known = ", ".join(sorted(schemes)) or "none"
                    raise InvalidInputError.for_field(
                        f"sector_limits[{k}].scheme",
                        f"no strategy is classified under scheme '{group_limit.scheme}' (schemes given: {known})",
                    )
                labels = schemes[group_limit.scheme]
            else:
                labels = sectors
            if group_limit.scheme not in label_arrays:
                label_arrays[group_limit.scheme] = np.asarray(labels, dtype=np.str_)
            members = (label_arrays[group_limit.scheme] == group_limit.sector).astype(np.float64)
            if not members.any():
                where = f"scheme '{group_limit.scheme}'" if group_limit.scheme else "sector"
                raise InvalidInputError.for_field(
                    f"sector_limits[{k}].sector", f"no strategy has {where} '{group_limit.sector}'"
                )
            low, high = group_limit.min_weight, group_limit.max_weight
            if low is not None and high is not None and low > high:
                raise InvalidInputError.for_field(
                    f"sector_limits[{k}]", f"min_weight {low:g} is above max_weight {high:g}"
                )
            label = f"{group_limit.scheme}:{group_limit.sector}" if group_limit.scheme else group_limit.sector
            groups.append(GroupRow(label, group_limit.scheme, members, low, high))
        minima = [g for g in groups if g.min_weight is not None]
        maxima = [g for g in groups if g.max_weight is not None]
        family = cls(
            limits=limits,
            groups=tuple(groups),
            min_matrix=np.array([g.members for g in minima]).reshape(len(minima), n_assets),
            min_weights=np.array([g.min_weight for g in minima], dtype=np.float64),
            max_matrix=np.array([g.members for g in maxima]).reshape(len(maxima), n_assets),
            max_weights=np.array([g.max_weight for g in maxima], dtype=np.float64),
            linear_rows=LinearRows(
                np.array([g.members for g in groups]).reshape(len(groups), n_assets),
                np.array([-np.inf if g.min_weight is None else g.min_weight for g in groups], dtype=np.float64),
                np.array([np.inf if g.max_weight is None else g.max_weight for g in groups], dtype=np.float64),
            ),
        )
        for array in (
            family.min_matrix,
            family.min_weights,
            family.max_matrix,
            family.max_weights,
            family.linear_rows.matrix,
            family.linear_rows.lower,
            family.linear_rows.upper,
            *(g.members for g in groups),
        ):
            array.flags.writeable = False  # shared between the models of equal limits (``build``'s cache)
        return family

    def structure(self) -> tuple[Any, ...]:
        return (len(self.min_weights), len(self.max_weights))

    def write(self, builder: ProgramBuilder) -> None:
        x = builder.x
        if builder.elastic:
            # One row and one slack per limit, in the order asked (each relaxes on its own).
            for k, group in enumerate(self.groups):
                if group.min_weight is not None:
                    builder.add(group.members @ x >= builder.scaled(group.min_weight) - builder.slack(self, f"min{k}"))
                if group.max_weight is not None:
                    builder.add(group.members @ x <= builder.scaled(group.max_weight) + builder.slack(self, f"max{k}"))
            return
        if len(self.min_weights):
            minima = builder.scaled(builder.value(self, "min_weights"))
            builder.add(builder.value(self, "min_matrix") @ x >= minima)
        if len(self.max_weights):
            maxima = builder.scaled(builder.value(self, "max_weights"))
            builder.add(builder.value(self, "max_matrix") @ x <= maxima)

    def violations(self, weights: FloatArray, model: ModelView) -> list[str]:
        found = []
        for group in self.groups:
            total = float(group.members @ weights)
            if group.min_weight is not None and total < group.min_weight - TOLERANCE:
                found.append(f"sector {group.label} weight {total:.9g} below {group.min_weight:g}")
            if group.max_weight is not None and total > group.max_weight + TOLERANCE:
                found.append(f"sector {group.label} weight {total:.9g} above {group.max_weight:g}")
        return found

    def precheck(self, model: ModelView) -> list[PreconditionViolation]:
        found = []
        lower, upper = model.lower, model.upper
        for k, group in enumerate(self.groups):
            subject = f"sector_limits[{k}]"
            if group.min_weight is not None:
                reachable = float(group.members @ upper)
                if group.min_weight > reachable + 1e-9:
                    found.append(
                        PreconditionViolation(
                            "SECTOR_BOUNDS",
                            subject,
                            f"sector '{group.label}' minimum {group.min_weight:g} exceeds its members' maximum "
                            f"weights ({reachable:.6g})",
                        )
                    )
            if group.max_weight is not None:
                floor = float(group.members @ lower)
                if group.max_weight < floor - 1e-9:
                    found.append(
                        PreconditionViolation(
                            "SECTOR_BOUNDS",
                            subject,
                            f"sector '{group.label}' maximum {group.max_weight:g} is below its members' minimum "
                            f"weights ({floor:.6g})",
                        )
                    )
        # The least total weight the group minima of one scheme force: each limited group holds at least max(its
        # minimum, its members' lower bounds); every other strategy at least its lower bound (negative when
        # shorting). Groups of different schemes overlap, so the sum of minima bounds only within one scheme.
        for scheme in sorted({group.scheme for group in self.groups}):
            in_scheme = [group for group in self.groups if group.scheme == scheme]
            if not any(group.min_weight is not None for group in in_scheme):
                continue
            covered = np.zeros(len(lower), dtype=bool)
            forced = 0.0
            for group in in_scheme:
                covered |= group.members > 0
                least = group.min_weight if group.min_weight is not None else -np.inf
                forced += max(least, float(group.members @ lower))
            forced += float(lower[~covered].sum())
            if forced > model.budget[1] + 1e-9:
                label = f"scheme '{scheme}' group" if scheme else "sector"
                found.append(
                    PreconditionViolation(
                        "SECTOR_MINIMA",
                        "sector_limits",
                        f"{label} minima (with the other strategies at their lower bounds) sum to {forced:.6g} > "
                        f"{model.budget[1]:g}",
                    )
                )
        return found

    def relax(self, slacks: dict[str, FloatArray], model: ModelView) -> tuple[dict[str, Any], list[Relaxation]]:
        limits = list(self.limits)
        relaxations = []
        for k, group in enumerate(self.groups):
            down = float(_amount(slacks[f"min{k}"])) if group.min_weight is not None else 0.0
            up = float(_amount(slacks[f"max{k}"])) if group.max_weight is not None else 0.0
            if not (down or up):
                continue
            group_limit = limits[k]
            new_min = None if group.min_weight is None else group.min_weight - down
            new_max = None if group.max_weight is None else group.max_weight + up
            if down and group.min_weight is not None and new_min is not None:
                relaxations.append(
                    Relaxation(
                        f"sector_limits[{k}].min_weight",
                        group.min_weight,
                        new_min,
                        f"lower the minimum of group '{group.label}' from {group.min_weight:.6g} to {new_min:.6g}",
                    )
                )
            if up and group.max_weight is not None and new_max is not None:
                relaxations.append(
                    Relaxation(
                        f"sector_limits[{k}].max_weight",
                        group.max_weight,
                        new_max,
                        f"raise the maximum of group '{group.label}' from {group.max_weight:.6g} to {new_max:.6g}",
                    )
                )
            limits[k] = SectorLimit(group_limit.sector, new_min, new_max, group_limit.scheme)
        return {"sector_limits": tuple(limits)}, relaxations

    def rows(self, model: ModelView) -> LinearRows:
        return self.linear_rows


GROUP_CACHE_MAX_ASSETS = 256
"""Largest universe whose group limits ``GroupLimits.build`` keeps (``_cached_group_limits``, 64 entries: a few MB
at most). Above it building them is negligible next to the solve, and an entry would hold megabytes."""


@lru_cache(maxsize=64)
def _cached_group_limits(
    limits: tuple[SectorLimit, ...],
    sectors: tuple[str, ...],
    classifications: tuple[tuple[str, tuple[str, ...]], ...],
    n_assets: int,
) -> GroupLimits:
    """``GroupLimits.assemble``, kept per arguments.

    A batch or a stream of requests repeats the same limits over the same universe, and building the membership
    rows cost a tenth of a small solve (N = 20, three limits).
    """
    return GroupLimits.assemble(limits, sectors, classifications, n_assets)


# --- return and risk limits --------------------------------------------------------------------------------------


class ScalarLimit(Constraint):
    """A family bounded by one scalar limit, named like its ``PortfolioProblem`` field (``name``)."""

    relax_sign: ClassVar[float] = 1.0
    """Direction in which an elastic solve relaxes the limit: +1 raises it, −1 lowers it."""
    relax_verb: ClassVar[str] = "raise"
    limit: float
    """The limit (a dataclass field of each subclass)."""

    @property
    def bound(self) -> float:
        """The limit's value (``limit``, or a subclass's own name for it)."""
        return self.limit

    def relax(self, slacks: dict[str, FloatArray], model: ModelView) -> tuple[dict[str, Any], list[Relaxation]]:
        """Move the limit by its slack (plus ``RELAXATION_MARGIN``) in ``relax_sign``'s direction."""
        by = float(_amount(slacks.get("limit", np.zeros(()))))
        if not by:
            return {}, []
        original = self.bound
        relaxed = original + self.relax_sign * by
        description = f"{self.relax_verb} {self.name} from {original:.6g} to {relaxed:.6g}"
        return {self.name: relaxed}, [Relaxation(self.name, original, relaxed, description)]


@dataclass(frozen=True, slots=True)
class MinReturn(ScalarLimit):
    """A minimum annualised expected return, net of transaction costs and with the cash leg: μᵀw − cost ≥ r_min."""

    name: ClassVar[str] = "min_return"
    relax_sign: ClassVar[float] = -1.0
    relax_verb: ClassVar[str] = "lower"
    limit: float

    def write(self, builder: ProgramBuilder) -> None:
        target = builder.scaled(builder.value(self, "limit"))
        builder.add(builder.net_return() >= target - builder.slack(self, "limit"))

    def violations(self, weights: FloatArray, model: ModelView) -> list[str]:
        expected = float(model.expected_returns @ weights) + (1.0 - float(weights.sum())) * model.risk_free_rate
        cost = 0.0 if model.costs is None else float(model.costs @ np.abs(weights - model.current))
        net = expected - cost
        return [f"expected return net of costs {net:.9g} below {self.limit:g}"] if net < self.limit - TOLERANCE else []

    def precheck(self, model: ModelView) -> list[PreconditionViolation]:
        best = model.best_total_return
        if self.limit > best + 1e-12:
            return [
                PreconditionViolation(
                    "TARGET_RETURN",
                    "min_return",
                    f"min_return {self.limit:g} is above the highest expected return the weight bounds allow "
                    f"({best:.6g})",
                )
            ]
        return []

    def rows(self, model: ModelView) -> LinearRows | None:
        if model.costs is not None:
            return None
        # With net exposure bounds the cash leg r_f(1 − 1ᵀw) moves r_f into the coefficients and the bound.
        cash = model.risk_free_rate if model.has_net_exposure else 0.0
        coefficients = model.expected_returns - cash
        return LinearRows(coefficients[None, :], np.array([self.limit - cash]), np.array([np.inf]))


@dataclass(frozen=True, slots=True)
class MaxVolatility(ScalarLimit):
    """A maximum annualised volatility ‖Fᵀw‖ ≤ σ_max (a second-order cone)."""

    name: ClassVar[str] = "max_volatility"
    conic: ClassVar[bool] = True
    limit: float

    def write(self, builder: ProgramBuilder) -> None:
        cap = builder.scaled(builder.value(self, "limit")) + builder.slack(self, "limit")
        builder.add(cp.norm(builder.factor().T @ builder.x, 2) <= cap, linear=False)

    def violations(self, weights: FloatArray, model: ModelView) -> list[str]:
        volatility = float(np.sqrt(max(float(weights @ model.covariance @ weights), 0.0)))
        return [f"volatility {volatility:.9g} above {self.limit:g}"] if volatility > self.limit + TOLERANCE else []


# --- trading limits: turnover, per-name caps, leverage, tracking error, beta --------------------------------------


@dataclass(frozen=True, slots=True)
class TurnoverLimit(ScalarLimit):
    """Two-way turnover Σ|w − w₀| ≤ τ against the current weights w₀ (fractions of portfolio value)."""

    name: ClassVar[str] = "turnover_limit"
    limit: float

    def write(self, builder: ProgramBuilder) -> None:
        cap = builder.scaled(builder.value(self, "limit", nonneg=True)) + builder.slack(self, "limit")
        builder.add(cp.sum(builder.trades()) <= cap)

    def violations(self, weights: FloatArray, model: ModelView) -> list[str]:
        turnover = float(np.abs(weights - model.current).sum())
        return [f"turnover {turnover:.9g} above {self.limit:g}"] if turnover > self.limit + TOLERANCE else []

    def precheck(self, model: ModelView) -> list[PreconditionViolation]:
        # Σ|w − w₀| ≥ |Σ(w − w₀)| ≥ the distance of Σw₀ to the budget [low, high], and ≥ the distance of w₀ to
        # the bounds' box.
        budget, current = model.budget, model.current
        held = float(current.sum())
        budget_gap = max(budget[0] - held, held - budget[1], 0.0)
        box = np.maximum(model.lower - current, 0.0) + np.maximum(current - model.upper, 0.0)
        needed = max(budget_gap, float(np.sum(box)))
        if needed > self.limit + 1e-9:
            return [
                PreconditionViolation(
                    "TURNOVER",
                    "turnover_limit",
                    f"turnover_limit {self.limit:g} is below the turnover the budget and weight bounds force "
                    f"({needed:.6g})",
                )
            ]
        return []


@dataclass(frozen=True, slots=True)
class TurnoverCaps(Constraint):
    """Per-name trade caps |w_i − w₀_i| ≤ c_i (inf where a name has none)."""

    name: ClassVar[str] = "turnover_caps"
    caps: FloatArray
    """As asked, inf where none."""
    reach: FloatArray
    """The caps a program writes: an infinite cap becomes one no feasible weight reaches, max(|l|, |u|) + |w₀| + 1,
    so that the program's shape does not depend on which caps are finite."""

    @classmethod
    def build(cls, caps: FloatArray, lower: FloatArray, upper: FloatArray, current: FloatArray) -> TurnoverCaps:
        """The family with its program caps."""
        reach = np.maximum(np.abs(lower), np.abs(upper)) + np.abs(current) + 1.0
        reach = np.where(np.isfinite(reach), reach, 1e6)
        return cls(caps=caps, reach=np.asarray(np.where(np.isfinite(caps), caps, reach), dtype=np.float64))

    def write(self, builder: ProgramBuilder) -> None:
        slack = builder.slack(self, "caps", builder.n)
        caps = builder.scaled(builder.value(self, "reach", nonneg=True))
        builder.add(builder.trades() <= caps + slack)

    def violations(self, weights: FloatArray, model: ModelView) -> list[str]:
        trades = np.abs(weights - model.current)
        return [
            f"{model.symbols[i]} trade {trades[i]:.9g} above its cap {self.caps[i]:g}"
            for i in _where(trades > self.caps + TOLERANCE)
        ]

    def precheck(self, model: ModelView) -> list[PreconditionViolation]:
        # Each name is confined to [w₀ − cap, w₀ + cap] ∩ [l, u]; those intervals must be non-empty and admit the
        # budget.
        lower, upper, current, budget = model.lower, model.upper, model.current, model.budget
        low = np.maximum(lower, current - self.caps)
        high = np.minimum(upper, current + self.caps)
        empty = np.flatnonzero(low > high + 1e-9)
        if empty.size:
            i = int(empty[0])
            return [
                PreconditionViolation(
                    "TURNOVER",
                    f"turnover_caps[{i}]",
                    f"{model.symbols[i]}: no weight within cap {self.caps[i]:g} of its current weight "
                    f"{current[i]:g} lies within its bounds [{lower[i]:g}, {upper[i]:g}]",
                )
            ]
        if model.bounds_ok and (low.sum() > budget[1] + 1e-9 or high.sum() < budget[0] - 1e-9):
            return [
                PreconditionViolation(
                    "TURNOVER",
                    "turnover_caps",
                    f"within the per-name turnover caps the weights sum to between {low.sum():.6g} and "
                    f"{high.sum():.6g}, never within [{budget[0]:g}, {budget[1]:g}]",
                )
            ]
        return []

    def relax(self, slacks: dict[str, FloatArray], model: ModelView) -> tuple[dict[str, Any], list[Relaxation]]:
        by_name = np.where(np.isfinite(self.caps), _amount(slacks["caps"]), 0.0)
        if not by_name.any():
            return {}, []
        caps = self.caps + by_name
        relaxations = [
            Relaxation(
                f"turnover_caps[{i}]",
                float(self.caps[i]),
                float(caps[i]),
                f"raise the turnover cap of {model.symbols[i]} from {self.caps[i]:.6g} to {caps[i]:.6g}",
            )
            for i in _where(by_name > 0)
        ]
        return {"turnover_caps": caps}, relaxations


@dataclass(frozen=True, slots=True)
class LeverageLimit(ScalarLimit):
    """Gross exposure Σ|w_i| ≤ L."""

    name: ClassVar[str] = "leverage_limit"
    limit: float

    def write(self, builder: ProgramBuilder) -> None:
        cap = builder.scaled(builder.value(self, "limit", nonneg=True)) + builder.slack(self, "limit")
        builder.add(cp.norm1(builder.x) <= cap)

    def violations(self, weights: FloatArray, model: ModelView) -> list[str]:
        gross = float(np.abs(weights).sum())
        return [f"leverage {gross:.9g} above {self.limit:g}"] if gross > self.limit + TOLERANCE else []

    def precheck(self, model: ModelView) -> list[PreconditionViolation]:
        # Gross exposure Σ|w| ≥ |Σw| ≥ the distance of 0 to the budget [low, high].
        low, high = model.budget
        least_gross = max(low, -high, 0.0)
        if self.limit < least_gross - 1e-9:
            return [
                PreconditionViolation(
                    "LEVERAGE",
                    "leverage_limit",
                    f"leverage_limit {self.limit:g} < {least_gross:g}: weights with net exposure in "
                    f"[{low:g}, {high:g}] have gross exposure Σ|w| ≥ {least_gross:g}",
                )
            ]
        return []


@dataclass(frozen=True, slots=True)
class TrackingErrorLimit(ScalarLimit):
    """Annualised tracking error ‖Fᵀ(w − b)‖ ≤ TE against benchmark weights b (a second-order cone)."""

    name: ClassVar[str] = "tracking_error_limit"
    conic: ClassVar[bool] = True
    benchmark: FloatArray
    limit: float

    def write(self, builder: ProgramBuilder) -> None:
        cap = builder.scaled(builder.value(self, "limit", nonneg=True)) + builder.slack(self, "limit")
        benchmark = builder.scaled(builder.value(self, "benchmark"))
        if builder.parametric:
            # A parameter times a parameter-affine term breaks DPP: the active position is a variable of its own.
            active = cp.Variable(builder.n)
            builder.add(active == builder.x - benchmark)
            builder.add(cp.norm(builder.factor().T @ active, 2) <= cap, linear=False)
        else:
            builder.add(cp.norm(builder.factor().T @ (builder.x - benchmark), 2) <= cap, linear=False)

    def violations(self, weights: FloatArray, model: ModelView) -> list[str]:
        active = weights - self.benchmark
        tracking_error = float(np.sqrt(max(float(active @ model.covariance @ active), 0.0)))
        if tracking_error > self.limit + TOLERANCE:
            return [f"tracking error {tracking_error:.9g} above {self.limit:g}"]
        return []


@dataclass(frozen=True, slots=True)
class BetaNeutrality(ScalarLimit):
    """Beta neutrality |βᵀw| ≤ tol against the market."""

    name: ClassVar[str] = "beta_tolerance"
    relax_verb: ClassVar[str] = "widen"
    betas: FloatArray
    tolerance: float

    @property
    def bound(self) -> float:
        """The tolerance."""
        return self.tolerance

    def write(self, builder: ProgramBuilder) -> None:
        exposure = builder.value(self, "betas") @ builder.x
        band = builder.scaled(builder.value(self, "tolerance", nonneg=True)) + builder.slack(self, "limit")
        builder.add(exposure <= band, exposure >= -band)

    def violations(self, weights: FloatArray, model: ModelView) -> list[str]:
        beta = float(self.betas @ weights)
        if abs(beta) > self.tolerance + TOLERANCE:
            return [f"portfolio beta {beta:.9g} outside ±{self.tolerance:g}"]
        return []

    def precheck(self, model: ModelView) -> list[PreconditionViolation]:
        if not model.bounds_ok:
            return []
        highest = model.best_return(self.betas)
        lowest = -model.best_return(-self.betas)
        if lowest > self.tolerance + 1e-9 or highest < -self.tolerance - 1e-9:
            return [
                PreconditionViolation(
                    "BETA",
                    "beta_tolerance",
                    f"the weight bounds allow portfolio betas in [{lowest:.6g}, {highest:.6g}], outside "
                    f"±{self.tolerance:g}",
                )
            ]
        return []


# --- cardinality ---------------------------------------------------------------------------------------------------


def holdable(
    lower: FloatArray, upper: FloatArray, min_position: float | None
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Boolean masks (N,) of the strategies that can be held long, and short (with |w| ≥ m when m is given)."""
    floor = 0.0 if min_position is None else min_position
    long_ok = (upper >= floor) & (upper > 0) if min_position is not None else upper > 0
    short_ok = (lower <= -floor) & (lower < 0) if min_position is not None else lower < 0
    return np.asarray(long_ok, dtype=np.bool_), np.asarray(short_ok, dtype=np.bool_)


@dataclass(frozen=True, slots=True)
class Cardinality(Constraint):
    """At most K names held (|w_i| > ``HELD_THRESHOLD``), each held name at |w_i| ≥ m: a mixed-integer family.

    No convex program can write it; ``_cardinality`` solves it by outer approximation over the other families.
    """

    name: ClassVar[str] = "cardinality"
    max_holdings: int | None
    """K, or None."""
    min_position: float | None
    """m in (0, 1], or None."""

    @classmethod
    def build(
        cls,
        max_holdings: int | None,
        min_position: float | None,
        lower: FloatArray,
        upper: FloatArray,
    ) -> Cardinality | None:
        """The validated family, or None when neither K nor a positive m is set.

        Raises
        ------
        InvalidInputError
            K not a positive integer (``max_holdings``); m negative, above 1 or not finite
            (``min_position_weight``); a non-finite weight bound (``lower_bounds[i]`` / ``upper_bounds[i]``:
            the mixed-integer program links each weight to its binary through the bounds).
        """
        k = max_holdings
        if k is not None and (isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1):
            raise InvalidInputError.for_field("max_holdings", f"must be a positive integer, got {k!r}")
        m = min_position
        if m is not None and not (np.isfinite(m) and 0.0 <= m <= 1.0):
            raise InvalidInputError.for_field("min_position_weight", f"must lie in [0, 1], got {m:g}")
        if k is None and (m is None or m == 0.0):
            return None
        for name, bounds in (("lower_bounds", lower), ("upper_bounds", upper)):
            bad = np.flatnonzero(~np.isfinite(bounds))
            if bad.size:
                raise InvalidInputError.for_field(
                    f"{name}[{int(bad[0])}]",
                    "must be finite with max_holdings or min_position_weight (the mixed-integer program links each "
                    "weight to its binary through the bounds)",
                )
        return cls((None if k is None else int(k)), (None if m is None or m == 0.0 else float(m)))

    def write(self, builder: ProgramBuilder) -> None:
        raise TypeError("cardinality is mixed-integer: solved by outer approximation, not written into a program")

    def violations(self, weights: FloatArray, model: ModelView) -> list[str]:
        held = np.abs(weights) > HELD_THRESHOLD
        found = []
        if self.max_holdings is not None and int(held.sum()) > self.max_holdings:
            found.append(f"{int(held.sum())} holdings above max_holdings {self.max_holdings}")
        if self.min_position is not None:
            for i in _where(held & (np.abs(weights) < self.min_position - TOLERANCE)):
                found.append(
                    f"{model.symbols[i]} weight {weights[i]:.9g} held below min_position_weight {self.min_position:g}"
                )
        return found

    def precheck(self, model: ModelView) -> list[PreconditionViolation]:
        lower, upper, ids = model.lower, model.upper, model.symbols
        k, m = self.max_holdings, self.min_position
        found: list[PreconditionViolation] = []
        forced = (lower > 0) | (upper < 0)
        if k is not None and int(forced.sum()) > k:
            names = ", ".join(ids[i] for i in np.flatnonzero(forced)[:5])
            found.append(
                PreconditionViolation(
                    "CARDINALITY",
                    "max_holdings",
                    f"{int(forced.sum())} strategies have bounds that exclude 0 and must be held ({names}"
                    f"{', ...' if forced.sum() > 5 else ''}); max_holdings is {k}",
                )
            )
        long_ok, short_ok = holdable(lower, upper, m)
        if m is not None:
            stuck = ((lower > 0) & ~long_ok) | ((upper < 0) & ~short_ok)
            for i in np.flatnonzero(stuck)[:3]:
                found.append(
                    PreconditionViolation(
                        "CARDINALITY",
                        "min_position_weight",
                        f"{ids[i]}: its bounds [{lower[i]:g}, {upper[i]:g}] force it to be held, but no weight "
                        f"within them reaches min_position_weight {m:g}",
                    )
                )
        low, high = model.budget
        if bool(np.all(lower >= 0)) and low > 0:
            caps = np.sort(upper[long_ok])[::-1]
            count = len(caps) if k is None else min(k, len(caps))
            reachable = float(caps[:count].sum())
            if reachable < low - 1e-9:
                if k is not None:
                    subject = "max_holdings"
                    what = f"the {k} largest upper bounds" + (f" of the strategies that can reach {m:g}" if m else "")
                else:
                    subject = "min_position_weight"
                    what = f"the upper bounds of the strategies that can reach min_position_weight {m:g}"
                found.append(
                    PreconditionViolation(
                        "CARDINALITY", subject, f"{what} sum to {reachable:.6g} < the budget's {low:g}"
                    )
                )
            elif m is not None:
                least = int(np.searchsorted(np.cumsum(caps), low - 1e-9) + 1)  # the fewest holdings that reach low
                if m * least > high + 1e-9:
                    found.append(
                        PreconditionViolation(
                            "CARDINALITY",
                            "min_position_weight",
                            f"weights summing to {low:g} need at least {least} holdings (upper bounds), each at "
                            f"least {m:g}: {m * least:.6g} > {high:g}",
                        )
                    )
                floor = float(np.maximum(lower[lower > 0], m).sum())
                if floor > high + 1e-9:
                    found.append(
                        PreconditionViolation(
                            "CARDINALITY",
                            "min_position_weight",
                            f"the strategies that must be held, each at max(min_weight, {m:g}), sum to {floor:.6g} "
                            f"> {high:g}",
                        )
                    )
        return found
