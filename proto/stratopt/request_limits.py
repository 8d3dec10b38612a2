"""The limits every request of the contract is held to, and the checks that enforce them.

Shared by the command and the query side (which never import each other): each side's adapter calls
:func:`check_request` on a request before it reads a field, in the one place where the request becomes domain
values, so no string with a NUL character, no over-long id and no timestamp PostgreSQL cannot store reaches a
store. A violation raises the domain's ``InvalidInputError`` naming the request's field path
(``strategies[3].symbol``, ``bars[0].timestamp``, ``problem.portfolio_id``), which the error interceptor renders as
INVALID_ARGUMENT with a ``google.rpc.BadRequest`` detail.

The limits (every one listed in ``docs/limits.md``):

- no string may hold a NUL character (``U+0000``): PostgreSQL's ``text`` and ``jsonb`` cannot store it;
- string lengths, in characters (Unicode code points; at most 4 bytes each in UTF-8), chosen well under
  PostgreSQL's B-tree entry limit of 2704 bytes even for a two-id key such as ``(portfolio_id, request_id)``:
  ids :data:`MAX_ID_LENGTH`, symbols :data:`MAX_SYMBOL_LENGTH`, names :data:`MAX_NAME_LENGTH`, free text
  :data:`MAX_TEXT_LENGTH`, page tokens :data:`MAX_PAGE_TOKEN_LENGTH`; which field is which is
  :data:`STRING_KINDS` (a map's keys: :data:`MAP_KEY_KINDS`, symbols unless listed);
- ``google.protobuf.Timestamp``: seconds within 0001-01-01T00:00:00Z..9999-12-31T23:59:59Z and
  ``0 <= nanos < 10^9`` (the range the Timestamp type defines and PostgreSQL's ``timestamptz`` holds);
- ``google.protobuf.Duration``: ``|seconds| <= 315,576,000,000`` (10,000 years), ``|nanos| < 10^9``, both of one
  sign (the Duration type's own rules).

Values that a message quotes back to the caller go through :func:`echo`, so an error never repeats a long or
binary value (``stratopt.rpc_errors`` caps every status message as a last resort).
"""

from __future__ import annotations

from functools import cache
from typing import Any, Final

from google.protobuf.descriptor import FieldDescriptor

from services.errors import InvalidInputError

MAX_ID_LENGTH: Final = 128
"""Longest identifier, in characters: ``portfolio_id``, ``request_id``, ``recommendation_id``, ``cache_key``,
``lot_id``, ``signal_set``, ``fill_id``, ``order_id`` (and each of ``order_ids``)."""
MAX_SYMBOL_LENGTH: Final = 64
"""Longest symbol, in characters: ``symbol``, ``market_symbol`` and the keys of the maps keyed by symbol
(``target_weights``, ``prices``, ``constraints.strategy_bounds`` ...)."""
MAX_NAME_LENGTH: Final = 128
"""Longest group or scheme name, in characters: ``sector``, ``scheme``, ``horizon(s)``, ``windows``, ``calendar``,
``side``, ``classifications`` keys and values."""
MAX_TEXT_LENGTH: Final = 4000
"""Longest free text, in characters: ``reason`` (and any string field not listed in :data:`STRING_KINDS`)."""
MAX_PAGE_TOKEN_LENGTH: Final = 1024
"""Longest page token, in characters (the tokens this service issues are under 800)."""
MAX_ECHO_LENGTH: Final = 64
"""Most characters of a request value an error message quotes (:func:`echo`)."""

MIN_TIMESTAMP_SECONDS: Final = -62_135_596_800
"""0001-01-01T00:00:00Z, the lower limit of ``google.protobuf.Timestamp``."""
MAX_TIMESTAMP_SECONDS: Final = 253_402_300_799
"""9999-12-31T23:59:59Z, the upper limit of ``google.protobuf.Timestamp``."""
MAX_DURATION_SECONDS: Final = 315_576_000_000
"""About 10,000 years, the limit of ``google.protobuf.Duration``."""
NANOS_PER_SECOND: Final = 1_000_000_000

ID: Final = ("an id", MAX_ID_LENGTH)
SYMBOL: Final = ("a symbol", MAX_SYMBOL_LENGTH)
NAME: Final = ("a name", MAX_NAME_LENGTH)
TEXT: Final = ("a text", MAX_TEXT_LENGTH)
PAGE_TOKEN: Final = ("a page token", MAX_PAGE_TOKEN_LENGTH)

