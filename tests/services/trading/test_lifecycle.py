"""The approval lifecycle of a rebalance recommendation: every transition, the limit and expiry boundaries.

Truth: the rule as specified in the README and the proto comments, written out by hand: AUTO_APPROVED when the
total trade value is at most the approval limit ($), else PENDING_APPROVAL until created_at + approval_ttl;
expiry inclusive of the instant expires_at; approve/reject/supersede only from PENDING_APPROVAL before expiry.
The states below are built field by field, not by the transitions under test; expected times are literals.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from services.errors import InvalidInputError, PreconditionError
from services.trading import (
    APPROVED_STATUSES,
    FINAL_STATUSES,
    PENDING_STATUSES,
    IllegalTransitionError,
    RecommendationState,
    RecommendationStatus,
    initial_status,
)
from stratopt.rpc_errors import status_code
from stratopt.v1 import trading_service_pb2 as tpb

PENDING = RecommendationStatus.PENDING_APPROVAL
AUTO = RecommendationStatus.AUTO_APPROVED
APPROVED = RecommendationStatus.APPROVED
REJECTED = RecommendationStatus.REJECTED
EXPIRED = RecommendationStatus.EXPIRED

ID = "5f0c6f4e-0000-4000-8000-000000000001"
SUCCESSOR = "5f0c6f4e-0000-4000-8000-000000000002"
CREATED = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
EXPIRES = datetime(2024, 3, 2, 12, 0, tzinfo=UTC)  # CREATED + 24 h
BEFORE = datetime(2024, 3, 2, 11, 59, 59, 999_999, tzinfo=UTC)  # one microsecond before EXPIRES
DECIDED = datetime(2024, 3, 1, 15, 30, tzinfo=UTC)

STATES: dict[str, RecommendationState] = {
    "pending": RecommendationState(recommendation_id=ID, status=PENDING, expires_at=EXPIRES),
    "auto-approved": RecommendationState(recommendation_id=ID, status=AUTO, expires_at=CREATED, decided_at=CREATED),
    "approved": RecommendationState(
        recommendation_id=ID, status=APPROVED, expires_at=EXPIRES, decided_at=DECIDED, decided_by="alice"
    ),
    "rejected": RecommendationState(
        recommendation_id=ID, status=REJECTED, expires_at=EXPIRES, decided_at=DECIDED, decided_by="bob", reason="no"
    ),
    "expired": RecommendationState(recommendation_id=ID, status=EXPIRED, expires_at=EXPIRES, decided_at=EXPIRES),
    "superseded": RecommendationState(
        recommendation_id=ID,
        status=EXPIRED,
        expires_at=DECIDED,
        decided_at=DECIDED,
        reason=f"superseded by recommendation {SUCCESSOR}",
    ),
}

Transition = Callable[[RecommendationState, datetime], RecommendationState]
TRANSITIONS: dict[str, Transition] = {
    "approve": lambda s, at: s.approve(at=at, approver="carol", reason="fine"),
    "reject": lambda s, at: s.reject(at=at, approver="carol", reason="too big"),
    "supersede": lambda s, at: s.supersede(at=at, successor_id=SUCCESSOR),
}

# Every (state, transition) pair, decided before the pending one's expiry: the resulting status, or the type of
# the precondition violation raised and the message.
OUTCOMES: dict[tuple[str, str], RecommendationStatus | tuple[str, str]] = {
    ("pending", "approve"): APPROVED,
    ("pending", "reject"): REJECTED,
    ("pending", "supersede"): EXPIRED,
    **{
        (state, transition): ("NOT_PENDING", message)
        for state, message in (
            ("auto-approved", f"recommendation '{ID}' is AUTO_APPROVED, not PENDING_APPROVAL"),
            ("approved", f"recommendation '{ID}' is APPROVED by 'alice', not PENDING_APPROVAL"),
            ("rejected", f"recommendation '{ID}' is REJECTED by 'bob', not PENDING_APPROVAL"),
        )
        for transition in TRANSITIONS
    },
    **{
        (state, transition): ("EXPIRED", message)
        for state, message in (
            ("expired", f"recommendation '{ID}' expired at 2024-03-02T12:00:00+00:00 undecided"),
            ("superseded", f"recommendation '{ID}' was superseded by recommendation {SUCCESSOR}"),
        )
        for transition in TRANSITIONS
    },
}


# --- the approval limit -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total_trade_value", "approval_limit", "expected"),
    [
        (9_999.99, 10_000.0, AUTO),
        (10_000.0, 10_000.0, AUTO),  # at the limit: no approval needed
        (10_000.01, 10_000.0, PENDING),
        (0.0, 0.0, AUTO),  # an empty trade list under a zero limit
        (0.01, 0.0, PENDING),  # a zero limit sends every trade to approval
        (1e12, math.inf, AUTO),
    ],
)
def test_initial_status_is_auto_approved_up_to_and_including_the_limit(
    total_trade_value: float, approval_limit: float, expected: RecommendationStatus
) -> None:
    assert initial_status(total_trade_value, approval_limit) is expected


@pytest.mark.parametrize(("value", "limit"), [(math.nan, 100.0), (100.0, math.nan)])
def test_initial_status_refuses_nan(value: float, limit: float) -> None:
    with pytest.raises(ValueError, match="NaN"):
        initial_status(value, limit)


def test_open_auto_approved_is_decided_at_creation_without_approver() -> None:
    state = RecommendationState.open(
        recommendation_id=ID,
        total_trade_value=100.0,
        approval_limit=100.0,
        created_at=CREATED,
        approval_ttl=timedelta(hours=24),
    )
    assert state == RecommendationState(recommendation_id=ID, status=AUTO, expires_at=CREATED, decided_at=CREATED)
    assert state.decided_by == "" and state.reason == ""


def test_open_pending_waits_until_created_at_plus_ttl() -> None:
    state = RecommendationState.open(
        recommendation_id=ID,
        total_trade_value=100.01,
        approval_limit=100.0,
        created_at=CREATED,
        approval_ttl=timedelta(hours=24),
    )
    assert state == RecommendationState(recommendation_id=ID, status=PENDING, expires_at=EXPIRES)
    assert state.decided_at is None


@pytest.mark.parametrize("ttl", [timedelta(0), timedelta(seconds=-1)])
def test_open_refuses_a_ttl_that_is_not_positive(ttl: timedelta) -> None:
    with pytest.raises(ValueError, match="approval_ttl"):
        RecommendationState.open(
            recommendation_id=ID, total_trade_value=1e6, approval_limit=0.0, created_at=CREATED, approval_ttl=ttl
        )


# --- expiry -----------------------------------------------------------------------------------------------------


def test_expiry_is_inclusive_of_the_instant_expires_at() -> None:
    pending = STATES["pending"]
    assert pending.status_at(BEFORE) is PENDING
    assert not pending.is_overdue(BEFORE)
    assert pending.at(BEFORE) is pending
    assert pending.status_at(EXPIRES) is EXPIRED
    assert pending.is_overdue(EXPIRES)
    assert pending.status_at(datetime(2030, 1, 1, tzinfo=UTC)) is EXPIRED


def test_an_expired_recommendation_is_decided_at_its_expiry_not_when_noticed() -> None:
    pending = STATES["pending"]
    for now in (EXPIRES, datetime(2024, 3, 9, 8, 0, tzinfo=UTC)):
        assert pending.at(now) == RecommendationState(
            recommendation_id=ID, status=EXPIRED, expires_at=EXPIRES, decided_at=EXPIRES
        )
    assert pending.status is PENDING  # the stored state is not changed (frozen)


@pytest.mark.parametrize("name", ["auto-approved", "approved", "rejected", "expired", "superseded"])
def test_time_does_not_move_a_final_state(name: str) -> None:
    state = STATES[name]
    far = datetime(2100, 1, 1, tzinfo=UTC)
    assert state.at(far) is state
    assert state.status_at(far) is state.status


# --- transitions --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("state_name", "transition"), list(OUTCOMES))
def test_every_transition_from_every_status(state_name: str, transition: str) -> None:
    state = STATES[state_name]
    outcome = OUTCOMES[state_name, transition]
    if isinstance(outcome, RecommendationStatus):
        assert TRANSITIONS[transition](state, DECIDED).status is outcome
        return
    kind, message = outcome
    with pytest.raises(IllegalTransitionError) as caught:
        TRANSITIONS[transition](state, DECIDED)
    error = caught.value
    assert isinstance(error, PreconditionError) and status_code(error) is grpc.StatusCode.FAILED_PRECONDITION
    assert error.kind == kind
    assert error.message == message
    assert [(v.type, v.subject, v.description) for v in error.precondition_violations] == [(kind, ID, message)]


def test_approve_records_the_approver_the_time_and_the_reason() -> None:
    approved = STATES["pending"].approve(at=DECIDED, approver="carol", reason="fine")
    assert approved == RecommendationState(
        recommendation_id=ID,
        status=APPROVED,
        expires_at=EXPIRES,
        decided_at=DECIDED,
        decided_by="carol",
        reason="fine",
    )
    assert STATES["pending"].approve(at=DECIDED, approver="carol").reason == ""  # the reason is optional


def test_reject_records_the_approver_the_time_and_the_reason() -> None:
    rejected = STATES["pending"].reject(at=DECIDED, approver="carol", reason="too big")
    assert rejected == RecommendationState(
        recommendation_id=ID,
        status=REJECTED,
        expires_at=EXPIRES,
        decided_at=DECIDED,
        decided_by="carol",
        reason="too big",
    )


def test_supersede_expires_now_and_names_the_successor() -> None:
    superseded = STATES["pending"].supersede(at=DECIDED, successor_id=SUCCESSOR)
    assert superseded == STATES["superseded"]
    assert superseded.superseded_by == SUCCESSOR
    assert STATES["expired"].superseded_by is None
    assert STATES["pending"].superseded_by is None


@pytest.mark.parametrize("transition", list(TRANSITIONS))
def test_a_decision_one_microsecond_before_expiry_is_allowed(transition: str) -> None:
    decided = TRANSITIONS[transition](STATES["pending"], BEFORE)
    assert decided.decided_at == BEFORE


@pytest.mark.parametrize("transition", list(TRANSITIONS))
@pytest.mark.parametrize("at", [EXPIRES, EXPIRES + timedelta(days=3)], ids=["at-expiry", "after-expiry"])
def test_a_transition_at_or_after_expiry_is_refused_as_expired(transition: str, at: datetime) -> None:
    with pytest.raises(IllegalTransitionError) as caught:
        TRANSITIONS[transition](STATES["pending"], at)
    assert caught.value.kind == "EXPIRED"
    assert caught.value.message == f"recommendation '{ID}' expired at 2024-03-02T12:00:00+00:00 undecided"


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda s: s.approve(at=DECIDED, approver=" "), "approver"),
        (lambda s: s.reject(at=DECIDED, approver="carol", reason=""), "reason"),
        (lambda s: s.reject(at=DECIDED, approver="carol", reason=" \n"), "reason"),
    ],
)
def test_a_decision_needs_an_approver_and_a_rejection_a_reason(
    call: Callable[[RecommendationState], RecommendationState], field: str
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        call(STATES["pending"])
    assert [v.field for v in caught.value.field_violations] == [field]


@pytest.mark.parametrize("status", [PENDING, AUTO, EXPIRED])
def test_decide_only_approves_or_rejects(status: RecommendationStatus) -> None:
    with pytest.raises(ValueError, match="APPROVED or REJECTED"):
        STATES["pending"].decide(status, at=DECIDED, approver="carol", reason="x")


def test_decide_is_approve_or_reject() -> None:
    pending = STATES["pending"]
    assert pending.decide(APPROVED, at=DECIDED, approver="carol") == pending.approve(at=DECIDED, approver="carol")
    assert pending.decide(REJECTED, at=DECIDED, approver="carol", reason="r") == pending.reject(
        at=DECIDED, approver="carol", reason="r"
    )


# --- invariants and status sets -----------------------------------------------------------------------------------


def test_a_pending_state_has_no_decision_time_and_a_final_one_has_one() -> None:
    with pytest.raises(ValueError, match="decided_at"):
        RecommendationState(recommendation_id=ID, status=PENDING, expires_at=EXPIRES, decided_at=DECIDED)
    for status in (AUTO, APPROVED, REJECTED, EXPIRED):
        with pytest.raises(ValueError, match="decided_at"):
            RecommendationState(recommendation_id=ID, status=status, expires_at=EXPIRES)


def test_status_sets() -> None:
    assert {PENDING} == PENDING_STATUSES
    assert {APPROVED, AUTO} == APPROVED_STATUSES
    assert {AUTO, APPROVED, REJECTED, EXPIRED} == FINAL_STATUSES


def test_statuses_are_the_contract_s_names() -> None:
    proto = {
        name.removeprefix("RECOMMENDATION_STATUS_")
        for name in tpb.RecommendationStatus.keys()  # noqa: SIM118 - an enum wrapper, not a dict
        if name != "RECOMMENDATION_STATUS_UNSPECIFIED"
    }
    assert {s.value for s in RecommendationStatus} == proto
