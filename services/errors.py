"""The error tree of stratopt's domain, free of any transport.

Each error carries the gRPC status code name it maps to (``code``) and, where it helps the caller, the
offending fields (``field_violations``, rendered as ``google.rpc.BadRequest``) or the failed pre-checks
(``precondition_violations``, rendered as ``google.rpc.PreconditionFailure``). The servicers' error-mapping
interceptors turn them into ``google.rpc.Status``; unknown exceptions become INTERNAL.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid request field."""

    field: str
    """Path of the field in the request, e.g. ``strategies[2].returns[17]`` (AIP-193 style)."""
    description: str
    """What is wrong with it."""


@dataclass(frozen=True, slots=True)
class PreconditionViolation:
    """One failed pre-check of a feasible problem."""

    type: str
    """Machine-readable kind, e.g. ``BOUNDS_SUM``, ``SECTOR_MINIMA``, ``NO_EXCESS_RETURN``."""
    subject: str
    """What the check was about, e.g. ``constraints.max_weight``."""
    description: str
    """What failed and by how much."""


class StratoptError(Exception):
    """Root of stratopt's errors."""

    code: str = "INTERNAL"

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

    code = "INVALID_ARGUMENT"

    @classmethod
    def for_field(cls, field: str, description: str) -> InvalidInputError:
        """Build the error for one offending field."""
        return cls(f"{field}: {description}", field_violations=(FieldViolation(field, description),))


class InfeasibleError(StratoptError):
    """The constraints admit no portfolio (caught by a pre-check or reported by the solver)."""

    code = "FAILED_PRECONDITION"


class PreconditionError(StratoptError):
    """The system is not in a state to run the request (e.g. no stored prices for a strategy)."""

    code = "FAILED_PRECONDITION"


class OptimizationError(StratoptError):
    """The solver failed to produce a usable solution for a feasible-looking problem."""

    code = "INTERNAL"


class DeadlineExceededError(StratoptError):
    """The solve did not finish within the call's deadline."""

    code = "DEADLINE_EXCEEDED"


class NotFoundError(StratoptError):
    """The named portfolio, configuration or result does not exist."""

    code = "NOT_FOUND"


class UnavailableError(StratoptError):
    """A dependency (the database) cannot be reached; the call may be retried."""

    code = "UNAVAILABLE"


class PersistenceError(StratoptError):
    """A store could not complete an operation (the root of the persistence errors, shaped after PEP 249)."""

    code = "INTERNAL"


class IntegrityError(PersistenceError):
    """A write conflicts with what is stored (a duplicate key, e.g. a ``request_id`` already used)."""

    code = "ALREADY_EXISTS"


class OperationalError(PersistenceError, UnavailableError):
    """The store cannot be reached or dropped the connection mid-operation; the call may be retried."""

    code = "UNAVAILABLE"
