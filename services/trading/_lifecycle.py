"""The approval lifecycle of a rebalance recommendation, as one pure state machine.

Every rule of the approval workflow lives here, and only here: the command side's stores apply these
transitions under their lock and persist the result; the query side reads a stored state through
:meth:`RecommendationState.status_at` with its own clock. Plain Python, no I/O.

States and transitions
----------------------
::

    open ── total trade value ≤ approval limit ──▶ AUTO_APPROVED   (decided at creation, no approver)
      └──── total trade value > approval limit ──▶ PENDING_APPROVAL until created_at + approval_ttl
                                                     │
                 approve (before expires_at) ────────┼──▶ APPROVED   (decided_by, decided_at, optional reason)
                 reject (before expires_at) ─────────┼──▶ REJECTED   (decided_by, decided_at, reason)
                 supersede (before expires_at) ──────┼──▶ EXPIRED    (decided_at = then, reason "superseded by
                                                     │                recommendation <id>")
                 time reaches expires_at ────────────┴──▶ EXPIRED    (decided_at = expires_at)

AUTO_APPROVED, APPROVED, REJECTED and EXPIRED are final: approve, reject and supersede of a recommendation in one
of them raise :class:`IllegalTransitionError` (``NOT_PENDING`` for a decided one, ``EXPIRED`` for an expired
one). Expiry is inclusive: at the instant ``expires_at`` itself a pending recommendation is already EXPIRED,
so an approval dated exactly at ``expires_at`` is refused.

Times are timezone-aware datetimes; money is in dollars ($) of the portfolio's currency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final

from services.errors import InvalidInputError, PreconditionError, PreconditionViolation


class RecommendationStatus(StrEnum):
    """Where a recommendation stands in its approval workflow (values are the stored names)."""

    PENDING_APPROVAL = "PENDING_APPROVAL"
    """Waiting for a decision until its ``expires_at``."""
    AUTO_APPROVED = "AUTO_APPROVED"
    """Total trade value at most the approval limit: approved at creation, without an approver."""
    APPROVED = "APPROVED"
    """Approved by an approver while pending."""
    REJECTED = "REJECTED"
    """Rejected by an approver (with a reason) while pending."""
    EXPIRED = "EXPIRED"
    """Undecided at its ``expires_at``, or superseded by a newer recommendation of the same portfolio."""


PENDING_STATUSES: Final = frozenset({RecommendationStatus.PENDING_APPROVAL})
"""Statuses that wait for a decision: the only ones approve, reject, supersede and expiry move."""
APPROVED_STATUSES: Final = frozenset({RecommendationStatus.APPROVED, RecommendationStatus.AUTO_APPROVED})
"""Statuses whose trades are to be executed (the wash-sale checks of later recommendations count them)."""
FINAL_STATUSES: Final = frozenset(RecommendationStatus) - PENDING_STATUSES
"""Statuses no transition leaves."""
SUPERSEDED_REASON_PREFIX: Final = "superseded by recommendation "
"""Start of the ``reason`` of a superseded recommendation; the successor's id follows."""


def initial_status(total_trade_value: float, approval_limit: float) -> RecommendationStatus:
    """The status a new recommendation starts in.

    Parameters
    ----------
    total_trade_value : float
        Buys plus sells of the recommendation ($, ≥ 0).
    approval_limit : float
        The policy's approval limit ($, ≥ 0; ``inf`` approves everything).

    Returns
    -------
    RecommendationStatus
        AUTO_APPROVED when ``total_trade_value ≤ approval_limit`` (a value exactly at the limit needs no
        approval), else PENDING_APPROVAL.

    Raises
    ------
    ValueError
        When either amount is NaN (a comparison with NaN would silently auto-approve).
    """
    if math.isnan(total_trade_value) or math.isnan(approval_limit):
        raise ValueError(
            f"total_trade_value ({total_trade_value!r}) and approval_limit ({approval_limit!r}) must not be NaN"
        )
    if total_trade_value <= approval_limit:
        return RecommendationStatus.AUTO_APPROVED
    return RecommendationStatus.PENDING_APPROVAL


