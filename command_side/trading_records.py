"""The stored schema of the trading tables: holdings, policies, recommendations, the allocation cache, events.

Each stored object is described by a :class:`Schema`: its stored keys in order, each with the contract field it
maps to, its kind and its unit. The key is the stored name, chosen here and documented in
``docs/storage_schema.md``; the contract field is only where the value comes from and goes to, so renaming a
field of ``stratopt.v1`` changes one line of a table, not the stored data. :meth:`Schema.to_json` and
:meth:`Schema.from_json` are the only encoder and decoder; protobuf's binary format and JSON mapping are never
stored. A top-level payload carries ``schema_version`` (:data:`TABLE_SCHEMA_VERSION`).

Encoding rules are those of :mod:`command_side.records`: every key is written, numbers are JSON numbers in the
documented unit (non-finite floats as ``"NaN"``, ``"Infinity"``, ``"-Infinity"``), instants are RFC 3339 UTC
text, durations are seconds (a number), enumerations are short names (``BUY``, ``HIFO``; ``""`` when unset),
and an unset optional value is ``null``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final, Literal

from google.protobuf.message import Message

from command_side import trading_adapter
from command_side.records import JsonObject, SchemaError, decode_float, decode_instant, encode_float, encode_instant
from command_side.trading_model import (
    Allocation,
    AllocationMetrics,
    Position,
    RebalancePolicy,
    RebalanceRecommendation,
)
from services.trading import AllocationRequest
from stratopt.v1 import trading_service_pb2 as trading_pb

TABLE_SCHEMA_VERSION: Final = 1
"""Version of the trading payloads described by :class:`Schema` tables written by this build (the configuration
content has its own, ``command_side.configuration_records.CONFIGURATION_SCHEMA_VERSION``)."""

Kind = Literal[
    "text",
    "number",
    "integer",
    "boolean",
    "instant",
    "duration",
    "enum",
    "record",
    "records",
    "numbers",
    "texts",
    "number_list",
]


@dataclass(frozen=True, slots=True)
class Field:
    """One stored key of a :class:`Schema`."""

    key: str
    """The stored (snake_case) key."""
    attribute: str
    """The ``stratopt.v1`` field it is read from and written to."""
    kind: Kind
    """``text``, ``number`` (float), ``integer``, ``boolean``, ``instant`` (RFC 3339 UTC), ``duration`` (seconds),
    ``enum`` (short name), ``record`` (a nested object), ``records`` (a list of them), ``numbers`` (an object of
    numbers keyed by symbol), ``texts`` (an object of strings), ``number_list`` (an array of numbers)."""
    meaning: str
    """What it is, with its unit (documented in ``docs/storage_schema.md``)."""
    optional: bool = False
    """Whether an unset value is stored as ``null`` (presence-tracked fields: proto3 ``optional``, messages)."""
    enum_prefix: str = ""
    """Prefix of the contract's enum value names, stripped when stored (kind ``enum``)."""
    record: Schema | None = None
    """Schema of the nested objects (kinds ``record``, ``records``, and ``records`` keyed by symbol)."""
    keyed: bool = False
    """For ``records``: an object keyed by the map's key instead of a list (map fields)."""


@dataclass(frozen=True, slots=True)
class Schema:
    """A stored object: its name, contract message and keys."""

    name: str
    """Name in the documentation."""
    message: type[Message]
    """The contract message it is converted to and from."""
    fields: tuple[Field, ...]
    """Its keys, in stored order."""
    version: int = TABLE_SCHEMA_VERSION
    """``schema_version`` of the object when it is stored top-level (configuration content has its own)."""

    def to_json(self, message: Message, *, versioned: bool = True) -> JsonObject:
        """The stored JSON object of ``message`` (with ``schema_version`` unless ``versioned`` is false)."""
        payload: JsonObject = {"schema_version": self.version} if versioned else {}
        for f in self.fields:
            payload[f.key] = _encode(f, message)
        return payload

    def from_json(self, payload: Mapping[str, Any], *, versioned: bool = True) -> Any:
        """The contract message of a stored JSON object (a missing key reads as unset).

        Raises
        ------
        SchemaError
            When a versioned payload is not of the schema's ``version``.
        """
        if versioned and payload.get("schema_version") != self.version:
            raise SchemaError(
                f"{self.name}: schema_version {payload.get('schema_version')!r} is not one this build reads"
            )
        message = self.message()
        for f in self.fields:
            value = payload.get(f.key)
            if value is not None:
                _decode(f, value, message)
        return message


