"""The rotation scheduler: every enabled configuration's cycle each ``interval_minutes``, on one replica at a time.

Each server with the command side runs one :class:`RotationScheduler` task. Every ``tick_s`` it claims the
configurations that are due (``rotation_schedule.next_run_at`` passed), moving each one's ``next_run_at`` one
interval ahead in the same statement under ``FOR UPDATE SKIP LOCKED``: a due configuration is claimed by exactly
one replica per interval, and the others skip it. The claimed cycles run as ``RunRotationCycle`` would, decided by
``scheduler``, with the request id ``scheduled:<slot start>`` (the interval's start, UTC), so that a slot can never
store two decisions even if two replicas ran it. A pause (``PauseRotationScheduler``) stops every replica's claims
at the next tick; cycles already claimed finish.

Cycles outside the exchange session are decided as usual: the policy holds them (``BLOCKED_MARKET_CLOSED``).
A cycle that fails (missing prices or signals, an infeasible QP) is logged and its slot is skipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from command_side.rotation import RotationService, RunCycle
from command_side.rotation_store import PostgresRotationStore
from services.errors import StratoptError

log = logging.getLogger(__name__)

DEFAULT_TICK_S = 15.0
"""Seconds between the scheduler's looks for due configurations."""
CLAIMS_PER_TICK = 100
"""Most configurations one replica claims per tick."""
CYCLE_TIMEOUT_S = 60.0
"""Seconds a scheduled cycle may take."""
SCHEDULER = "scheduler"
"""The ``decided_by`` of scheduled cycles."""


def slot_request_id(slot: datetime) -> str:
    """The request id of the cycle of the interval starting at ``slot``."""
    return f"scheduled:{slot.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"


class RotationScheduler:
    """Runs due rotation cycles (module docstring).

    Parameters
    ----------
    store : PostgresRotationStore
        Claims due configurations.
    service : RotationService
        Runs and stores each cycle.
    tick_s : float
        Seconds between ticks.
    clock : callable, optional
        The current time (UTC); the database's clock decides what is due, this one only dates the cycles.
    """

    def __init__(
        self,
        store: PostgresRotationStore,
        service: RotationService,
        *,
        tick_s: float = DEFAULT_TICK_S,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._service = service
        self._tick_s = tick_s
        self._clock = clock

    async def tick(self) -> list[str]:
        """Claim and run the due cycles once; the portfolio ids whose cycle was stored (or replayed)."""
        claimed = await self._store.claim_due(limit=CLAIMS_PER_TICK)
        done = []
        for portfolio_id, slot in claimed:
            command = RunCycle(portfolio_id, self._clock(), slot_request_id(slot), SCHEDULER)
            try:
                await self._service.run_cycle(command, time_remaining_s=CYCLE_TIMEOUT_S)
            except StratoptError as error:
                log.warning("scheduled rotation cycle of %s failed: %s", portfolio_id, error)
                continue
            done.append(portfolio_id)
        return done

    async def run_forever(self) -> None:
        """Tick until cancelled; a tick that fails (the database is away) is logged and the next one tried."""
        while True:
            try:
                await self.tick()
            except StratoptError as error:
                log.warning("rotation scheduler tick failed: %s", error)
            await asyncio.sleep(self._tick_s)
