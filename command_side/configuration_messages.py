"""The configuration's conversions between the contract and the domain.

``stratopt.v1.OptimizationConfiguration`` to and from ``command_side.configuration.OptimizationConfiguration``.

Field by field with the tables of ``command_side.configuration_records`` (a stored key is the contract's field name
and the dataclass's attribute): a contract enumeration becomes its short name (``""`` when unspecified) and back,
an unset optional field ``None``, an unset ``constraints`` or ``risk_parameters`` the default instance (and the
default instance an unset message), an unset ``black_litterman`` or ``recompute`` ``None``. The adapter
(``command_side.optimization_adapter``) and the request validation (``command_side.mapping``) use it; the
application and the stores never see the contract.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from google.protobuf.message import Message

from command_side.configuration import OptimizationConfiguration, OptimizationConstraints, RiskParameters, Strategy
from command_side.configuration_records import (
    BLACK_LITTERMAN,
    CONSTRAINTS,
    RECOMPUTE,
    RISK_PARAMETERS,
    STRATEGY,
    Schema,
)
from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import types_pb2 as pb

__all__ = ["configuration_from_message", "configuration_message"]


def _enum_name(message: Message, key: str, number: int, prefix: str) -> str:
    enum = message.DESCRIPTOR.fields_by_name[key].enum_type
    assert enum is not None  # kind ``enum`` fields are enumerations
    value = enum.values_by_number.get(number)
    short = "" if value is None else value.name.removeprefix(prefix)
    return "" if short == "UNSPECIFIED" else short


def _from_message(schema: Schema, message: Any) -> Any:
    values: dict[str, Any] = {}
    for f in schema.fields:
        if f.optional and not message.HasField(f.key):
            continue
        value = getattr(message, f.key)
        if f.kind == "number":
            values[f.key] = float(value)
        elif f.kind == "integer":
            values[f.key] = int(value)
        elif f.kind == "boolean":
            values[f.key] = bool(value)
        elif f.kind == "enum":
            values[f.key] = _enum_name(message, f.key, value, f.enum_prefix)
        elif f.kind == "numbers":
            values[f.key] = {str(k): float(v) for k, v in value.items()}
        elif f.kind == "texts":
            values[f.key] = {str(k): str(v) for k, v in value.items()}
        elif f.kind == "number_list":
            values[f.key] = tuple(float(v) for v in value)
        elif f.kind == "record":
            assert f.record is not None
            values[f.key] = _from_message(f.record, value)
        elif f.kind == "records":
            assert f.record is not None
            record = f.record
            if f.keyed:
                values[f.key] = {str(k): _from_message(record, v) for k, v in value.items()}
            else:
                values[f.key] = tuple(_from_message(record, v) for v in value)
        else:
            values[f.key] = str(value)
    return schema.type(**values)


def _fill(schema: Schema, value: Any, message: Any) -> None:
    for f in schema.fields:
        item = getattr(value, f.key)
        if item is None:
            continue
        if f.kind in ("number", "integer", "boolean", "text"):
            setattr(message, f.key, item)
        elif f.kind == "enum":
            enum = message.DESCRIPTOR.fields_by_name[f.key].enum_type
            assert enum is not None  # kind ``enum`` fields are enumerations
            known = enum.values_by_name.get(f.enum_prefix + item) if item else None
            setattr(message, f.key, 0 if known is None else known.number)
        elif f.kind in ("numbers", "texts"):
            getattr(message, f.key).update(item)
        elif f.kind == "number_list":
            getattr(message, f.key).extend(item)
        elif f.kind == "record":
            assert f.record is not None
            target = getattr(message, f.key)
            target.SetInParent()
            _fill(f.record, item, target)
        elif f.kind == "records":
            assert f.record is not None
            target = getattr(message, f.key)
            if f.keyed:
                for key, record in item.items():
                    _fill(f.record, record, target[key])  # indexing adds the entry
            else:
                for record in item:
                    _fill(f.record, record, target.add())


_STRATEGY_KEYS = ("symbol", "sector", "classifications")
assert tuple(f.key for f in STRATEGY.fields) == _STRATEGY_KEYS  # _strategies reads these keys


def _strategies(messages: Any) -> tuple[Strategy, ...]:
    """``_from_message(STRATEGY, s)`` of each strategy, written out (a configuration holds up to thousands).

    An empty map becomes ``{}`` without ``dict()`` over it: copying even an empty protobuf map took about 2 µs a
    strategy here, more than reading the other two fields.
    """
    return tuple(
        Strategy(symbol=s.symbol, sector=s.sector, classifications=dict(c) if (c := s.classifications) else {})
        for s in messages
    )


def configuration_from_message(message: cmd_pb.OptimizationConfiguration) -> OptimizationConfiguration:
    """The domain's configuration of a contract message (``created_at`` as an aware UTC datetime)."""
    black_litterman = None
    if message.HasField("black_litterman"):
        black_litterman = _from_message(BLACK_LITTERMAN, message.black_litterman)
    created_at = message.created_at.ToDatetime(tzinfo=UTC) if message.HasField("created_at") else None
    recompute = _from_message(RECOMPUTE, message.recompute) if message.HasField("recompute") else None
    return OptimizationConfiguration(
        portfolio_id=message.portfolio_id,
        version=message.version,
        strategies=_strategies(message.strategies),
        objective=pb.Objective.Name(message.objective),
        method=pb.OptimizationMethod.Name(message.method),
        constraints=_from_message(CONSTRAINTS, message.constraints),
        risk_parameters=_from_message(RISK_PARAMETERS, message.risk_parameters),
        black_litterman=black_litterman,
        enabled=message.enabled,
        lookback_periods=message.lookback_periods,
        market_symbol=message.market_symbol,
        recompute=recompute,
        created_at=created_at,
    )


def configuration_message(config: OptimizationConfiguration) -> cmd_pb.OptimizationConfiguration:
    """The contract message of a domain configuration (default ``constraints``/``risk_parameters`` left unset)."""
    message = cmd_pb.OptimizationConfiguration(
        portfolio_id=config.portfolio_id,
        version=config.version,
        objective=pb.Objective.Value(config.objective),
        method=pb.OptimizationMethod.Value(config.method),
        enabled=config.enabled,
        lookback_periods=config.lookback_periods,
        market_symbol=config.market_symbol,
    )
    for strategy in config.strategies:
        _fill(STRATEGY, strategy, message.strategies.add())
    if config.constraints != OptimizationConstraints():
        message.constraints.SetInParent()
        _fill(CONSTRAINTS, config.constraints, message.constraints)
    if config.risk_parameters != RiskParameters():
        message.risk_parameters.SetInParent()
        _fill(RISK_PARAMETERS, config.risk_parameters, message.risk_parameters)
    if config.black_litterman is not None:
        message.black_litterman.SetInParent()
        _fill(BLACK_LITTERMAN, config.black_litterman, message.black_litterman)
    if config.recompute is not None:
        message.recompute.SetInParent()
        _fill(RECOMPUTE, config.recompute, message.recompute)
    if config.created_at is not None:
        created_at = config.created_at
        if created_at.tzinfo is None:
            created_at = created_at.replace(tzinfo=UTC)
        message.created_at.FromDatetime(created_at)
    return message
