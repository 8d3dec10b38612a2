"""Bytes that are no message of the method's type: INVALID_ARGUMENT, never UNKNOWN naming a Python class."""

from __future__ import annotations

import grpc
import pytest

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/stratopt.v1.OptimizationQueryService/GetLatest", b"\x0a\x02\xff\xfe"),  # a string that is no UTF-8
        ("/stratopt.v1.TradingCommandService/UpsertHoldings", b"\x0a\x02\xff\xfe"),
        ("/stratopt.v1.OptimizationQueryService/GetLatest", b"\x0a\x7f"),  # a length past the end
        ("/stratopt.v1.OptimizationQueryService/WatchEvents", b"\x0a\x7f"),  # server streaming
    ],
)
def test_a_malformed_request_is_invalid_argument(grpc_channel: grpc.Channel, path: str, payload: bytes) -> None:
    def answer() -> object:
        if path.endswith("WatchEvents"):
            stream = grpc_channel.unary_stream(path, request_serializer=lambda b: b, response_deserializer=bytes)
            return next(iter(stream(payload, timeout=10)))
        unary = grpc_channel.unary_unary(path, request_serializer=lambda b: b, response_deserializer=bytes)
        return unary(payload, timeout=10)

    with pytest.raises(grpc.RpcError) as error:
        answer()
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = str(error.value.details())
    assert details.startswith("malformed request") and "<class" not in details


def test_a_malformed_message_in_a_client_stream_is_invalid_argument(grpc_channel: grpc.Channel) -> None:
    """IngestMarketData (client streaming): the second message is no IngestMarketDataRequest."""
    call = grpc_channel.stream_unary(
        "/stratopt.v1.OptimizationCommandService/IngestMarketData",
        request_serializer=lambda b: b,
        response_deserializer=bytes,
    )
    with pytest.raises(grpc.RpcError) as error:
        call(iter([b"", b"\x0a\x7f"]), timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(error.value.details()).startswith("malformed request")
