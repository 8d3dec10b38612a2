"""How much of a caller's deadline each step of a command may use.

The solver gets what is left minus a storage reserve sized from measured storage times (:class:`StorageTimer`),
and a write commits only while at least ``COMMIT_MARGIN_S`` of the deadline is left (:func:`commit_by`, checked in
the storing transaction by ``command_side.optimization_store.check_commit_by``). docs/throughput.md gives the
rules and the measurements behind the constants.
"""

from __future__ import annotations

import collections
import time

STORAGE_RESERVE_FACTOR = 2.0
"""The solver's time limit leaves this many times the recent p99 of storing a run (``StorageTimer``)."""
STORAGE_RESERVE_MAX_SHARE = 0.5
"""... but never more than this share of what is left of the deadline."""
STORAGE_RESERVE_DEFAULT_S = 0.02
"""The reserve before any run was stored (seconds), until measured storage times replace it."""
COMMIT_MARGIN_S = 0.005
"""A run is committed only if at least this much of the caller's deadline is left when the commit starts
(seconds): time for the COMMIT round trip and the response, so that a call the caller sees time out is not stored."""

_STORAGE_WINDOW = 200
"""Recent ``persist_run`` durations whose p99 sizes the storage reserve."""


def deadline(time_remaining_s: float | None) -> float | None:
    """The caller's deadline in ``time.monotonic()`` seconds, or None."""
    return None if time_remaining_s is None else time.monotonic() + time_remaining_s


def commit_by(deadline: float | None) -> float | None:
    """The last ``time.monotonic()`` instant at which a write for a call with ``deadline`` may commit."""
    return None if deadline is None else deadline - COMMIT_MARGIN_S


class StorageTimer:
    """Recent durations of storing a run; sizes the part of a deadline kept for storage.

    Parameters
    ----------
    window : int, optional
        Durations kept (the most recent ones).
    """

    def __init__(self, window: int = _STORAGE_WINDOW) -> None:
        self._durations: collections.deque[float] = collections.deque(maxlen=window)
        self._p99 = STORAGE_RESERVE_DEFAULT_S / STORAGE_RESERVE_FACTOR

    def record(self, seconds: float) -> None:
        """Add one measured storage time (seconds); the p99 is recomputed every 20 records."""
        self._durations.append(seconds)
        if len(self._durations) % 20 == 0 or len(self._durations) < 20:
            ordered = sorted(self._durations)
            self._p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]

    def reserve_s(self, remaining_s: float) -> float:
        """Seconds to keep for storage out of ``remaining_s``.

        ``STORAGE_RESERVE_FACTOR`` × the recent p99 of storing a run, at most ``STORAGE_RESERVE_MAX_SHARE`` of
        ``remaining_s`` (so that a short deadline still leaves the solver time), at least ``COMMIT_MARGIN_S``.
        """
        wanted = max(COMMIT_MARGIN_S, STORAGE_RESERVE_FACTOR * self._p99)
        return min(wanted, STORAGE_RESERVE_MAX_SHARE * max(remaining_s, 0.0))
