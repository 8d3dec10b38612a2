"""The query side's reader of stored RFC 3339 instants, against pandas' parser."""

from __future__ import annotations

import pandas as pd
import pytest

from query_side.records import SchemaError, instant_nanoseconds


@pytest.mark.parametrize(
    "text",
    [
        "1970-01-01T00:00:00Z",
        "2024-02-29T23:59:59.999999999Z",
        "2026-12-06T05:44:15.123456+00:00",
        "1969-12-31T23:59:59.5Z",
        "1989-01-03T00:00:00.000001Z",
        "2262-04-11T23:47:16Z",
    ],
)
def test_instant_nanoseconds_equals_pandas(text: str) -> None:
    assert instant_nanoseconds(text) == pd.Timestamp(text).value


@pytest.mark.parametrize(
    "text",
    [
        "2024-13-01T00:00:00Z",  # month 13
        "2023-02-29T00:00:00Z",  # not a leap year
        "2024-01-01T24:00:00Z",
        "2024-01-01T00:00:00",  # no zone
        "2024-01-01T00:00:00+01:00",  # not UTC
        "2024-01-01 00:00:00Z",
        "2024-01-01T00:00:00.1234567890Z",  # ten fraction digits
    ],
)
def test_instant_nanoseconds_rejects_what_is_not_an_rfc3339_utc_instant(text: str) -> None:
    with pytest.raises(SchemaError, match="RFC 3339"):
        instant_nanoseconds(text)
