"""The command side's tables from the engine's domain parameter names to the contract's field paths.

The engine (``services/``) names what is wrong by its own attributes (``upper_bounds[3]``, ``turnover_limit``,
``black_litterman.view_confidences[1]``, ``targets[4].symbol``; the convention is in ``services.errors``). A caller
of the gRPC contract needs the request's field paths instead (``constraints.strategy_bounds[KO].max_weight``,
``constraints.turnover_limit``, ``black_litterman.views[1].confidence``, ``targets[4].symbol``). This module holds
the one table per request family that says which is which (``OPTIMIZATION_FIELD_PATHS``,
``ALLOCATION_FIELD_PATHS``) and the one translation the command side applies where an engine error leaves the
application for the servicer (``proto_field_paths``): field violations, precondition subjects and the paths the
messages quote all come out in proto terms.

Patterns hold placeholders: ``{s}`` and ``{s2}`` are a strategy's position in the problem's arrays, ``{k}`` the
position in another list (a sector limit, a view, an allocation target or holding), ``{t}`` a period. The proto
side may also use ``{id}``, the symbol at position ``{s}`` (proto maps are keyed by symbol), and
``{flat}``, the row-major position ``s * N + s2`` of a covariance entry in ``moments.covariance``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Final

from services.errors import StratoptError

_INDEX: Final = r"(?P<{name}>\d+)"
_PLACEHOLDER: Final = re.compile(r"\{(s|s2|k|t)\}")
_PATH_TOKEN: Final = re.compile(r"(?<![\w.\]])[A-Za-z_]\w*(?:\.[A-Za-z_]\w*|\[[^\]\[]*\])*")
"""A path-like token of a message: dotted attributes with ``[...]`` subscripts."""


@dataclass(frozen=True, slots=True)
class FieldPath:
    """One row of a table: a domain parameter pattern and the proto field path pattern it stands for."""

    domain: str
    """Pattern of the engine's name, e.g. ``upper_bounds[{s}]``."""
    proto: str
    """Pattern of the request's field path, e.g. ``constraints.strategy_bounds[{id}].max_weight``."""


def _constraints(*names: str) -> tuple[FieldPath, ...]:
    return tuple(FieldPath(name, f"constraints.{name}") for name in names)


def _risk_parameters(*names: str) -> tuple[FieldPath, ...]:
    return tuple(FieldPath(name, f"risk_parameters.{name}") for name in names)


_BLACK_LITTERMAN: Final = "black_litterman"