def _encode(f: Field, message: Any) -> Any:
    if f.optional and not message.HasField(f.attribute):
        return None
    value = getattr(message, f.attribute)
    if f.kind == "number":
        return encode_float(value)
    if f.kind == "integer":
        return int(value)
    if f.kind == "instant":
        return encode_instant(value.ToNanoseconds())
    if f.kind == "duration":
        return encode_float(value.ToNanoseconds() / 1e9)
    if f.kind == "enum":
        name = message.DESCRIPTOR.fields_by_name[f.attribute].enum_type.values_by_number[value].name
        short = name.removeprefix(f.enum_prefix)
        return "" if short == "UNSPECIFIED" else short
    if f.kind == "numbers":
        return {k: encode_float(v) for k, v in value.items()}
    if f.kind == "texts":
        return dict(value)
    if f.kind == "number_list":
        return [encode_float(v) for v in value]
    if f.kind == "record":
        assert f.record is not None
        return f.record.to_json(value, versioned=False)
    if f.kind == "records":
        assert f.record is not None
        if f.keyed:
            return {k: f.record.to_json(v, versioned=False) for k, v in value.items()}
        return [f.record.to_json(v, versioned=False) for v in value]
    return value  # text, boolean


def _decode(f: Field, value: Any, message: Any) -> None:
    if f.kind == "number":
        setattr(message, f.attribute, decode_float(value))
    elif f.kind == "integer":
        setattr(message, f.attribute, int(value))
    elif f.kind == "instant":
        getattr(message, f.attribute).FromNanoseconds(decode_instant(value))
    elif f.kind == "duration":
        getattr(message, f.attribute).FromNanoseconds(round(decode_float(value) * 1e9))
    elif f.kind == "enum":
        enum = message.DESCRIPTOR.fields_by_name[f.attribute].enum_type
        known = enum.values_by_name.get(f.enum_prefix + value) if value else None
        setattr(message, f.attribute, 0 if known is None else known.number)
    elif f.kind == "numbers":
        getattr(message, f.attribute).update({str(k): decode_float(v) for k, v in value.items()})
    elif f.kind == "texts":
        getattr(message, f.attribute).update({str(k): str(v) for k, v in value.items()})
    elif f.kind == "number_list":
        getattr(message, f.attribute).extend(decode_float(v) for v in value)
    elif f.kind == "record":
        assert f.record is not None
        getattr(message, f.attribute).CopyFrom(f.record.from_json(value, versioned=False))
    elif f.kind == "records":
        assert f.record is not None
        target = getattr(message, f.attribute)
        if f.keyed:
            for k, v in value.items():
                target[str(k)].CopyFrom(f.record.from_json(v, versioned=False))
        else:
            target.extend(f.record.from_json(v, versioned=False) for v in value)
    else:
        setattr(message, f.attribute, value)


# --- holdings ------------------------------------------------------------------------------------------------

TAX_LOT = Schema(
    "tax lot",
    trading_pb.TaxLot,
    (
        Field("lot_id", "lot_id", "text", "Lot identifier."),
        Field("shares", "shares", "number", "Shares in the lot."),
        Field("cost_basis", "cost_basis", "number", "Cost basis per share ($)."),
        Field("acquired", "acquired", "instant", "Acquisition time (RFC 3339 UTC); null when unknown.", True),
    ),
)

POSITION = Schema(
    "position",
    trading_pb.Position,
    (
        Field("symbol", "symbol", "text", "Ticker."),
        Field("shares", "shares", "number", "Shares held."),
        Field("price", "price", "number", "Price per share ($) given with the position; null when none.", True),
        Field("lots", "lots", "records", "Tax lots (tax lot objects).", record=TAX_LOT),
    ),
)

# --- rebalance policy ----------------------------------------------------------------------------------------

BAND = Schema(
    "band",
    trading_pb.Band,
    (
        Field("absolute", "absolute", "number", "Absolute drift band (weight fraction); null when none.", True),
        Field("relative", "relative", "number", "Relative drift band (fraction of the target); null when none.", True),
    ),
)

