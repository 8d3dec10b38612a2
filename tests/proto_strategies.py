"""Hypothesis strategies that build any protobuf message from its descriptor, hostile values included.

:func:`messages` walks a message descriptor: every field is set or left unset; strings are short, long (past every
limit), unicode or hold a NUL; numbers span their whole wire range with NaN and ±inf for floating point; enums take
known and unknown numbers; repeated fields and maps get a few items; nested messages are built the same way down to a
bounded depth; ``google.protobuf.Timestamp`` and ``Duration`` get values inside and outside their valid ranges.
:func:`mutated` merges such a message into a valid request and :func:`one_field` replaces one field of a valid
request (at any depth), so the generated requests also reach the checks behind the first ones.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

from stratopt.request_limits import MAX_DURATION_SECONDS, MAX_TIMESTAMP_SECONDS, MIN_TIMESTAMP_SECONDS

MAX_DEPTH = 3
"""Nesting depth below which message fields are left unset."""
MAX_ITEMS = 3
"""Most items of a generated repeated field or map."""

_T = FieldDescriptor
_INT_RANGES = {
    _T.TYPE_INT32: (-(2**31), 2**31 - 1),
    _T.TYPE_SINT32: (-(2**31), 2**31 - 1),
    _T.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    _T.TYPE_UINT32: (0, 2**32 - 1),
    _T.TYPE_FIXED32: (0, 2**32 - 1),
    _T.TYPE_INT64: (-(2**63), 2**63 - 1),
    _T.TYPE_SINT64: (-(2**63), 2**63 - 1),
    _T.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    _T.TYPE_UINT64: (0, 2**64 - 1),
    _T.TYPE_FIXED64: (0, 2**64 - 1),
}

_TEXT = st.characters(codec="utf-8")  # any code point protobuf can carry (no lone surrogates)
STRINGS = st.one_of(
    st.sampled_from(["", "A", "B", "x", "a\x00b", "\x00", "A" * 65, "p" * 129, "r" * 4001, "x" * 10_000]),
    st.text(alphabet=st.sampled_from("AB\x00é€😀 _-."), max_size=8),
    st.text(alphabet=_TEXT, max_size=40),
    st.text(alphabet=_TEXT, min_size=120, max_size=300),
)
"""Strings: empty, plain symbols, NULs, past each length limit, random unicode."""
FLOATS = st.one_of(
    st.sampled_from([0.0, 1.0, -1.0, 0.5, float("nan"), float("inf"), float("-inf"), 1e308, -1e-308, 5e-324]),
    st.floats(allow_nan=True, allow_infinity=True),
)
"""Doubles: ordinary values, NaN, ±inf, the extremes."""


def integers(low: int, high: int) -> st.SearchStrategy[int]:
    """Small values (what a valid request holds) and the type's whole range, its ends included."""
    return st.one_of(st.integers(max(low, 0), min(high, 10)), st.sampled_from([low, high]), st.integers(low, high))


def timestamps() -> st.SearchStrategy[dict[str, int]]:
    """Timestamp fields: inside 0001..9999, just outside, anywhere in int64; nanos inside and outside [0, 1e9)."""
    seconds = st.one_of(
        st.integers(MIN_TIMESTAMP_SECONDS, MAX_TIMESTAMP_SECONDS),
        st.sampled_from([MIN_TIMESTAMP_SECONDS - 1, MAX_TIMESTAMP_SECONDS + 1, 0, 1_600_000_000]),
        st.integers(-(2**63), 2**63 - 1),
    )
    nanos = st.one_of(st.just(0), st.integers(0, 999_999_999), st.integers(-(2**31), 2**31 - 1))
    return st.fixed_dictionaries({"seconds": seconds, "nanos": nanos})


def durations() -> st.SearchStrategy[dict[str, int]]:
    """Duration fields: valid ones, ones past 10,000 years, nanos of the other sign or out of range."""
    seconds = st.one_of(
        st.integers(-MAX_DURATION_SECONDS, MAX_DURATION_SECONDS),
        st.sampled_from([0, 1, 3600, -1, MAX_DURATION_SECONDS + 1]),
        st.integers(-(2**63), 2**63 - 1),
    )
    nanos = st.one_of(st.just(0), st.integers(-999_999_999, 999_999_999), st.integers(-(2**31), 2**31 - 1))
    return st.fixed_dictionaries({"seconds": seconds, "nanos": nanos})


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == _T.TYPE_STRING:
        return STRINGS
    if kind == _T.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == _T.TYPE_BOOL:
        return st.booleans()
    if kind == _T.TYPE_DOUBLE:
        return FLOATS
    if kind == _T.TYPE_FLOAT:
        return st.floats(width=32, allow_nan=True, allow_infinity=True)
    if kind == _T.TYPE_ENUM:
        assert field.enum_type is not None
        known = [value.number for value in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-3, 1000))  # proto3 enums are open
    low, high = _INT_RANGES[kind]
    return integers(low, high)