STRING_KINDS: Final[dict[str, tuple[str, int]]] = {
    "portfolio_id": ID,
    "portfolio_ids": ID,
    "request_id": ID,
    "recommendation_id": ID,
    "cache_key": ID,
    "lot_id": ID,
    "signal_set": ID,
    "fill_id": ID,
    "order_id": ID,
    "order_ids": ID,
    "backtest_id": ID,
    "symbol": SYMBOL,
    "market_symbol": SYMBOL,
    "sector": NAME,
    "scheme": NAME,
    "horizon": NAME,
    "horizons": NAME,
    "windows": NAME,
    "calendar": NAME,
    "side": NAME,
    "reason": TEXT,
    "page_token": PAGE_TOKEN,
    "resume_token": PAGE_TOKEN,
}
"""The kind (and so the length limit) of a string field, by field name; any other string field is free text."""
MAP_KEY_KINDS: Final[dict[str, tuple[str, int]]] = {"classifications": NAME}
"""The kind of a map's string keys, by the map field's name; any other map is keyed by symbol."""
MAP_VALUE_KINDS: Final[dict[str, tuple[str, int]]] = {"classifications": NAME}
"""The kind of a map's string values, by the map field's name; any other is free text."""
UNCHECKED_FIELDS: Final = frozenset({"approver"})
"""Fields this module leaves alone: ``approver`` is on its way out of the contract (the approver is the
authenticated principal)."""

_STRING: Final = FieldDescriptor.TYPE_STRING
_MESSAGE: Final = FieldDescriptor.TYPE_MESSAGE
_TIMESTAMP: Final = "google.protobuf.Timestamp"
_DURATION: Final = "google.protobuf.Duration"


def echo(value: str, limit: int = MAX_ECHO_LENGTH) -> str:
    """A request value as an error message may quote it: ``repr`` of at most ``limit`` characters, then "…".

    Parameters
    ----------
    value : str
        The value as received (any length, any characters).
    limit : int
        Most characters of ``value`` kept.

    Returns
    -------
    str
        ``repr(value)`` of the kept part (NULs and control characters escaped), with ``…`` when cut.
    """
    return repr(value[:limit]) + ("…" if len(value) > limit else "")


def check_text(value: str, field: str, *, kind: tuple[str, int] = TEXT) -> str:
    """Check one string: no NUL character, at most the kind's length.

    Parameters
    ----------
    value : str
        The string.
    field : str
        Its request field path, named by the error.
    kind : tuple of (str, int)
        What it is and its longest length in characters (:data:`ID`, :data:`SYMBOL`, :data:`NAME`,
        :data:`TEXT`, :data:`PAGE_TOKEN`).

    Returns
    -------
    str
        ``value``, unchanged.

    Raises
    ------
    InvalidInputError
        Naming ``field``: it holds a NUL character, or is longer than the limit.
    """
    what, limit = kind
    if len(value) > limit:
        raise InvalidInputError.for_field(field, f"must be {what} of at most {limit} characters, got {len(value)}")
    if "\x00" in value:
        raise InvalidInputError.for_field(field, "must not contain a NUL character")
    return value


def _check_key(key: str, field: str, kind: tuple[str, int]) -> None:
    """Check a map's string key; the path is the map's (the key itself may be what is wrong)."""
    what, limit = kind
    if len(key) > limit:
        raise InvalidInputError.for_field(field, f"key {echo(key)}: {what} of at most {limit} characters")
    if "\x00" in key:
        raise InvalidInputError.for_field(field, f"key {echo(key)} contains a NUL character")


def timestamp_in_range(seconds: int, nanos: int) -> bool:
    """Whether a Timestamp's ``seconds`` and ``nanos`` are valid (0001-01-01..9999-12-31, ``0 <= nanos < 1e9``)."""
    return MIN_TIMESTAMP_SECONDS <= seconds <= MAX_TIMESTAMP_SECONDS and 0 <= nanos < NANOS_PER_SECOND


def check_timestamp(value: Any, field: str) -> None:
    """Check a ``google.protobuf.Timestamp``.

    Raises
    ------
    InvalidInputError
        Naming ``field``: seconds outside 0001-01-01T00:00:00Z..9999-12-31T23:59:59Z, or nanos outside
        ``[0, 10^9)``.
    """
    if not timestamp_in_range(value.seconds, value.nanos):
        raise InvalidInputError.for_field(field, "timestamp out of range (years 0001 to 9999, nanos in [0, 999999999])")


def check_duration(value: Any, field: str) -> None:
    """Check a ``google.protobuf.Duration``.

    Raises
    ------
    InvalidInputError
        Naming ``field``: ``|seconds|`` above 315,576,000,000, ``|nanos|`` of 10^9 or more, or seconds and nanos
        of opposite signs.
    """
    seconds, nanos = value.seconds, value.nanos
    same_sign = (seconds >= 0 and nanos >= 0) or (seconds <= 0 and nanos <= 0)
    if not (abs(seconds) <= MAX_DURATION_SECONDS and abs(nanos) < NANOS_PER_SECOND and same_sign):
        raise InvalidInputError.for_field(field, "is not a valid Duration (at most 10,000 years, nanos of one sign)")