OPTIMIZATION_FIELD_PATHS: Final[tuple[FieldPath, ...]] = (
    # PortfolioProblem
    FieldPath("objective", "objective"),
    FieldPath("constraints", "constraints"),  # the constraint set as a whole (a solver's infeasibility)
    FieldPath("lower_bounds", "constraints.min_weight"),
    FieldPath("upper_bounds", "constraints.max_weight"),
    FieldPath("lower_bounds[{s}]", "constraints.strategy_bounds[{id}].min_weight"),
    FieldPath("upper_bounds[{s}]", "constraints.strategy_bounds[{id}].max_weight"),
    FieldPath("sector_limits", "constraints.sector_limits"),
    FieldPath("sector_limits[{k}]", "constraints.sector_limits[{k}]"),
    *(
        FieldPath(f"sector_limits[{{k}}].{name}", f"constraints.sector_limits[{{k}}].{name}")
        for name in ("sector", "scheme", "min_weight", "max_weight")
    ),
    *_constraints(
        "min_return",
        "max_volatility",
        "turnover_limit",
        "turnover_caps",
        "leverage_limit",
        "transaction_costs_bps",
        "benchmark_weights",
        "tracking_error_limit",
        "betas",
        "beta_tolerance",
        "max_holdings",
        "min_position_weight",
        "min_net_exposure",
        "max_net_exposure",
    ),
    *(
        FieldPath(f"{name}[{{s}}]", f"constraints.{name}[{{id}}]")
        for name in ("turnover_caps", "transaction_costs_bps", "benchmark_weights", "betas")
    ),
    FieldPath("current_weights", "strategies"),
    FieldPath("current_weights[{s}]", "strategies[{s}].current_weight"),
    FieldPath("multi_objective", "risk_parameters.multi_objective"),
    *(
        FieldPath(f"multi_objective.{name}", f"risk_parameters.multi_objective.{name}")
        for name in ("return_weight", "variance_weight", "turnover_weight", "l2_weight")
    ),
    # PortfolioProblem and EstimationSettings
    *_risk_parameters("risk_free_rate", "risk_aversion", "periods_per_year", "missing_data_policy", "ema_span"),
    # Moments
    FieldPath("expected_returns", "moments.expected_returns"),
    FieldPath("expected_returns[{s}]", "moments.expected_returns[{s}]"),
    FieldPath("covariance", "moments.covariance"),
    FieldPath("covariance[{s}, {s2}]", "moments.covariance[{flat}]"),
    # ReturnHistory, and the scenarios a risk measure is computed on (its complete periods)
    FieldPath("returns", "returns"),
    FieldPath("returns[:, {s}]", "strategies[{s}]"),
    FieldPath("market_returns", "returns.market_returns"),
    FieldPath("market_returns[{t}]", "returns.market_returns[{t}]"),
    FieldPath("market_prices", "returns.market_returns"),
    FieldPath("market_prices[{t}]", "returns.market_returns"),
    FieldPath("scenarios", "returns"),
    FieldPath("scenarios[{t}, {s}]", "strategies[{s}].returns"),
    # MethodSettings
    *_risk_parameters("risk_measure", "confidence_level", "risk_budgets"),
    FieldPath("risk_budgets[{s}]", "risk_parameters.risk_budgets[{id}]"),
    FieldPath("linkage", "risk_parameters.linkage_method"),
    FieldPath("uncertainty", "risk_parameters.robust.uncertainty_set"),
    FieldPath("robust_confidence", "risk_parameters.robust.confidence_level"),
    FieldPath("robust_observations", "risk_parameters.robust.observations"),
    # MethodSettings.black_litterman
    FieldPath(_BLACK_LITTERMAN, _BLACK_LITTERMAN),
    *(
        FieldPath(f"{_BLACK_LITTERMAN}.{name}", f"{_BLACK_LITTERMAN}.{name}")
        for name in ("market_caps", "prior_returns", "risk_aversion", "omega", "tau")
    ),
    *(
        FieldPath(f"{_BLACK_LITTERMAN}.{name}[{{s}}]", f"{_BLACK_LITTERMAN}.{name}[{{id}}]")
        for name in ("market_caps", "prior_returns")
    ),
    FieldPath(f"{_BLACK_LITTERMAN}.picking_matrix", f"{_BLACK_LITTERMAN}.views"),
    FieldPath(f"{_BLACK_LITTERMAN}.picking_matrix[{{k}}]", f"{_BLACK_LITTERMAN}.views[{{k}}].weights"),
    FieldPath(f"{_BLACK_LITTERMAN}.view_returns", f"{_BLACK_LITTERMAN}.views"),
    FieldPath(f"{_BLACK_LITTERMAN}.view_returns[{{k}}]", f"{_BLACK_LITTERMAN}.views[{{k}}].expected_return"),
    FieldPath(f"{_BLACK_LITTERMAN}.view_confidences", f"{_BLACK_LITTERMAN}.views"),
    FieldPath(f"{_BLACK_LITTERMAN}.view_confidences[{{k}}]", f"{_BLACK_LITTERMAN}.views[{{k}}].confidence"),
)
"""``OptimizeRequest`` (and ``ComputeEfficientFrontierRequest.problem``): the names of ``PortfolioProblem``,
``Moments``, ``ReturnHistory``, ``EstimationSettings`` and ``MethodSettings``, as the engine emits them."""

ALLOCATION_FIELD_PATHS: Final[tuple[FieldPath, ...]] = (
    FieldPath("targets", "targets"),
    FieldPath("targets[{k}]", "targets[{k}]"),
    FieldPath("targets[{k}].symbol", "targets[{k}].symbol"),
    *(
        FieldPath(f"targets[{{k}}].{name}", f"targets[{{k}}].{name}")
        for name in ("target_weight", "price", "allowed_deviation", "lot_size", "momentum_score")
    ),
    FieldPath("holdings", "holdings"),
    FieldPath("holdings[{k}]", "holdings[{k}]"),
    FieldPath("holdings[{k}].symbol", "holdings[{k}].symbol"),
    FieldPath("holdings[{k}].shares", "holdings[{k}].shares"),
    FieldPath("holdings[{k}].price", "holdings[{k}].price"),
    *(
        FieldPath(name, name)
        for name in (
            "strategy",
            "extra_cash",
            "commission_per_trade",
            "fee_per_share",
            "deviation_mode",
            "reinvest",
            "short_ratio",
        )
    ),
)
"""``AllocateSharesRequest``: the names of ``AllocationRequest`` (the engine's ``targets[i].symbol`` is the proto's)."""


@dataclass(frozen=True, slots=True)
class _Row:
    pattern: re.Pattern[str]
    proto: str