POLICY = Schema(
    "rebalance policy",
    trading_pb.RebalancePolicy,
    (
        Field("drift_threshold", "drift_threshold", "number",
              "Two-way portfolio drift (fraction, cash included) above which CheckDrift flags; null = default.", True),
        Field("bands", "bands", "records", "Per-symbol drift bands keyed by symbol (band objects).", record=BAND,
              keyed=True),
        Field("min_trade_value", "min_trade_value", "number", "Smallest trade worth making ($)."),
        Field("max_turnover", "max_turnover", "number", "Largest one-way turnover (fraction); null = none.", True),
        Field("commission_per_trade", "commission_per_trade", "number", "Commission per trade ($)."),
        Field("commission_per_share", "commission_per_share", "number", "Commission per share ($)."),
        Field("impact_model", "impact_model", "enum", "NONE, SQUARE_ROOT, ALMGREN_2005 or \"\" (default).",
              enum_prefix="IMPACT_MODEL_"),
        Field("impact_coefficient", "impact_coefficient", "number", "Impact coefficient; null = the model's default.",
              True),
        Field("lot_method", "lot_method", "enum", "FIFO, HIFO, TAX_MINIMIZING or \"\" (default).",
              enum_prefix="LOT_METHOD_"),
        Field("prefer_losses", "prefer_losses", "boolean", "Whether sells prefer lots at a loss."),
        Field("short_term_tax_rate", "short_term_tax_rate", "number", "Short-term gains tax rate (decimal); null = "
              "default.", True),
        Field("long_term_tax_rate", "long_term_tax_rate", "number", "Long-term gains tax rate (decimal); null = "
              "default.", True),
        Field("long_term_after_days", "long_term_after_days", "integer",
              "A lot is long term when held more than this many days; null = after its first anniversary.", True),
        Field("wash_sale_window_days", "wash_sale_window_days", "integer", "Wash-sale window (days); null = default.",
              True),
        Field("approval_limit", "approval_limit", "number", "Trade value ($) above which approval is needed; null = "
              "default.", True),
        Field("approval_ttl", "approval_ttl", "duration", "Lifetime of a pending recommendation (seconds); null = "
              "default.", True),
        Field("max_participation", "max_participation", "number", "Largest share of a symbol's average daily "
              "volume per trade (fraction); null = no cap.", True),
        Field("max_cost_bps", "max_cost_bps", "number", "Largest estimated cost (basis points of the trade value) "
              "before a recommendation is held for approval; null = no limit.", True),
    ),
)  # fmt: skip

# --- rebalance recommendation --------------------------------------------------------------------------------

LOT_SALE = Schema(
    "lot sale",
    trading_pb.LotSale,
    (
        Field("lot_id", "lot_id", "text", "Lot sold from."),
        Field("shares", "shares", "number", "Shares sold from the lot."),
        Field("cost_basis", "cost_basis", "number", "Cost basis per share ($)."),
        Field("gain", "gain", "number", "Realised gain ($, losses negative)."),
        Field("long_term", "long_term", "boolean", "Whether the gain is long term."),
    ),
)

TRADE = Schema(
    "trade",
    trading_pb.Trade,
    (
        Field("symbol", "symbol", "text", "Ticker."),
        Field("side", "side", "enum", "BUY or SELL.", enum_prefix="TRADE_SIDE_"),
        Field("shares", "shares", "number", "Shares traded."),
        Field("price", "price", "number", "Price per share ($)."),
        Field("value", "value", "number", "Trade value ($)."),
        Field("commission", "commission", "number", "Commission ($)."),
        Field("spread_cost", "spread_cost", "number", "Half-spread cost ($)."),
        Field("impact_cost", "impact_cost", "number", "Market-impact cost ($)."),
        Field("total_cost", "total_cost", "number", "Total cost ($)."),
        Field("lots", "lots", "records", "Lots sold (lot sale objects; sells only).", record=LOT_SALE),
        Field("short_term_gain", "short_term_gain", "number", "Realised short-term gain ($)."),
        Field("long_term_gain", "long_term_gain", "number", "Realised long-term gain ($)."),
        Field("wash_sale", "wash_sale", "boolean", "Whether the trade triggers a wash sale."),
        Field(
            "participation_capped",
            "participation_capped",
            "boolean",
            "Whether the policy's participation cap cut the trade (absent before: false).",
        ),
    ),
)

HARVEST_CANDIDATE = Schema(
    "harvest candidate",
    trading_pb.HarvestCandidate,
    (
        Field("symbol", "symbol", "text", "Ticker."),
        Field("lot_id", "lot_id", "text", "Lot at a loss."),
        Field("shares", "shares", "number", "Shares of the lot."),
        Field("unrealized_loss", "unrealized_loss", "number", "Unrealised loss ($, positive)."),
        Field("wash_sale_risk", "wash_sale_risk", "boolean", "Whether selling it risks a wash sale."),
    ),
)

