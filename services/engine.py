"""The engine's single entry point: inputs and a problem in, an optimization outcome out.

This is what the command side runs in its worker processes: it is pure (no I/O) and picklable both ways.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from services.estimators import estimate_moments
from services.mean_variance import optimize_mean_variance, validate_moments
from services.types import (
    EstimatedMoments,
    EstimationSettings,
    Moments,
    OptimizationResult,
    PortfolioProblem,
    ReturnHistory,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class OptimizationJob:
    """Everything one optimization needs.

    Attributes
    ----------
    problem : PortfolioProblem
        Objective and constraints over N strategies.
    inputs : ReturnHistory or Moments
        A return history of shape (T, N) to estimate moments from, or annualised moments.
    settings : EstimationSettings
        Estimators and annualisation (ignored for moments input).
    time_limit_s : float or None
        Seconds left for the whole job (from the call's deadline); None = no limit.
    """

    problem: PortfolioProblem
    inputs: ReturnHistory | Moments
    settings: EstimationSettings
    time_limit_s: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OptimizationOutcome:
    """The result with the moments it was computed from."""

    result: OptimizationResult
    estimated: EstimatedMoments
    total_time_ms: float
    """Wall time of estimation plus solve (milliseconds)."""


def run_optimization(job: OptimizationJob) -> OptimizationOutcome:
    """Estimate moments (unless given), validate them and solve the mean-variance problem.

    Parameters
    ----------
    job : OptimizationJob
        Problem, inputs, estimation settings and time limit.

    Returns
    -------
    OptimizationOutcome
        Optimal weights of shape (N,), performance, solve metadata and the moments used.

    Raises
    ------
    InvalidInputError, InfeasibleError, DeadlineExceededError, OptimizationError
        See ``estimate_moments`` and ``optimize_mean_variance``.
    """
    started = time.perf_counter()
    if isinstance(job.inputs, Moments):
        validate_moments(job.inputs, job.problem.n_assets)
        estimated = EstimatedMoments(moments=job.inputs, observations=0, missing_data_policy="NONE")
    else:
        estimated = estimate_moments(job.inputs, job.settings)
    remaining = None
    if job.time_limit_s is not None:
        remaining = job.time_limit_s - (time.perf_counter() - started)
    result = optimize_mean_variance(job.problem, estimated.moments, time_limit_s=remaining)
    return OptimizationOutcome(
        result=result, estimated=estimated, total_time_ms=(time.perf_counter() - started) * 1000.0
    )