class FieldPathTable:
    """A table of ``FieldPath`` rows, compiled: domain path → proto path, for one request family.

    Parameters
    ----------
    rows : sequence of FieldPath
        The table; a domain path matches at most one row.
    """

    def __init__(self, rows: Sequence[FieldPath]) -> None:
        self.rows = tuple(rows)
        self._compiled = tuple(_Row(_compile(row.domain), row.proto) for row in self.rows)

    def proto_path(self, path: str, *, symbols: Sequence[str] = ()) -> str | None:
        """The proto field path of a domain path, or None when no row matches it.

        Parameters
        ----------
        path : str
            A domain path, e.g. ``upper_bounds[3]``.
        symbols : sequence of str
            The problem's symbols in array order, for ``{id}`` (without them: the position).
        """
        for row in self._compiled:
            match = row.pattern.fullmatch(path)
            if match is not None:
                return _render(row.proto, match.groupdict(), symbols)
        return None

    def proto_text(self, text: str, *, symbols: Sequence[str] = (), prefix: str = "") -> str:
        """A message with the domain paths it quotes translated (``prefix`` before each).

        Only path-like tokens are read as paths (with a ``_``, a ``.`` or a subscript, e.g. ``turnover_limit``,
        ``targets[0].symbol``): a plain word such as "covariance" is prose.
        """

        def token(match: re.Match[str]) -> str:
            path = match.group(0)
            if not any(mark in path for mark in "_.["):
                return path
            proto = self.proto_path(path, symbols=symbols)
            return path if proto is None else _join(prefix, proto)

        return _PATH_TOKEN.sub(token, text)

    def translated(self, error: StratoptError, *, symbols: Sequence[str] = (), prefix: str = "") -> StratoptError:
        """The same error in proto terms: its field paths, precondition subjects and quoted paths translated.

        Parameters
        ----------
        error : StratoptError
            A domain error (paths the table does not know, e.g. those the adapter's own validation already
            named in proto terms, stay as they are).
        symbols : sequence of str
            The problem's symbols in array order.
        prefix : str
            Path of the request message inside the RPC's request (``problem`` for ComputeEfficientFrontier):
            put before every field path, every translated subject and a message's leading path.

        Returns
        -------
        StratoptError
            An error of the same class with the translated message and violations.
        """

        def field(path: str) -> str:
            proto = self.proto_path(path, symbols=symbols)
            return _join(prefix, proto if proto is not None else path)

        def text(value: str) -> str:
            return self.proto_text(value, symbols=symbols, prefix=prefix)

        def subject(value: str) -> str:
            proto = self.proto_path(value, symbols=symbols)
            return value if proto is None else _join(prefix, proto)

        message = error.message
        lead = error.field_violations[0].field if error.field_violations else None
        if lead is not None and message.startswith(f"{lead}: "):
            message = f"{field(lead)}: {text(message[len(lead) + 2 :])}"
        else:
            message = text(message)
        result = BaseException.__new__(type(error))
        result.__dict__.update(error.__dict__)
        result.args = (message,)
        result.message = message
        result.field_violations = tuple(
            replace(v, field=field(v.field), description=text(v.description)) for v in error.field_violations
        )
        result.precondition_violations = tuple(
            replace(v, subject=subject(v.subject), description=text(v.description))
            for v in error.precondition_violations
        )
        return result


@contextmanager
def proto_field_paths(table: FieldPathTable, *, symbols: Sequence[str] = (), prefix: str = "") -> Iterator[None]:
    """Re-raise a domain error raised inside the block in proto terms (``FieldPathTable.translated``).

    Parameters
    ----------
    table : FieldPathTable
        The request family's table.
    symbols : sequence of str
        The request's symbols in array order.
    prefix : str
        Path of the request message inside the RPC's request (``problem`` for ComputeEfficientFrontier).
    """
    try:
        yield
    except StratoptError as error:
        raise table.translated(error, symbols=symbols, prefix=prefix) from None


def _compile(pattern: str) -> re.Pattern[str]:
    parts = _PLACEHOLDER.split(pattern)
    regex = "".join(re.escape(part) if i % 2 == 0 else _INDEX.format(name=part) for i, part in enumerate(parts))
    return re.compile(regex)


def _render(proto: str, groups: dict[str, str], symbols: Sequence[str]) -> str:
    values: dict[str, object] = dict(groups)
    if "s" in groups:
        position = int(groups["s"])
        values["id"] = symbols[position] if position < len(symbols) else groups["s"]
        if "s2" in groups:
            n_assets = len(symbols)
            values["flat"] = position * n_assets + int(groups["s2"]) if n_assets else f"{position}, {groups['s2']}"
    return proto.format(**values)


def _join(prefix: str, path: str) -> str:
    return f"{prefix}.{path}" if prefix else path


OPTIMIZATION: Final = FieldPathTable(OPTIMIZATION_FIELD_PATHS)
"""The compiled table of ``OptimizeRequest``."""
ALLOCATION: Final = FieldPathTable(ALLOCATION_FIELD_PATHS)
"""The compiled table of ``AllocateSharesRequest``."""
