"""Turnover and per-bucket analytics against hand-computed and NumPy-computed truth."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from query_side.analytics import RunRecord, events_frame, portfolio_analytics, with_turnover

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def run(
    timestamp: datetime,
    weights: dict[str, float],
    *,
    event_id: str | None = None,
    expected_return: float = 0.1,
    volatility: float = 0.2,
    sharpe_ratio: float = 0.5,
) -> RunRecord:
    return RunRecord(
        timestamp=timestamp,
        event_id=event_id or f"00000000-0000-0000-0000-{int(timestamp.timestamp()):012d}",
        weights=weights,
        expected_return=expected_return,
        volatility=volatility,
        sharpe_ratio=sharpe_ratio,
    )


def dense_turnover(weights: list[dict[str, float]], previous: dict[str, float] | None = None) -> list[float | None]:
    """0.5 * sum |w_t - w_{t-1}| on a dense (runs x names) matrix, zeros for missing names."""
    history = ([previous] if previous is not None else []) + weights
    names = sorted({name for w in history for name in w})
    matrix = np.array([[w.get(name, 0.0) for name in names] for w in history]).reshape(len(history), len(names))
    turnover = 0.5 * np.abs(np.diff(matrix, axis=0)).sum(axis=1)
    values: list[float | None] = [float(x) for x in turnover]
    return values if previous is not None else [None, *values]


def test_turnover_by_hand_with_names_entering_and_leaving() -> None:
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    runs = [
        run(t0, {"a": 0.5, "b": 0.5}),
        run(t0 + timedelta(hours=1), {"a": 0.7, "c": 0.3}),  # b leaves, c enters: 0.5*(0.2+0.5+0.3)=0.5
        run(t0 + timedelta(hours=2), {"a": 0.7, "c": 0.3}),  # unchanged: 0
        run(t0 + timedelta(hours=3), {"d": 1.0}),  # full rotation: 0.5*(0.7+0.3+1.0)=1.0
        run(t0 + timedelta(hours=4), {}),  # empty weights: 0.5*1.0
    ]
    turnover = with_turnover(events_frame(runs))["turnover"].to_list()
    assert turnover[0] is None
    assert turnover[1:] == pytest.approx([0.5, 0.0, 1.0, 0.5])


def test_turnover_against_dense_numpy_matrix() -> None:
    rng = np.random.default_rng(7)
    universe = [f"S{i}" for i in range(8)]
    t0 = datetime(2024, 2, 1, tzinfo=UTC)
    weights: list[dict[str, float]] = []
    for _ in range(25):
        names = list(rng.choice(universe, size=int(rng.integers(1, 6)), replace=False))
        raw = rng.random(len(names))
        weights.append({str(name): float(x) for name, x in zip(names, raw / raw.sum(), strict=True)})
    runs = [run(t0 + timedelta(minutes=17 * k), w) for k, w in enumerate(weights)]
    random.Random(3).shuffle(runs)  # input order must not matter
    previous = {"S0": 0.25, "S9": 0.75}

    without_previous = with_turnover(events_frame(runs))["turnover"].to_list()
    with_previous = with_turnover(events_frame(runs), previous_weights=previous)["turnover"].to_list()

    expected = dense_turnover(weights)
    assert without_previous[0] is None
    assert without_previous[1:] == pytest.approx(expected[1:], abs=1e-12)
    assert with_previous == pytest.approx(dense_turnover(weights, previous), abs=1e-12)


def test_equal_timestamps_are_ordered_by_event_id() -> None:
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    runs = [
        run(t0, {"b": 1.0}, event_id="00000000-0000-0000-0000-00000000000b"),
        run(t0, {"a": 1.0}, event_id="00000000-0000-0000-0000-00000000000a"),
        run(t0 + timedelta(seconds=1), {"a": 0.5, "b": 0.5}, event_id="00000000-0000-0000-0000-000000000001"),
    ]
    result = with_turnover(events_frame(runs))
    assert result["event_id"].to_list() == [
        "00000000-0000-0000-0000-00000000000a",
        "00000000-0000-0000-0000-00000000000b",
        "00000000-0000-0000-0000-000000000001",
    ]
    assert result["turnover"].to_list()[1:] == pytest.approx([1.0, 0.5])


def test_buckets_against_numpy() -> None:
    rng = np.random.default_rng(11)
    t0 = datetime(2024, 5, 3, 7, 13, tzinfo=UTC)
    offsets = np.sort(rng.integers(0, 5 * 86_400_000_000, size=40))  # microseconds over five days
    universe = ["a", "b", "c", "d", "e"]
    weights = []
    for _ in offsets:
        names = list(rng.choice(universe, size=int(rng.integers(1, 5)), replace=False))
        raw = rng.random(len(names))
        weights.append({str(name): float(x) for name, x in zip(names, raw / raw.sum(), strict=True)})
    expected_returns, volatilities, sharpe_ratios = (
        rng.normal(0.08, 0.03, 40),
        rng.random(40),
        rng.normal(1, 0.5, 40),
    )
    runs = [
        run(
            t0 + timedelta(microseconds=int(offset)),
            w,
            expected_return=float(mu),
            volatility=float(sigma),
            sharpe_ratio=float(sharpe),
        )
        for offset, w, mu, sigma, sharpe in zip(
            offsets, weights, expected_returns, volatilities, sharpe_ratios, strict=True
        )
    ]
    width = timedelta(hours=6)
    analytics = portfolio_analytics(events_frame(runs), bucket_width=width)

    width_us = 6 * 3_600_000_000
    epoch_us = np.array([(r.timestamp - EPOCH) // timedelta(microseconds=1) for r in runs])
    bucket_of_run = epoch_us // width_us * width_us  # floor, aligned to the epoch
    turnover = np.array([np.nan if x is None else x for x in dense_turnover(weights)])
    expected_starts = np.unique(bucket_of_run)

    assert analytics.total_runs == 40
    assert [EPOCH + timedelta(microseconds=int(s)) for s in expected_starts] == [
        b.bucket_start for b in analytics.buckets
    ]
    for bucket, start in zip(analytics.buckets, expected_starts, strict=True):
        members = bucket_of_run == start
        assert bucket.run_count == members.sum()
        assert bucket.mean_sharpe_ratio == pytest.approx(sharpe_ratios[members].mean(), abs=1e-12)
        assert bucket.mean_volatility == pytest.approx(volatilities[members].mean(), abs=1e-12)
        assert bucket.mean_expected_return == pytest.approx(expected_returns[members].mean(), abs=1e-12)
        bucket_turnover = turnover[members][~np.isnan(turnover[members])]
        if bucket_turnover.size == 0:
            assert bucket.mean_turnover is None
            assert bucket.max_turnover is None
        else:
            assert bucket.mean_turnover == pytest.approx(bucket_turnover.mean(), abs=1e-12)
            assert bucket.max_turnover == pytest.approx(bucket_turnover.max(), abs=1e-12)


def test_first_run_is_left_out_of_turnover_statistics() -> None:
    t0 = datetime(2024, 1, 1, 1, tzinfo=UTC)
    runs = [
        run(t0, {"a": 1.0}, sharpe_ratio=1.0),
        run(t0 + timedelta(days=1), {"b": 1.0}, sharpe_ratio=2.0),
        run(t0 + timedelta(days=1, hours=1), {"a": 0.6, "b": 0.4}, sharpe_ratio=3.0),
    ]
    first, second = portfolio_analytics(events_frame(runs), bucket_width=timedelta(days=1)).buckets
    assert (first.run_count, first.mean_sharpe_ratio) == (1, 1.0)
    assert first.mean_turnover is None
    assert first.max_turnover is None
    assert (second.run_count, second.mean_sharpe_ratio) == (2, 2.5)
    assert second.mean_turnover == pytest.approx((1.0 + 0.6) / 2)
    assert second.max_turnover == pytest.approx(1.0)

    with_previous = portfolio_analytics(
        events_frame(runs), bucket_width=timedelta(days=1), previous_weights={"a": 0.5, "c": 0.5}
    )
    assert with_previous.buckets[0].mean_turnover == pytest.approx(0.5)


def test_buckets_are_aligned_to_the_unix_epoch() -> None:
    runs = [
        run(datetime(2024, 1, 8, 12, tzinfo=UTC), {"a": 1.0}),  # a Monday
        run(datetime(1969, 12, 31, 23, 30, tzinfo=UTC), {"a": 1.0}),  # before the epoch
    ]
    weekly = portfolio_analytics(events_frame(runs), bucket_width=timedelta(days=7))
    # 1970-01-01 was a Thursday: weekly buckets start on Thursdays (DuckDB's default origin is a Monday).
    assert [b.bucket_start for b in weekly.buckets] == [
        datetime(1969, 12, 25, tzinfo=UTC),
        datetime(2024, 1, 4, tzinfo=UTC),
    ]
    ninety_minutes = portfolio_analytics(events_frame(runs), bucket_width=timedelta(minutes=90))
    assert [b.bucket_start for b in ninety_minutes.buckets] == [
        datetime(1969, 12, 31, 22, 30, tzinfo=UTC),
        datetime(2024, 1, 8, 12, tzinfo=UTC),  # 1704715200 s = 315688 * 5400 s
    ]


def test_empty_history_has_no_buckets() -> None:
    analytics = portfolio_analytics(events_frame([]), bucket_width=timedelta(days=1))
    assert analytics.buckets == ()
    assert analytics.total_runs == 0


def test_bucket_width_must_be_positive() -> None:
    frame = events_frame([run(datetime(2024, 1, 1, tzinfo=UTC), {"a": 1.0})])
    with pytest.raises(ValueError, match="bucket_width"):
        portfolio_analytics(frame, bucket_width=timedelta(0))


def test_frame_accepts_other_time_zones() -> None:
    runs = [run(datetime(2024, 1, 1, 23, tzinfo=UTC), {"a": 1.0})]
    frame = events_frame(runs).with_columns(pl.col("timestamp").dt.convert_time_zone("Asia/Tokyo"))
    analytics = portfolio_analytics(frame, bucket_width=timedelta(days=1))
    assert analytics.buckets[0].bucket_start == datetime(2024, 1, 1, tzinfo=UTC)
