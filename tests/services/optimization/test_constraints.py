"""The constraint model itself: each family's rows, checks, pre-checks and program structure, on small cases.

Truth: rows and limits written out by hand for a 4-name example; NumPy evaluations of each family's definition on
random weight vectors (the check must flag exactly the breached rows); the property that an elastic program over a
feasible problem needs no slack.
"""

from __future__ import annotations

import numpy as np
import pytest

from services.errors import InfeasibleError
from services.optimization import (
    Bounds,
    Budget,
    GroupLimits,
    MinReturn,
    NetExposure,
    Objective,
    PortfolioProblem,
    ProblemModel,
    SectorLimit,
    TurnoverCaps,
    TurnoverLimit,
    find_relaxation,
)
from services.types import Moments

IDS = ("a", "b", "c", "d")
MU = np.array([0.10, 0.06, 0.08, 0.03])
MOMENTS = Moments(expected_returns=MU, covariance=np.diag([0.04, 0.02, 0.03, 0.01]))


def problem(**fields: object) -> PortfolioProblem:
    base: dict[str, object] = {
        "symbols": IDS,
        "objective": Objective.MIN_VOLATILITY,
        "lower_bounds": np.zeros(4),
        "upper_bounds": np.full(4, 0.6),
        "sectors": ("x", "x", "y", "z"),
    }
    base.update(fields)
    return PortfolioProblem(**base)  # type: ignore[arg-type]


def test_families_are_built_in_order_and_only_when_present() -> None:
    model = ProblemModel.build(problem(), MOMENTS)
    assert [type(c) for c in model.constraints] == [Budget, Bounds]
    full = ProblemModel.build(
        problem(
            min_net_exposure=0.5,
            sector_limits=(SectorLimit("x", max_weight=0.5),),
            min_return=0.05,
            current_weights=np.full(4, 0.25),
            turnover_limit=0.4,
            turnover_caps=np.array([0.1, np.inf, 0.2, np.inf]),
        ),
        MOMENTS,
    )
    assert [type(c) for c in full.constraints] == [
        NetExposure,
        Bounds,
        GroupLimits,
        MinReturn,
        TurnoverLimit,
        TurnoverCaps,
    ]
    # Vacuous limits build no family: all-infinite caps, zero costs, a zero minimum position.
    vacuous = ProblemModel.build(
        problem(turnover_caps=np.full(4, np.inf), transaction_costs_bps=np.zeros(4), min_position_weight=0.0), MOMENTS
    )
    assert [type(c) for c in vacuous.constraints] == [Budget, Bounds] and vacuous.costs is None


