"""The error tree of stratopt's domain, free of any transport.

Each error carries, where it helps the caller, the offending fields (``field_violations``) or the failed
pre-checks (``precondition_violations``). Which gRPC status code an error class answers with is the contract
adapter's business (``stratopt.rpc_errors.STATUS_CODES``), not the engine's; so is rendering the violations as
``google.rpc.BadRequest`` / ``google.rpc.PreconditionFailure``. Unknown exceptions become INTERNAL there.

Domain errors name domain parameters, never a request's field paths: a path is the Python expression that reaches
the value from the domain object the engine was given (``PortfolioProblem``, ``Moments``, ``ReturnHistory``,
``EstimationSettings``, ``MethodSettings``, ``AllocationRequest``, ...):

- an attribute by its name: ``turnover_limit``, ``risk_free_rate``, ``covariance``, ``missing_data_policy``;
- an attribute of a nested object after a dot: ``multi_objective.l2_weight``,
  ``black_litterman.view_confidences`` (``MethodSettings.black_litterman``);
- an element of an array or an item of a sequence by its 0-based position in square brackets, one index per axis
  as NumPy writes it, never by a symbol: ``upper_bounds[3]``, ``expected_returns[3]``,
  ``sector_limits[2].min_weight``, ``covariance[1, 2]``, ``returns[:, 4]`` (strategy 4's column),
  ``black_litterman.view_confidences[1]``, ``targets[4].symbol``;
- an object as a whole by its attribute's name: ``upper_bounds`` (the weight caps together), ``sector_limits``.

The adapter of each side holds the table from these names to its contract's field paths (the command side's is
``command_side.field_paths``), so the engine never computes a proto path.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid request field."""

    field: str
    """The parameter at fault, as a domain path (module docstring): e.g. ``turnover_limit``, ``upper_bounds[3]``,
    ``covariance[1, 2]``, ``black_litterman.view_confidences[1]``. An adapter's own validation names the request's
    field path instead (``strategies[2].returns[17]``, AIP-193 style), and the adapter translates the domain paths
    to such paths before a caller sees them."""
    description: str
    """What is wrong with it."""


@dataclass(frozen=True, slots=True)
class PreconditionViolation:
    """One failed pre-check of a feasible problem."""

    type: str
    """Machine-readable kind, e.g. ``BOUNDS_SUM``, ``SECTOR_MINIMA``, ``NO_EXCESS_RETURN``."""
    subject: str
    """What the check was about: a domain path as for ``FieldViolation.field`` (``upper_bounds``,
    ``sector_limits[2]``, ``risk_free_rate``, ``constraints`` for the constraint set as a whole), or the
    identifier of the object concerned where it is no parameter (a recommendation id, a symbol)."""
    description: str
    """What failed and by how much."""


class StratoptError(Exception):
    """Root of stratopt's errors."""

    def __init__(
        self,
        message: str,
        *,
        field_violations: tuple[FieldViolation, ...] = (),
        precondition_violations: tuple[PreconditionViolation, ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field_violations = field_violations
        self.precondition_violations = precondition_violations


class InvalidInputError(StratoptError, ValueError):
    """The request is malformed: a field is missing, out of range, non-finite or inconsistent."""

    @classmethod
    def for_field(cls, field: str, description: str) -> InvalidInputError:
        """Build the error for one offending field."""
        return cls(f"{field}: {description}", field_violations=(FieldViolation(field, description),))


class InfeasibleError(StratoptError):
    """The constraints admit no portfolio (caught by a pre-check or reported by the solver)."""


class PreconditionError(StratoptError):
    """The system is not in a state to run the request (e.g. no stored prices for a strategy)."""


class OptimizationError(StratoptError):
    """The solver failed to produce a usable solution for a feasible-looking problem."""


class DeadlineExceededError(StratoptError):
    """The solve did not finish within the call's deadline."""


class NotFoundError(StratoptError):
    """The named portfolio, configuration or result does not exist."""


class PermissionDeniedError(StratoptError):
    """The authenticated caller may not do this (e.g. approve a recommendation it generated itself)."""


class UnavailableError(StratoptError):
    """A dependency (the database) cannot be reached; the call may be retried."""


class PersistenceError(StratoptError):
    """A store could not complete an operation (the root of the persistence errors, shaped after PEP 249)."""


class IntegrityError(PersistenceError):
    """A write conflicts with what is stored (a duplicate key, e.g. a ``request_id`` already used)."""


class OperationalError(PersistenceError, UnavailableError):
    """The store cannot be reached or dropped the connection mid-operation; the call may be retried."""


class ResourceExhaustedError(StratoptError):
    """The service is at capacity (its solve queue is full); the call may be retried after ``retry_after_s``.

    Parameters
    ----------
    message : str
        What is exhausted.
    retry_after_s : float
        Seconds after which a retry is likely to be admitted (the current queue wait estimate); sent to the
        caller as ``google.rpc.RetryInfo.retry_delay``.
    """

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
