"""Log formats: which one is chosen, and what a text or JSON line carries."""

from __future__ import annotations

import io
import json
import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider

from stratopt_cli.logs import choose_request_id, log_handler, request_id, resolve_format, setup_logging


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_format_defaults_to_text_on_a_terminal_and_json_otherwise() -> None:
    assert resolve_format(None, Terminal()) == "text"
    assert resolve_format(None, io.StringIO()) == "json"
    assert resolve_format("TEXT", io.StringIO()) == "text"
    with pytest.raises(ValueError, match="json or text"):
        resolve_format("xml", io.StringIO())


def emit(log_format: str, message: str) -> str:
    stream = io.StringIO()
    logger = logging.getLogger(f"test.logs.{log_format}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = log_handler(log_format, stream)
    logger.addHandler(handler)
    try:
        logger.info(message, extra={"grpc_code": "OK"})
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_lines_carry_the_request_id_and_the_current_trace() -> None:
    tracer = TracerProvider().get_tracer("test")
    token = request_id.set("req-42")
    try:
        with tracer.start_as_current_span("call") as span:
            trace_id = format(span.get_span_context().trace_id, "032x")
            line = json.loads(emit("json", "hello"))
            text = emit("text", "hello")
        untraced = json.loads(emit("json", "outside"))
    finally:
        request_id.reset(token)
    assert line["message"] == "hello" and line["level"] == "INFO" and line["logger"] == "test.logs.json"
    assert line["request_id"] == "req-42" and line["trace_id"] == trace_id and line["grpc_code"] == "OK"
    assert len(line["span_id"]) == 16 and "time" in line
    assert text.rstrip().endswith(f"INFO test.logs.text [req-42 trace={trace_id}]: hello")
    assert untraced["request_id"] == "req-42" and "trace_id" not in untraced
    assert json.loads(emit("json", "idle"))["request_id"] == "-"


class Request:
    def __init__(self, request_id: str) -> None:
        self.request_id = request_id


def test_request_id_comes_from_the_request_then_the_metadata_then_is_generated() -> None:
    assert choose_request_id(Request("r-1"), [("x-request-id", "m-1")]) == "r-1"
    assert choose_request_id(Request(""), [("x-request-id", "m-1")]) == "m-1"
    assert choose_request_id(None, [("x-request-id", "m-1")]) == "m-1"
    for unusable in ("", "a" * 129, "bad\x00id", "naïve"):
        generated = choose_request_id(Request(unusable), [("x-request-id", unusable)])
        assert len(generated) == 32 and int(generated, 16) >= 0


def test_setup_logging_replaces_only_its_own_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STRATOPT_LOG_FORMAT", raising=False)
    root = logging.getLogger()
    others, level = list(root.handlers), root.level
    first, second = io.StringIO(), io.StringIO()
    try:
        assert setup_logging(log_format="text", stream=first) == "text"
        assert setup_logging(stream=second) == "json"  # not a terminal, no STRATOPT_LOG_FORMAT
        logging.getLogger("test.setup").info("once")
        assert first.getvalue() == ""
        assert json.loads(second.getvalue())["message"] == "once"
        assert [h for h in root.handlers if h not in others] != [] and all(h in root.handlers for h in others)
    finally:
        for handler in [h for h in root.handlers if h not in others]:
            root.removeHandler(handler)
        root.setLevel(level)