def _value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any] | None:
    """A strategy for one value of ``field`` (None: leave a message field unset at this depth)."""
    if field.type != _T.TYPE_MESSAGE:
        return _scalar(field)
    assert field.message_type is not None
    name = field.message_type.full_name
    if name == "google.protobuf.Timestamp":
        return timestamps()
    if name == "google.protobuf.Duration":
        return durations()
    if depth >= MAX_DEPTH:
        return None
    return messages(field.message_type, depth + 1)


def _field(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any] | None:
    assert field.message_type is not None or field.type != _T.TYPE_MESSAGE
    if field.type == _T.TYPE_MESSAGE and field.message_type is not None and field.message_type.GetOptions().map_entry:
        entry = field.message_type
        value = _value(entry.fields_by_name["value"], depth)
        if value is None:
            return None
        return st.dictionaries(_scalar(entry.fields_by_name["key"]), value, max_size=MAX_ITEMS)
    value = _value(field, depth)
    if value is None:
        return None
    return st.lists(value, max_size=MAX_ITEMS) if field.is_repeated else value


def _assign(message: Message, field: FieldDescriptor, value: Any) -> None:
    target: Any = message
    if field.type == _T.TYPE_MESSAGE and field.message_type is not None and field.message_type.GetOptions().map_entry:
        entries = getattr(target, field.name)
        for key, item in value.items():
            if isinstance(item, Message):
                entries[key].CopyFrom(item)
            elif isinstance(item, dict):
                for name, number in item.items():
                    setattr(entries[key], name, number)
            else:
                entries[key] = item
    elif field.type == _T.TYPE_MESSAGE:
        items = value if field.is_repeated else [value]
        for item in items:
            sub = getattr(target, field.name).add() if field.is_repeated else getattr(target, field.name)
            if isinstance(item, Message):
                sub.CopyFrom(item)
            else:  # a Timestamp or Duration as its fields
                for name, number in item.items():
                    setattr(sub, name, number)
            if not field.is_repeated:
                sub.SetInParent()
    elif field.is_repeated:
        getattr(target, field.name).extend(value)
    else:
        setattr(target, field.name, value)


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Any message of ``descriptor``'s type: each field set (to a hostile or ordinary value) or unset.

    Parameters
    ----------
    descriptor : google.protobuf.descriptor.Descriptor
        The message type.
    depth : int
        Nesting depth of this message (message fields are left unset from ``MAX_DEPTH`` on).
    """
    cls = message_factory.GetMessageClass(descriptor)
    optional = {}
    for field in descriptor.fields:
        strategy = _field(field, depth)
        if strategy is not None:
            optional[field.name] = strategy

    def build(values: dict[str, Any]) -> Message:
        message = cls()
        for name, value in values.items():
            _assign(message, descriptor.fields_by_name[name], value)
        return message

    return st.fixed_dictionaries({}, optional=optional).map(build)


def mutated(valid: Message) -> st.SearchStrategy[Message]:
    """``valid`` with a generated message of its type merged into it (set fields replace, lists and maps grow)."""

    def merge(extra: Message) -> Message:
        request = type(valid)()
        request.CopyFrom(valid)
        request.MergeFrom(extra)
        return request

    descriptor: Any = valid.DESCRIPTOR
    return messages(descriptor).map(merge)


def _targets(message: Message, path: tuple[tuple[str, int | None], ...] = ()) -> list[Any]:
    """Every field of ``message`` and of the messages it holds, as ``(path to its message, field)``."""
    found: list[Any] = []
    for field in message.DESCRIPTOR.fields:
        found.append((path, field))
        sub_type = field.message_type
        if field.type != _T.TYPE_MESSAGE or sub_type is None or sub_type.GetOptions().map_entry:
            continue
        if sub_type.full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
            continue
        value: Any = getattr(message, field.name)
        if field.is_repeated:
            for i, item in enumerate(value):
                found.extend(_targets(item, (*path, (field.name, i))))
        elif message.HasField(field.name):
            found.extend(_targets(value, (*path, (field.name, None))))
    return found


def one_field(valid: Message) -> st.SearchStrategy[Message]:
    """``valid`` with exactly one field (at any depth) replaced by a generated value (or cleared)."""
    targets = [(path, field) for path, field in _targets(valid) if _field(field, 1) is not None]

    def replaced(target: Any) -> st.SearchStrategy[Message]:
        path, field = target
        value = _field(field, 1)
        assert value is not None

        def apply(new: Any) -> Message:
            request = type(valid)()
            request.CopyFrom(valid)
            holder: Any = request
            for name, index in path:
                holder = getattr(holder, name) if index is None else getattr(holder, name)[index]
            holder.ClearField(field.name)
            _assign(holder, field, new)
            return request

        return value.map(apply)

    return st.sampled_from(targets).flatmap(replaced)