def test_rows_written_out_by_hand() -> None:
    model = ProblemModel.build(
        problem(
            sector_limits=(SectorLimit("x", min_weight=0.2, max_weight=0.5), SectorLimit("z", max_weight=0.1)),
            min_return=0.05,
            min_net_exposure=0.8,
            max_net_exposure=1.0,
            risk_free_rate=0.01,
        ),
        MOMENTS,
    )
    groups = model.get(GroupLimits)
    net = model.get(NetExposure)
    target = model.get(MinReturn)
    assert groups is not None and net is not None and target is not None
    rows = groups.rows(model)
    np.testing.assert_array_equal(rows.matrix, [[1, 1, 0, 0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(rows.lower, [0.2, -np.inf])
    np.testing.assert_array_equal(rows.upper, [0.5, 0.1])
    net_rows = net.rows(model)
    np.testing.assert_array_equal(net_rows.matrix, [[1, 1, 1, 1]])
    np.testing.assert_array_equal([net_rows.lower[0], net_rows.upper[0]], [0.8, 1.0])
    # With net exposure the cash leg earns r_f: μᵀw + r_f(1 − 1ᵀw) ≥ r_min  ⇔  (μ − r_f)ᵀw ≥ r_min − r_f.
    target_rows = target.rows(model)
    assert target_rows is not None
    np.testing.assert_allclose(target_rows.matrix, [MU - 0.01])
    np.testing.assert_allclose(target_rows.lower, [0.05 - 0.01])


def test_checks_flag_exactly_the_breached_rows() -> None:
    """On random weights, each linear family's check agrees with its definition evaluated in NumPy."""
    model = ProblemModel.build(
        problem(
            sector_limits=(SectorLimit("x", min_weight=0.3, max_weight=0.5),),
            min_return=0.07,
            current_weights=np.full(4, 0.25),
            turnover_limit=0.3,
            turnover_caps=np.array([0.1, 0.2, np.inf, 0.15]),
        ),
        MOMENTS,
    )
    rng = np.random.default_rng(3)
    for _ in range(200):
        w = rng.dirichlet(np.ones(4)) * rng.uniform(0.9, 1.1)
        x_total = w[0] + w[1]
        expected_return = float(MU @ w) + (1.0 - w.sum()) * 0.0
        trades = np.abs(w - 0.25)
        breaches = {
            "budget": abs(w.sum() - 1.0) > 1e-6,
            "bounds": bool(np.any(w > 0.6 + 1e-6)),
            "group_limits": x_total < 0.3 - 1e-6 or x_total > 0.5 + 1e-6,
            "min_return": expected_return < 0.07 - 1e-6,
            "turnover_limit": trades.sum() > 0.3 + 1e-6,
            "turnover_caps": bool(np.any(trades > np.array([0.1, 0.2, np.inf, 0.15]) + 1e-6)),
        }
        for family in model.constraints:
            assert bool(family.violations(w, model)) == breaches[family.name], (family.name, w)


def test_prechecks_name_the_conflicts() -> None:
    with pytest.raises(InfeasibleError) as caught:
        ProblemModel.build(
            problem(upper_bounds=np.full(4, 0.2), sector_limits=(SectorLimit("y", min_weight=0.5),)), MOMENTS
        ).precheck()
    types = [v.type for v in caught.value.precondition_violations]
    assert types == ["BOUNDS_SUM", "SECTOR_BOUNDS"]  # Σu = 0.8 < 1; group y's only member is capped at 0.2
    with pytest.raises(InfeasibleError) as target:
        ProblemModel.build(problem(min_return=0.2), MOMENTS).precheck()  # best: 0.6·0.10 + 0.4·0.08 = 0.092
    (violation,) = target.value.precondition_violations
    assert violation.type == "TARGET_RETURN" and "(0.092)" in violation.description


def test_program_structure_depends_on_shapes_not_values() -> None:
    one = ProblemModel.build(problem(sector_limits=(SectorLimit("x", max_weight=0.5),)), MOMENTS)
    other_values = ProblemModel.build(problem(sector_limits=(SectorLimit("y", max_weight=0.3),)), MOMENTS)
    more_rows = ProblemModel.build(
        problem(sector_limits=(SectorLimit("x", max_weight=0.5), SectorLimit("y", min_weight=0.1))), MOMENTS
    )
    assert one.structure() == other_values.structure()
    assert one.structure() != more_rows.structure()


def test_a_feasible_problem_needs_no_relaxation() -> None:
    feasible = problem(
        sector_limits=(SectorLimit("x", max_weight=0.5),),
        min_return=0.05,
        current_weights=np.full(4, 0.25),
        turnover_limit=0.5,
        leverage_limit=1.0,
    )
    assert find_relaxation(feasible, MOMENTS) is None


def test_group_limits_are_kept_per_arguments_up_to_the_cache_size() -> None:
    """Equal limits over an equal universe share one read-only family up to N = 256; above, each call builds its own."""
    from services.optimization._constraints import GROUP_CACHE_MAX_ASSETS, GroupLimits, SectorLimit

    for n, shared in ((20, True), (GROUP_CACHE_MAX_ASSETS + 1, False)):
        sectors = tuple(f"g{i % 3}" for i in range(n))
        limits = (SectorLimit("g0", max_weight=0.3), SectorLimit("g1", min_weight=0.2))
        first = GroupLimits.build(limits, sectors, (), n)
        second = GroupLimits.build(limits, tuple(list(sectors)), (), n)
        assert first is not None and second is not None
        assert (first is second) is shared
        np.testing.assert_array_equal(first.linear_rows.matrix, second.linear_rows.matrix)
        np.testing.assert_array_equal(first.linear_rows.matrix[0], [s == "g0" for s in sectors])
        np.testing.assert_array_equal(first.linear_rows.lower, [-np.inf, 0.2])
        np.testing.assert_array_equal(first.linear_rows.upper, [0.3, np.inf])
        with pytest.raises(ValueError, match="read-only"):  # shared arrays cannot be written
            first.linear_rows.matrix[0, 0] = 2.0
