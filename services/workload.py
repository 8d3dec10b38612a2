"""How heavy an optimization is: the traits that decide which solver pool runs it.

Most calls are small (tens of strategies, mean-variance: milliseconds); a few are large or slow (hundreds to
thousands of strategies, scenario risk measures with one variable per observation, mixed-integer cardinality,
robust second-order cones: seconds). The server runs the heavy ones in a pool of their own
(``command_side.workers.SolverPool``'s heavy pool), so that small calls keep their latency while heavy ones run:
the specification's scaling by problem complexity. The classification is pure and cheap: it reads the problem's
size and the method's settings, never the data, and the command side computes the same :class:`Workload` from a
request still in wire form (``command_side.optimization_adapter.request_workload``).
"""

from __future__ import annotations

from dataclasses import dataclass

from services.engine import Method, MethodSettings
from services.optimization import PortfolioProblem

DEFAULT_HEAVY_ASSETS = 500
"""Strategies from which a problem counts as heavy whatever its method (``Workload.is_heavy``).

At N = 500 a max-Sharpe solve takes about 0.1-0.3 s and a covariance of N = 1000 alone is 8 MB to estimate and
ship, against a few milliseconds at N = 20 (``benchmarks/optimize_latency.py``, 2 shared cores).
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    """The traits of one optimization that make it heavy.

    Attributes
    ----------
    assets : int
        Number of strategies N.
    scenario_risk : bool
        A scenario risk measure (CVaR, MAD, CDaR): a linear program with one variable per observation.
    cardinality : bool
        ``max_holdings`` or ``min_position_weight``: a mixed-integer program.
    robust : bool
        Robust optimization: a second-order cone over the uncertainty set of expected returns.
    """

    assets: int
    scenario_risk: bool = False
    cardinality: bool = False
    robust: bool = False

    def is_heavy(self, heavy_assets: int = DEFAULT_HEAVY_ASSETS) -> bool:
        """Whether this job belongs to the heavy pool.

        Parameters
        ----------
        heavy_assets : int, optional
            Strategies from which any problem is heavy (``DEFAULT_HEAVY_ASSETS``); values below 1 count as 1.

        Returns
        -------
        bool
            True for ``assets >= heavy_assets``, a scenario risk measure, cardinality or robust optimization.
        """
        return self.assets >= max(1, heavy_assets) or self.scenario_risk or self.cardinality or self.robust


def job_workload(problem: PortfolioProblem, method: MethodSettings) -> Workload:
    """The :class:`Workload` of a problem and its method (no data is read).

    Parameters
    ----------
    problem : PortfolioProblem
        The problem over N strategies (``symbols``, ``max_holdings``, ``min_position_weight``).
    method : MethodSettings
        The method and its risk measure.

    Returns
    -------
    Workload
        Its traits.
    """
    return Workload(
        assets=len(problem.symbols),
        scenario_risk=method.risk_measure is not None,
        cardinality=problem.max_holdings is not None or problem.min_position_weight is not None,
        robust=method.method is Method.ROBUST_OPTIMIZATION,
    )