RECOMMENDATION = Schema(
    "rebalance recommendation",
    trading_pb.RebalanceRecommendation,
    (
        Field("recommendation_id", "recommendation_id", "text", "Recommendation identifier (UUID text)."),
        Field("portfolio_id", "portfolio_id", "text", "Portfolio identifier."),
        Field("trades", "trades", "records", "Trades (trade objects).", record=TRADE),
        Field("total_trade_value", "total_trade_value", "number", "Sum of the trade values ($)."),
        Field("total_cost", "total_cost", "number", "Sum of the trade costs ($)."),
        Field("turnover", "turnover", "number", "One-way turnover (fraction of portfolio value)."),
        Field("drift_before", "drift_before", "number", "Portfolio drift before the trades (fraction)."),
        Field("drift_after", "drift_after", "number", "Portfolio drift after the trades (fraction)."),
        Field("short_term_gain", "short_term_gain", "number", "Realised short-term gain ($)."),
        Field("long_term_gain", "long_term_gain", "number", "Realised long-term gain ($)."),
        Field("estimated_tax", "estimated_tax", "number", "Estimated tax on the gains ($)."),
        Field("harvest_candidates", "harvest_candidates", "records", "Lots at a loss (harvest candidate objects).",
              record=HARVEST_CANDIDATE),
        Field("approval_limit", "approval_limit", "number", "Approval limit applied ($)."),
        Field("created_at", "created_at", "instant", "Creation time (RFC 3339 UTC).", True),
        Field("expires_at", "expires_at", "instant", "Expiry of a pending recommendation; null otherwise.", True),
        Field("hold_reason", "hold_reason", "text", "Why it waits for approval within the approval limit; \"\" "
              "when it does not (absent before: \"\")."),
    ),
)  # fmt: skip
"""The recommendation as created. Status and decision (``decided_by``, ``decided_at``, ``reason``) are columns of
``rebalance_recommendations``, not part of the payload."""

# --- allocation cache ----------------------------------------------------------------------------------------

TARGET_POSITION = Schema(
    "target position",
    trading_pb.TargetPosition,
    (
        Field("symbol", "symbol", "text", "Ticker."),
        Field("target_weight", "target_weight", "number", "Target weight (fraction)."),
        Field("allowed_deviation", "allowed_deviation", "number", "Allowed weight deviation (fraction); null = none.",
              True),
        Field("price", "price", "number", "Price per share ($)."),
        Field("lot_size", "lot_size", "integer", "Shares per lot (0 = 1)."),
        Field("momentum_score", "momentum_score", "number", "Momentum score; null = none.", True),
    ),
)  # fmt: skip

ALLOCATION_REQUEST = Schema(
    "allocation request",
    trading_pb.AllocateSharesRequest,
    (
        Field("portfolio_id", "portfolio_id", "text", "Portfolio identifier ('' = none)."),
        Field("holdings", "holdings", "records", "Current holdings (position objects).", record=POSITION),
        Field("targets", "targets", "records", "Targets (target position objects).", record=TARGET_POSITION),
        Field("extra_cash", "extra_cash", "number", "Cash to invest beyond the holdings ($)."),
        Field("strategy", "strategy", "enum", "MINIMIZE_LEFTOVER, MAXIMIZE_SHARES, MOMENTUM_WEIGHTED, PYPFOPT_LP, "
              "PYPFOPT_GREEDY or \"\".", enum_prefix="ALLOCATION_STRATEGY_"),
        Field("commission_per_trade", "commission_per_trade", "number", "Commission per trade ($)."),
        Field("fee_per_share", "fee_per_share", "number", "Fee per share ($)."),
        Field("cache_ttl", "cache_ttl", "duration", "Requested cache lifetime (seconds); null = none.", True),
        Field("deviation_mode", "deviation_mode", "enum", "RELATIVE, ABSOLUTE (percentage points of the budget) or "
              "\"\" (= RELATIVE; absent before: \"\").", enum_prefix="DEVIATION_MODE_"),
        Field("reinvest", "reinvest", "boolean", "PYPFOPT strategies: short proceeds added to the longs' budget "
              "(absent before: false)."),
        Field("short_ratio", "short_ratio", "number", "PYPFOPT strategies: short book value / budget; null = the "
              "negative weights' magnitudes summed (absent before: null).", True),
    ),
)  # fmt: skip

