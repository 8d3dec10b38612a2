"""Opaque page tokens of ``GetHistory`` (AIP-158).

A token is the unpadded URL-safe base64 of a compact JSON object::

    {"v": 1, "t": <timestamp of the page's last event, integer microseconds since the Unix epoch>,
     "e": "<event_id of the page's last event>", "q": "<fingerprint of the query>"}

The position ``(t, e)`` is exact (integer microseconds, PostgreSQL's precision), so the next page resumes
strictly after the last event even when several events share its timestamp. The fingerprint binds the token
to the request's ``portfolio_id``, ``start`` and ``end``: a token replayed with other values is rejected.
``page_size`` may change between pages. Tokens are not signed: they only name a position in data the caller
may read anyway.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta

from query_side.repository import HistoryKey
from services.errors import InvalidInputError

_VERSION = 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_FIELD = "page_token"


def _epoch_microseconds(moment: datetime) -> int:
    """Exact integer microseconds since the Unix epoch of a timezone-aware datetime."""
    return (moment - _EPOCH) // _MICROSECOND


def query_fingerprint(portfolio_id: str, start: datetime | None, end: datetime | None) -> str:
    """Fingerprint of the fields that must not change between pages.

    Parameters
    ----------
    portfolio_id : str
        Portfolio identifier.
    start, end : datetime or None
        Time bounds of the request (timezone-aware), None when unset.

    Returns
    -------
    str
        32 hexadecimal characters (the first 128 bits of a SHA-256).
    """
    canonical = json.dumps(
        [
            portfolio_id,
            None if start is None else _epoch_microseconds(start),
            None if end is None else _epoch_microseconds(end),
        ],
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def encode_page_token(position: HistoryKey, fingerprint: str) -> str:
    """Build the token that resumes a history after ``position``.

    Parameters
    ----------
    position : HistoryKey
        Timestamp and event id of the last event of the page.
    fingerprint : str
        :func:`query_fingerprint` of the request.

    Returns
    -------
    str
        The opaque token.
    """
    payload = {
        "v": _VERSION,
        "t": _epoch_microseconds(position.timestamp),
        "e": str(position.event_id),
        "q": fingerprint,
    }
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_page_token(token: str, fingerprint: str) -> HistoryKey:
    """Read a token back into the position it resumes after.

    Parameters
    ----------
    token : str
        Token from a previous ``GetHistory`` response.
    fingerprint : str
        :func:`query_fingerprint` of the current request.

    Returns
    -------
    HistoryKey
        Position of the last event of the previous page.

    Raises
    ------
    InvalidInputError
        When the token is malformed (including one that decodes to a NUL character) or was issued for a
        different portfolio or time range (field ``page_token``).
    """
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        if b"\x00" in raw or b"\\u0000" in raw:  # a NUL, raw or escaped, is in no token this service issues
            raise ValueError("NUL in page token")
        payload = json.loads(raw)
    except ValueError as exc:  # binascii.Error, UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise InvalidInputError.for_field(_FIELD, "malformed page token") from exc
    if not isinstance(payload, dict) or payload.get("v") != _VERSION:
        raise InvalidInputError.for_field(_FIELD, "malformed page token")
    timestamp_us, event_id, token_fingerprint = payload.get("t"), payload.get("e"), payload.get("q")
    if type(timestamp_us) is not int or not isinstance(event_id, str) or not isinstance(token_fingerprint, str):
        raise InvalidInputError.for_field(_FIELD, "malformed page token")
    if token_fingerprint != fingerprint:
        raise InvalidInputError.for_field(_FIELD, "page token was issued for a different portfolio_id, start or end")
    try:
        return HistoryKey(timestamp=_EPOCH + timestamp_us * _MICROSECOND, event_id=uuid.UUID(event_id))
    except (ValueError, OverflowError) as exc:
        raise InvalidInputError.for_field(_FIELD, "malformed page token") from exc
