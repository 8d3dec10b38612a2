"""The request limits (``stratopt.request_limits``) and the caps on status texts (``stratopt.rpc_errors``)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.rpc import error_details_pb2  # type: ignore[attr-defined]

from services.errors import FieldViolation, InvalidInputError, PreconditionError, PreconditionViolation
from stratopt import request_limits as limits
from stratopt.rpc_errors import MAX_DETAIL_BYTES, MAX_MESSAGE_BYTES, MAX_VIOLATIONS, status_for
from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import query_service_pb2 as query_pb
from stratopt.v1 import trading_service_pb2 as trading_pb
from tests.bad_input import METHODS


def _violation(request: object) -> tuple[str, str]:
    with pytest.raises(InvalidInputError) as raised:
        limits.check_request(request)
    (violation,) = raised.value.field_violations
    return violation.field, violation.description


@pytest.mark.parametrize(
    ("kind", "limit"),
    [(limits.ID, 128), (limits.SYMBOL, 64), (limits.NAME, 128), (limits.TEXT, 4000), (limits.PAGE_TOKEN, 1024)],
)
def test_a_string_of_the_limit_passes_and_one_more_character_is_named(kind: tuple[str, int], limit: int) -> None:
    assert limits.check_text("é" * limit, "f", kind=kind) == "é" * limit  # characters, not bytes
    with pytest.raises(InvalidInputError) as raised:
        limits.check_text("é" * (limit + 1), "f", kind=kind)
    assert raised.value.field_violations == (
        FieldViolation("f", f"must be {kind[0]} of at most {limit} characters, got {limit + 1}"),
    )


def test_a_nul_anywhere_is_named_by_its_path() -> None:
    holdings = trading_pb.UpsertHoldingsRequest(portfolio_id="p")
    holdings.positions.add(symbol="A").lots.add(lot_id="l\x00")
    assert _violation(holdings) == ("positions[0].lots[0].lot_id", "must not contain a NUL character")
    optimize = cmd_pb.OptimizeRequest(portfolio_id="p")
    optimize.strategies.add(symbol="A", classifications={"gics": "\x00"})
    assert _violation(optimize)[0] == "strategies[0].classifications[gics]"


@pytest.mark.parametrize(
    ("field", "value", "path"),
    [
        ("symbol", "S" * 64, None),
        ("symbol", "S" * 65, "strategies[7].symbol"),
        ("symbol", "S\x00", "strategies[7].symbol"),
        ("sector", "x" * 128, None),
        ("sector", "x" * 129, "strategies[7].sector"),
        ("classifications", {"g" * 128: "v" * 128}, None),
        ("classifications", {"g" * 129: "v"}, "strategies[7].classifications"),
        ("classifications", {"g": "v" * 129}, "strategies[7].classifications[g]"),
        ("classifications", {"g\x00": "v"}, "strategies[7].classifications"),
    ],
)
def test_items_of_a_flat_repeated_message_are_checked_as_the_full_check_does(
    field: str, value: object, path: str | None
) -> None:
    """Strategies (strings, a string map, numbers) take the quick per-item check; its verdict is the full check's.

    Each string of the 8th of 20 strategies at its limit passes, one character over (or a NUL) is named by the
    same path and text as the full check (``check_request`` on that strategy alone, under its prefix) gives.
    """
    request = cmd_pb.OptimizeRequest(portfolio_id="p")
    for k in range(20):
        strategy = request.strategies.add(symbol=f"S{k}", sector="tech", current_weight=0.05)
        strategy.returns.extend([0.01, -0.02])
        strategy.classifications["region"] = "us"
    target = request.strategies[7]
    if field == "classifications":
        target.classifications.update(value)  # type: ignore[arg-type]
    else:
        setattr(target, field, value)
    assert limits._flat_plan(cmd_pb.OptimizeRequest.DESCRIPTOR.fields_by_name["strategies"].message_type)
    if path is None:
        limits.check_request(request)
        limits.check_request(target, "strategies[7]")
        return
    assert _violation(request)[0] == path
    with pytest.raises(InvalidInputError) as full:
        limits.check_request(target, "strategies[7]")
    assert _violation(request) == (full.value.field_violations[0].field, full.value.field_violations[0].description)


def test_a_bad_map_key_names_the_map_and_quotes_at_most_64_characters() -> None:
    field, description = _violation(trading_pb.CheckDriftRequest(portfolio_id="p", prices={"K" * 10_000: 1.0}))
    assert field == "prices"
    assert description == f"key {'K' * 64!r}…: a symbol of at most 64 characters"
    assert _violation(trading_pb.CheckDriftRequest(portfolio_id="p", target_weights={"a\x00": 1.0})) == (
        "target_weights",
        "key 'a\\x00' contains a NUL character",
    )


@pytest.mark.parametrize(
    ("seconds", "nanos", "valid"),
    [
        (limits.MIN_TIMESTAMP_SECONDS, 0, True),
        (limits.MAX_TIMESTAMP_SECONDS, 999_999_999, True),
        (limits.MIN_TIMESTAMP_SECONDS - 1, 0, False),
        (limits.MAX_TIMESTAMP_SECONDS + 1, 0, False),
        (0, 1_000_000_000, False),
        (0, -1, False),
    ],
)
def test_timestamps_hold_years_0001_to_9999_and_nanos_below_one_second(seconds: int, nanos: int, valid: bool) -> None:
    request = query_pb.GetHistoryRequest(portfolio_id="p")
    request.start.seconds, request.start.nanos = seconds, nanos
    if valid:
        limits.check_request(request)
        assert request.start.ToDatetime(tzinfo=UTC).year in (1, 9999)
    else:
        assert _violation(request)[0] == "start"


def test_the_timestamp_limits_are_the_first_and_last_second_of_years_1_and_9999() -> None:
    assert datetime(1, 1, 1, tzinfo=UTC).timestamp() == limits.MIN_TIMESTAMP_SECONDS
    assert datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp() == limits.MAX_TIMESTAMP_SECONDS


@pytest.mark.parametrize(
    ("seconds", "nanos", "valid"),
    [
        (limits.MAX_DURATION_SECONDS, 999_999_999, True),
        (-limits.MAX_DURATION_SECONDS, -999_999_999, True),
        (limits.MAX_DURATION_SECONDS + 1, 0, False),
        (1, -1, False),
        (-1, 1, False),
        (0, 1_000_000_000, False),
    ],
)
def test_durations_follow_the_duration_type(seconds: int, nanos: int, valid: bool) -> None:
    request = query_pb.GetPortfolioAnalyticsRequest(portfolio_id="p")
    request.bucket_width.seconds, request.bucket_width.nanos = seconds, nanos
    if valid:
        limits.check_request(request)
    else:
        assert _violation(request)[0] == "bucket_width"


def test_a_prefix_goes_before_every_path() -> None:
    request = cmd_pb.OptimizeRequest(portfolio_id="p\x00")
    with pytest.raises(InvalidInputError) as raised:
        limits.check_request(request, "problem")
    assert raised.value.field_violations[0].field == "problem.portfolio_id"


def test_approver_is_left_to_the_authentication_work() -> None:
    limits.check_request(trading_pb.ApproveRebalanceRequest(recommendation_id="r", approver="a\x00"))


def _string_fields(descriptor: Descriptor, seen: set[str]) -> set[str]:
    if descriptor.full_name in seen:
        return set()
    seen.add(descriptor.full_name)
    names: set[str] = set()
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            names.add(field.name)
        elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
            entry = field.message_type
            if entry.GetOptions().map_entry:
                value = entry.fields_by_name["value"]
                if value.type == FieldDescriptor.TYPE_MESSAGE and value.message_type is not None:
                    names |= _string_fields(value.message_type, seen)
            else:
                names |= _string_fields(entry, seen)
    return names


def test_every_string_field_of_every_request_has_a_documented_kind() -> None:
    """A string field added to a request must be given its kind (and so its limit) in ``STRING_KINDS``."""
    seen: set[str] = set()
    names = set().union(*(_string_fields(method.input_type, seen) for method in METHODS))
    assert names - set(limits.STRING_KINDS) - limits.UNCHECKED_FIELDS == set()


def test_echo_quotes_at_most_64_characters_escaped() -> None:
    assert limits.echo("a\x00b") == "'a\\x00b'"
    assert limits.echo("x" * 65) == repr("x" * 64) + "…"


def test_status_texts_are_capped_in_utf8_bytes() -> None:
    long = "€" * 5000  # 3 bytes each
    error = InvalidInputError(
        long, field_violations=tuple(FieldViolation(f"f{i}" + long, long) for i in range(3 * MAX_VIOLATIONS))
    )
    status = status_for(error)
    assert len(status.message.encode()) <= MAX_MESSAGE_BYTES and status.message.endswith("…")
    bad_request = error_details_pb2.BadRequest()
    status.details[0].Unpack(bad_request)
    assert len(bad_request.field_violations) == MAX_VIOLATIONS
    for violation in bad_request.field_violations:
        assert len(violation.field.encode()) <= MAX_DETAIL_BYTES
        assert len(violation.description.encode()) <= MAX_DETAIL_BYTES
    assert len(status.SerializeToString()) < 8192
    precondition = status_for(
        PreconditionError("x", precondition_violations=(PreconditionViolation("T", long, long),) * 50)
    )
    failure = error_details_pb2.PreconditionFailure()
    precondition.details[0].Unpack(failure)
    assert len(failure.violations) == MAX_VIOLATIONS
    assert len(precondition.SerializeToString()) < 8192


def test_short_status_texts_are_unchanged() -> None:
    status = status_for(InvalidInputError.for_field("portfolio_id", "must not be empty"))
    assert status.message == "portfolio_id: must not be empty"