class IllegalTransitionError(PreconditionError):
    """A transition the recommendation's status does not allow (a precondition error).

    Carries one :class:`services.errors.PreconditionViolation` whose ``type`` is ``NOT_PENDING`` (the
    recommendation is AUTO_APPROVED, APPROVED or REJECTED) or ``EXPIRED`` (it expired or was superseded) and
    whose ``subject`` is the recommendation id.
    """

    def __init__(self, kind: str, recommendation_id: str, description: str) -> None:
        super().__init__(
            description, precondition_violations=(PreconditionViolation(kind, recommendation_id, description),)
        )
        self.kind = kind
        """``NOT_PENDING`` or ``EXPIRED``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RecommendationState:
    """The approval state of one recommendation, as persisted.

    The state is what was last stored: a PENDING_APPROVAL state whose ``expires_at`` has passed is still
    pending here; :meth:`at` and :meth:`status_at` tell what it is at a given instant.

    Raises
    ------
    ValueError
        On construction, when a pending state has a ``decided_at`` or a final one has none.
    """

    recommendation_id: str
    """Recommendation identifier (UUID text); named in the errors."""
    status: RecommendationStatus
    """The stored status."""
    expires_at: datetime
    """End of the approval window (timezone-aware): ``created_at + approval_ttl`` for one that waited for
    approval (the time of the supersession when that came first), ``created_at`` for an auto-approved one."""
    decided_at: datetime | None = None
    """When it was decided, expired, superseded or auto-approved; None while pending."""
    decided_by: str = ""
    """The approver of an APPROVED or REJECTED recommendation; empty otherwise."""
    reason: str = ""
    """The approver's reason, or the supersession's; empty when none."""

    def __post_init__(self) -> None:
        pending = self.status in PENDING_STATUSES
        if pending != (self.decided_at is None):
            raise ValueError(
                f"a {self.status} recommendation {'has no' if pending else 'needs a'} decided_at "
                f"(got {self.decided_at!r})"
            )

    @classmethod
    def open(
        cls,
        *,
        recommendation_id: str,
        total_trade_value: float,
        approval_limit: float,
        created_at: datetime,
        approval_ttl: timedelta,
    ) -> RecommendationState:
        """The state of a new recommendation (see :func:`initial_status`).

        Parameters
        ----------
        recommendation_id : str
            Identifier of the new recommendation.
        total_trade_value : float
            Buys plus sells ($).
        approval_limit : float
            The policy's approval limit ($).
        created_at : datetime
            Creation time (timezone-aware).
        approval_ttl : timedelta
            How long a pending recommendation waits for a decision (> 0).

        Returns
        -------
        RecommendationState
            AUTO_APPROVED with ``decided_at = expires_at = created_at``, or PENDING_APPROVAL until
            ``created_at + approval_ttl``.

        Raises
        ------
        ValueError
            When ``approval_ttl`` is not positive or an amount is NaN.
        """
        if approval_ttl <= timedelta(0):
            raise ValueError(f"approval_ttl must be positive, got {approval_ttl}")
        status = initial_status(total_trade_value, approval_limit)
        if status is RecommendationStatus.AUTO_APPROVED:
            return cls(recommendation_id=recommendation_id, status=status, expires_at=created_at, decided_at=created_at)
        return cls(recommendation_id=recommendation_id, status=status, expires_at=created_at + approval_ttl)

    @property
    def superseded_by(self) -> str | None:
        """The id of the recommendation that superseded this one; None when it was not superseded."""
        if self.status is RecommendationStatus.EXPIRED and self.reason.startswith(SUPERSEDED_REASON_PREFIX):
            return self.reason.removeprefix(SUPERSEDED_REASON_PREFIX)
        return None

    def is_overdue(self, now: datetime) -> bool:
        """Whether the recommendation is pending and its approval window has closed at ``now``.

        Parameters
        ----------
        now : datetime
            The instant asked about (timezone-aware).

        Returns
        -------
        bool
            True when the stored status is PENDING_APPROVAL and ``expires_at ≤ now``.
        """
        return self.status in PENDING_STATUSES and self.expires_at <= now

    def at(self, now: datetime) -> RecommendationState:
        """The state at ``now``: the expiry applied when the recommendation is overdue.

        Parameters
        ----------
        now : datetime
            The instant asked about (timezone-aware).

        Returns
        -------
        RecommendationState
            EXPIRED with ``decided_at = expires_at`` (when it expired, not when this was noticed) when
            :meth:`is_overdue`, else this state unchanged.
        """
        if self.is_overdue(now):
            return replace(self, status=RecommendationStatus.EXPIRED, decided_at=self.expires_at)
        return self

    def status_at(self, now: datetime) -> RecommendationStatus:
        """The status at ``now`` (EXPIRED for a pending recommendation at or past ``expires_at``).

        Parameters
        ----------
        now : datetime
            The instant asked about (timezone-aware).

        Returns
        -------
        RecommendationStatus
            ``self.at(now).status``.
        """
        return self.at(now).status

    def _check_pending(self, at: datetime) -> None:
        """Raise the error of a transition out of a recommendation that is not pending at ``at``."""
        current = self.at(at)
        if current.status is RecommendationStatus.EXPIRED:
            if current.superseded_by is not None:
                description = f"recommendation '{self.recommendation_id}' was {current.reason}"
            else:
                description = (
                    f"recommendation '{self.recommendation_id}' expired at {current.expires_at.isoformat()} undecided"
                )
            raise IllegalTransitionError("EXPIRED", self.recommendation_id, description)
        if current.status not in PENDING_STATUSES:
            by = f" by '{current.decided_by}'" if current.decided_by else ""
            raise IllegalTransitionError(
                "NOT_PENDING",
                self.recommendation_id,
                f"recommendation '{self.recommendation_id}' is {current.status}{by}, not PENDING_APPROVAL",
            )

    def decide(
        self, status: RecommendationStatus, *, at: datetime, approver: str, reason: str = ""
    ) -> RecommendationState:
        """Approve (``status`` APPROVED) or reject (REJECTED); see :meth:`approve` and :meth:`reject`.

        Parameters
        ----------
        status : RecommendationStatus
            APPROVED or REJECTED.
        at : datetime
            Time of the decision (timezone-aware).
        approver : str
            Who decides (not blank).
        reason : str, default ""
            Why; required (not blank) for a rejection.

        Returns
        -------
        RecommendationState
            The decided state: ``status``, ``decided_by = approver``, ``decided_at = at``, ``reason``.

        Raises
        ------
        ValueError
            When ``status`` is neither APPROVED nor REJECTED.
        InvalidInputError
            Naming ``approver`` (blank) or, for a rejection, ``reason`` (blank).
        IllegalTransitionError
            ``EXPIRED`` when the recommendation is EXPIRED at ``at`` (overdue, expired or superseded);
            ``NOT_PENDING`` when it is AUTO_APPROVED, APPROVED or REJECTED.
        """
        if status not in (RecommendationStatus.APPROVED, RecommendationStatus.REJECTED):
            raise ValueError(f"a decision is APPROVED or REJECTED, not {status}")
        if not approver.strip():
            raise InvalidInputError.for_field("approver", "is required")
        if status is RecommendationStatus.REJECTED and not reason.strip():
            raise InvalidInputError.for_field("reason", "is required")
        self._check_pending(at)
        return replace(self, status=status, decided_at=at, decided_by=approver, reason=reason)

    def approve(self, *, at: datetime, approver: str, reason: str = "") -> RecommendationState:
        """PENDING_APPROVAL → APPROVED, before ``expires_at``.

        Parameters
        ----------
        at : datetime
            Time of the approval (timezone-aware); must be before ``expires_at``.
        approver : str
            Who approves (not blank).
        reason : str, default ""
            Optional note.

        Returns
        -------
        RecommendationState
            APPROVED with ``decided_by``, ``decided_at = at`` and ``reason``.

        Raises
        ------
        InvalidInputError
            Naming ``approver`` when it is blank.
        IllegalTransitionError
            As :meth:`decide`.
        """
        return self.decide(RecommendationStatus.APPROVED, at=at, approver=approver, reason=reason)

    def reject(self, *, at: datetime, approver: str, reason: str) -> RecommendationState:
        """PENDING_APPROVAL → REJECTED, before ``expires_at``, with a reason.

        Parameters
        ----------
        at : datetime
            Time of the rejection (timezone-aware); must be before ``expires_at``.
        approver : str
            Who rejects (not blank).
        reason : str
            Why (not blank).

        Returns
        -------
        RecommendationState
            REJECTED with ``decided_by``, ``decided_at = at`` and ``reason``.

        Raises
        ------
        InvalidInputError
            Naming ``approver`` or ``reason`` when blank.
        IllegalTransitionError
            As :meth:`decide`.
        """
        return self.decide(RecommendationStatus.REJECTED, at=at, approver=approver, reason=reason)

    def supersede(self, *, at: datetime, successor_id: str) -> RecommendationState:
        """PENDING_APPROVAL → EXPIRED because a newer recommendation of the portfolio replaces it.

        A newer recommendation is built on a newer state of the same holdings; approving both would trade
        twice, so the older pending one expires at once.

        Parameters
        ----------
        at : datetime
            Creation time of the successor (timezone-aware); must be before ``expires_at``.
        successor_id : str
            Id of the superseding recommendation.

        Returns
        -------
        RecommendationState
            EXPIRED with ``decided_at = at``, ``expires_at = at`` (the approval window closes then) and
            ``reason`` ``"superseded by recommendation <successor_id>"``.

        Raises
        ------
        IllegalTransitionError
            As :meth:`decide` (an overdue recommendation expires by time, it is not superseded).
        """
        self._check_pending(at)
        return replace(
            self,
            status=RecommendationStatus.EXPIRED,
            decided_at=at,
            expires_at=at,
            reason=SUPERSEDED_REASON_PREFIX + successor_id,
        )
