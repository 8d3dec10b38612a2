"""The execution application service: the paper broker, reported fills and reconciliation.

Thin over :class:`command_side.execution_store.PostgresExecutionStore` (which applies the rules of
:mod:`command_side.execution` under its locks) and the trading store (reconciliation reads the holdings).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from command_side.execution import SHARE_TOLERANCE, Break, Fill, reconcile
from command_side.execution_store import (
    ClaimedOrder,
    ExecutionResult,
    OrderState,
    PaperBroker,
    PostgresExecutionStore,
)
from command_side.trading_store import TradingStore
from services.errors import NotFoundError

CASH_TOLERANCE = 0.005
"""Cash differences up to this ($) are no break."""


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """Stored against reported positions."""

    breaks: tuple[Break, ...]
    cash_difference: float | None
    """Reported minus stored cash ($); None when no cash was reported."""

    @property
    def reconciled(self) -> bool:
        """No break, and the cash agrees within ``CASH_TOLERANCE`` when it was reported."""
        return not self.breaks and (self.cash_difference is None or abs(self.cash_difference) <= CASH_TOLERANCE)


class ExecutionService:
    """Execution over the execution and trading stores."""

    def __init__(self, store: PostgresExecutionStore, trading: TradingStore) -> None:
        self._store = store
        self._trading = trading

    async def execute_paper(self, portfolio_id: str, as_of: datetime | None, broker: PaperBroker) -> ExecutionResult:
        """Fill the portfolio's NEW orders with the paper broker at ``as_of`` (default now)."""
        return await self._store.execute_paper(portfolio_id, as_of=as_of or datetime.now(UTC), broker=broker)

    async def claim_orders(self, portfolio_id: str, *, limit: int, claimed_by: str) -> list[ClaimedOrder]:
        """Release NEW orders to a broker adapter (marked SENT; see ``PostgresExecutionStore.claim_orders``)."""
        return await self._store.claim_orders(portfolio_id, limit=limit, claimed_by=claimed_by)

    async def cancel_orders(
        self, portfolio_id: str, order_ids: Sequence[str], *, reason: str, cancelled_by: str
    ) -> list[OrderState]:
        """Cancel open orders, all or none (see ``PostgresExecutionStore.cancel_orders``)."""
        return await self._store.cancel_orders(portfolio_id, order_ids, reason=reason, cancelled_by=cancelled_by)

    async def report_fills(self, portfolio_id: str, fills: Sequence[Fill], *, reported_by: str) -> ExecutionResult:
        """Apply a broker's fills (idempotent by fill id)."""
        return await self._store.report_fills(portfolio_id, fills, reported_by=reported_by)

    async def reconcile(
        self,
        portfolio_id: str,
        reported: Mapping[str, float],
        cash: float | None,
        tolerance: float = SHARE_TOLERANCE,
    ) -> Reconciliation:
        """The stored holdings against a broker's positions and cash.

        Raises
        ------
        NotFoundError
            The portfolio has no stored holdings.
        """
        holdings = await self._trading.load_holdings(portfolio_id)
        if holdings is None:
            raise NotFoundError(f"portfolio {portfolio_id!r} has no stored holdings")
        breaks = reconcile(holdings.positions, reported, tolerance=tolerance)
        return Reconciliation(breaks, None if cash is None else cash - holdings.cash)