ALLOCATION_LINE = Schema(
    "allocation line",
    trading_pb.AllocationLine,
    (
        Field("symbol", "symbol", "text", "Ticker."),
        Field("price", "price", "number", "Price per share ($)."),
        Field("current_shares", "current_shares", "integer", "Shares held before."),
        Field("buy_shares", "buy_shares", "integer", "Shares bought."),
        Field("sell_shares", "sell_shares", "integer", "Shares sold."),
        Field("final_shares", "final_shares", "integer", "Shares held after."),
        Field("trade_cost", "trade_cost", "number", "Commission and fees ($)."),
        Field("final_value", "final_value", "number", "Value held after ($)."),
        Field("target_weight", "target_weight", "number", "Target weight (fraction)."),
        Field("actual_weight", "actual_weight", "number", "Weight after (fraction)."),
        Field("weight_deviation", "weight_deviation", "number", "actual_weight - target_weight."),
    ),
)

SOLD_HOLDING = Schema(
    "sold holding",
    trading_pb.SoldHolding,
    (
        Field("symbol", "symbol", "text", "Ticker."),
        Field("shares", "shares", "integer", "Shares sold (all of them)."),
        Field("price", "price", "number", "Price per share ($)."),
        Field("proceeds", "proceeds", "number", "Proceeds ($)."),
        Field("trade_cost", "trade_cost", "number", "Commission and fees ($)."),
    ),
)

ALLOCATION_METRICS = Schema(
    "allocation metrics",
    trading_pb.AllocationMetrics,
    (
        Field("budget", "budget", "number", "Budget: proceeds of the holdings plus extra cash ($)."),
        Field("budget_used", "budget_used", "number", "Invested value plus fees ($)."),
        Field("unused_budget", "unused_budget", "number", "budget - budget_used ($)."),
        Field("unused_fraction", "unused_fraction", "number", "unused_budget / budget."),
        Field("fees_total", "fees_total", "number", "Commissions and fees ($)."),
        Field("solve_time_ms", "solve_time_ms", "number", "Solve time (milliseconds)."),
        Field("solver_status", "solver_status", "text", "How the solve ended: OPTIMAL, TIME_LIMIT, GREEDY ..."),
        Field("solver", "solver", "text", "Solver (e.g. HIGHS, GREEDY)."),
        Field(
            "fallback_used",
            "fallback_used",
            "boolean",
            "Whether the greedy heuristic answered (the MILP failed or timed out).",
        ),
        Field(
            "relaxation",
            "relaxation",
            "text",
            "Relaxation applied to make the bounds feasible (NONE when none was needed).",
        ),
        Field("relaxation_detail", "relaxation_detail", "text", "The relaxation, in words."),
        Field("weight_sum", "weight_sum", "number", "Sum of the request's target weights (absent before: 0)."),
        Field(
            "weights_renormalised",
            "weights_renormalised",
            "boolean",
            "Whether the weights were divided by weight_sum (absent before: false).",
        ),
        Field(
            "lp_objective",
            "lp_objective",
            "number",
            "PyPortfolioOpt's lp_portfolio objective at the allocation: sum of |target value - final value| plus "
            "unused_budget ($; absent before: 0).",
        ),
    ),
)

ALLOCATION = Schema(
    "allocation",
    trading_pb.AllocateSharesResponse,
    (
        Field("cache_key", "cache_key", "text", "Hash of the normalised input."),
        Field("lines", "lines", "records", "One per target (allocation line objects).", record=ALLOCATION_LINE),
        Field("sold_in_full", "sold_in_full", "records", "Holdings sold in full (sold holding objects).",
              record=SOLD_HOLDING),
        Field("metrics", "metrics", "record", "Allocation metrics (an allocation metrics object).",
              record=ALLOCATION_METRICS),
    ),
)  # fmt: skip
"""The allocation as first computed; ``cached`` and ``expires_at`` come from the cache row when it is read."""


def holdings_json(positions: Any) -> JsonObject:
    """The stored ``portfolio_holdings.positions`` of a sequence of ``stratopt.v1.Position``."""
    stored = [POSITION.to_json(p, versioned=False) for p in positions]
    return {"schema_version": TABLE_SCHEMA_VERSION, "positions": stored}


def holdings_from_json(payload: Mapping[str, Any]) -> tuple[trading_pb.Position, ...]:
    """The positions of a stored ``portfolio_holdings.positions``."""
    if payload.get("schema_version") != TABLE_SCHEMA_VERSION:
        raise SchemaError(f"holdings: schema_version {payload.get('schema_version')!r} is not one this build reads")
    return tuple(POSITION.from_json(p, versioned=False) for p in payload["positions"])