def check_request(message: Any, prefix: str = "", *, skip: frozenset[str] = frozenset()) -> None:
    """Check every string, Timestamp and Duration a request holds, at any depth.

    Strings against :data:`STRING_KINDS` (a map's keys against :data:`MAP_KEY_KINDS`), Timestamps with
    :func:`check_timestamp`, Durations with :func:`check_duration`. Numbers, enumerations and the relations
    between fields are the adapters' own checks.

    Parameters
    ----------
    message : google.protobuf.message.Message
        A request (or a message inside one).
    prefix : str
        Path of ``message`` inside the RPC's request (``problem`` for ComputeEfficientFrontier's problem),
        put before every field path.
    skip : frozenset of str
        Field paths (with ``prefix``) the caller checks itself, e.g. ``returns.timestamps``, whose range
        ``command_side.mapping`` checks vectorised (one pass over a long series instead of two).

    Raises
    ------
    InvalidInputError
        Naming the first field at fault by its path (``strategies[3].symbol``, ``bars[0].timestamp``,
        ``constraints.strategy_bounds`` for a bad key of that map).
    """
    for field, value in message.ListFields():
        name = field.name
        if name in UNCHECKED_FIELDS:
            continue
        path = f"{prefix}.{name}" if prefix else name
        if skip and path in skip:
            continue
        repeated = field.is_repeated
        if field.type == _STRING:
            kind = STRING_KINDS.get(name, TEXT)
            if repeated:
                for i, item in enumerate(value):
                    check_text(item, f"{path}[{i}]", kind=kind)
            else:
                check_text(value, path, kind=kind)
        elif field.type == _MESSAGE:
            entry = field.message_type
            if entry.GetOptions().map_entry:
                _check_map(name, path, value, entry)
            elif repeated and entry.full_name == _TIMESTAMP:  # long series: the check inlined
                for i, item in enumerate(value):
                    seconds, nanos = item.seconds, item.nanos
                    if not (
                        MIN_TIMESTAMP_SECONDS <= seconds <= MAX_TIMESTAMP_SECONDS and 0 <= nanos < NANOS_PER_SECOND
                    ):
                        check_timestamp(item, f"{path}[{i}]")
            elif repeated:
                plan = None if any(p.startswith(f"{path}[") for p in skip) else _flat_plan(entry)
                for i, item in enumerate(value):
                    if plan is None or not _flat_ok(item, plan):  # the full check names the field at fault
                        _check_embedded(item, f"{path}[{i}]", skip)
            else:
                _check_embedded(value, path, skip)


_UNCHECKED: Final = ("", 0)
"""A field ``_flat_ok`` passes over (a number, an enumeration, a bool, a field of ``UNCHECKED_FIELDS``)."""


@cache
def _flat_plan(entry: Any) -> dict[str, tuple[str, int] | tuple[tuple[str, int], tuple[str, int]]] | None:
    """How ``_flat_ok`` checks a message type; None when the type is always checked in full.

    Per field name: the kind of a singular string, ``(key kind, value kind)`` of a string-to-string map, or
    ``_UNCHECKED``. None when a field needs the full check (a message, a repeated string, another map).

    A request's repeated messages (strategies, bars, lots: thousands of items) are mostly of such flat types, and
    the full check builds a field path for every field of every item; ``_flat_ok`` builds none.
    """
    plan: dict[str, tuple[str, int] | tuple[tuple[str, int], tuple[str, int]]] = {}
    if entry.full_name in (_TIMESTAMP, _DURATION):
        return None
    for field in entry.fields:
        name = field.name
        if name in UNCHECKED_FIELDS or field.type not in (_STRING, _MESSAGE):
            plan[name] = _UNCHECKED
        elif field.type == _STRING and not field.is_repeated:
            plan[name] = STRING_KINDS.get(name, TEXT)
        elif field.type == _MESSAGE and field.message_type.GetOptions().map_entry:
            key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            if key.type != _STRING or value.type != _STRING:
                return None
            plan[name] = (MAP_KEY_KINDS.get(name, SYMBOL), MAP_VALUE_KINDS.get(name, TEXT))
        else:
            return None
    return plan


def _flat_ok(message: Any, plan: dict[str, Any]) -> bool:
    """Whether every string of ``message`` (a type with a ``_flat_plan``) is within its kind; False = check in full."""
    for field, value in message.ListFields():
        kind = plan.get(field.name)
        if kind is None:  # a field this build's plan does not know
            return False
        if kind is _UNCHECKED:
            continue
        if isinstance(kind[0], str):
            if len(value) > kind[1] or "\x00" in value:
                return False
            continue
        (_, key_limit), (_, value_limit) = kind
        for key, item in value.items():
            if len(key) > key_limit or "\x00" in key or len(item) > value_limit or "\x00" in item:
                return False
    return True


def _check_map(name: str, path: str, value: Any, entry: Any) -> None:
    key_type = entry.fields_by_name["key"].type
    value_field = entry.fields_by_name["value"]
    key_kind = MAP_KEY_KINDS.get(name, SYMBOL)
    value_kind = MAP_VALUE_KINDS.get(name, TEXT)
    for key, item in value.items():
        if key_type == _STRING:
            _check_key(key, path, key_kind)
        item_path = f"{path}[{key}]"
        if value_field.type == _STRING:
            check_text(item, item_path, kind=value_kind)
        elif value_field.type == _MESSAGE:
            _check_embedded(item, item_path)


def _check_embedded(message: Any, path: str, skip: frozenset[str] = frozenset()) -> None:
    full_name = message.DESCRIPTOR.full_name
    if full_name == _TIMESTAMP:
        check_timestamp(message, path)
    elif full_name == _DURATION:
        check_duration(message, path)
    else:
        check_request(message, path, skip=skip)