def event_payload(payload: Mapping[str, Any]) -> JsonObject:
    """A ``rebalance_events.payload`` with its ``schema_version``."""
    return {"schema_version": TABLE_SCHEMA_VERSION, **payload}


# --- the application's dataclasses -----------------------------------------------------------------------------
# The stores keep the application's dataclasses in the stored schema above; the contract message is only the
# table's shape (``command_side.trading_adapter`` converts), so the stored JSON is the same as before.


def allocation_json(allocation: Allocation) -> JsonObject:
    """The stored ``share_allocations.response`` of an allocation (``trading_records.ALLOCATION``)."""
    return ALLOCATION.to_json(trading_adapter.allocation_message(allocation))


def allocation_from_json(payload: Mapping[str, Any], *, expires_at: datetime) -> Allocation:
    """The cached allocation of a stored ``share_allocations.response``: ``cached`` true, ``expires_at`` given."""
    allocation = trading_adapter.allocation_of_message(ALLOCATION.from_json(payload))
    return replace(allocation, cached=True, expires_at=expires_at)


def allocation_metrics_json(metrics: AllocationMetrics) -> JsonObject:
    """An allocation metrics object (``trading_records.ALLOCATION_METRICS``, unversioned)."""
    return ALLOCATION_METRICS.to_json(trading_adapter.allocation_metrics_message(metrics), versioned=False)


def allocation_request_json(problem: AllocationRequest) -> JsonObject:
    """The stored ``share_allocations.request`` of a normalised allocation problem (``ALLOCATION_REQUEST``).

    Every target's ``allowed_deviation`` and ``lot_size`` are written out; ``momentum_score`` when it has one;
    holdings with their price and no lots; no ``portfolio_id`` or ``cache_ttl``.
    """
    message = trading_pb.AllocateSharesRequest(
        extra_cash=problem.extra_cash,
        strategy=trading_adapter.PROTO_STRATEGIES[problem.strategy],
        commission_per_trade=problem.commission_per_trade,
        fee_per_share=problem.fee_per_share,
        deviation_mode=trading_adapter.PROTO_DEVIATION_MODES[problem.deviation_mode],
        reinvest=problem.reinvest,
    )
    if problem.short_ratio is not None:
        message.short_ratio = problem.short_ratio
    for target in problem.targets:
        added = message.targets.add(
            symbol=target.symbol,
            target_weight=target.target_weight,
            allowed_deviation=target.allowed_deviation,
            price=target.price,
            lot_size=target.lot_size,
        )
        if target.momentum_score is not None:
            added.momentum_score = target.momentum_score
    for holding in problem.holdings:
        message.holdings.add(symbol=holding.symbol, shares=holding.shares, price=holding.price)
    return ALLOCATION_REQUEST.to_json(message)


def positions_json(positions: Sequence[Position]) -> JsonObject:
    """The stored ``portfolio_holdings.positions`` of a holdings snapshot (as :func:`holdings_json`)."""
    return holdings_json([trading_adapter.position_message(position) for position in positions])


def positions_from_json(payload: Mapping[str, Any]) -> tuple[Position, ...]:
    """The positions of a stored ``portfolio_holdings.positions``."""
    return tuple(trading_adapter.position_of_message(message) for message in holdings_from_json(payload))


def policy_json(policy: RebalancePolicy) -> JsonObject:
    """The stored ``rebalance_policies.policy`` of a policy (``trading_records.POLICY``)."""
    return POLICY.to_json(trading_adapter.policy_message(policy))


def policy_from_json(payload: Mapping[str, Any]) -> RebalancePolicy:
    """The policy of a stored ``rebalance_policies.policy``."""
    return trading_adapter.policy_of_message(POLICY.from_json(payload))


def recommendation_json(recommendation: RebalanceRecommendation) -> JsonObject:
    """The stored ``rebalance_recommendations.recommendation`` (``RECOMMENDATION``: status and decision left out)."""
    return RECOMMENDATION.to_json(trading_adapter.recommendation_message(recommendation))


def recommendation_from_json(payload: Mapping[str, Any]) -> RebalanceRecommendation:
    """The recommendation as created of a stored ``rebalance_recommendations.recommendation`` (no status)."""
    return trading_adapter.recommendation_of_message(RECOMMENDATION.from_json(payload))
