"""Signals: σ and z-scores against hand-worked values; shrunk correlation against scikit-learn and a closed form."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.covariance import ledoit_wolf

from services.errors import InvalidInputError
from services.rotation import (
    CorrelationTarget,
    SignalSettings,
    VolatilityModel,
    average_true_range,
    ewma_volatility,
    risk_scaled_z,
    shrunk_correlation,
    signal_volatility,
)


def test_ewma_volatility_by_hand() -> None:
    # span 3: λ = 0.5. σ² = 1e-4 → 0.5·1e-4 + 0.5·4e-4 = 2.5e-4 → 0.5·2.5e-4 + 0.5·9e-4 = 5.75e-4.
    returns = np.array([[0.01], [-0.02], [0.03]])
    assert ewma_volatility(returns, span=3)[0] == pytest.approx(math.sqrt(5.75e-4), rel=1e-12)


def test_ewma_volatility_skips_missing_periods() -> None:
    returns = np.array([[0.01, np.nan], [-0.02, 0.01], [0.03, np.nan]])
    sigma = ewma_volatility(returns, span=3)
    assert sigma[1] == pytest.approx(0.01, rel=1e-12)  # one observation: its own magnitude


def test_average_true_range_by_hand() -> None:
    # Closes 10, 11, 10.5, 12: true ranges 1, 0.5, 1.5; α = 1/2: 1 → 0.75 → 1.125.
    prices = np.array([[10.0], [11.0], [10.5], [12.0]])
    assert average_true_range(prices, periods=2)[0] == pytest.approx(1.125, rel=1e-12)


def test_signal_volatility_of_atr_is_relative_to_the_last_price() -> None:
    prices = np.array([[10.0], [11.0], [10.5], [12.0]])
    settings = SignalSettings(volatility=VolatilityModel.ATR, atr_periods=2)
    assert signal_volatility(prices, settings)[0] == pytest.approx(1.125 / 12.0, rel=1e-12)
    ewma = signal_volatility(prices, SignalSettings(ewma_span=3))
    assert ewma[0] == pytest.approx(ewma_volatility(np.diff(prices, axis=0) / prices[:-1], 3)[0], rel=1e-12)


def test_z_scores_by_hand() -> None:
    # x = [1, 2, 3]: mean 2, population sd sqrt(2/3): z = ±sqrt(3/2).
    z = risk_scaled_z(np.array([1.0, 2.0, 3.0]), np.ones(3))
    np.testing.assert_allclose(z, [-math.sqrt(1.5), 0.0, math.sqrt(1.5)], rtol=1e-12)
    clipped = risk_scaled_z(np.array([1.0, 2.0, 3.0]), np.ones(3), SignalSettings(winsor_limit=1.0))
    np.testing.assert_allclose(clipped, [-1.0, 0.0, 1.0])
    # Dividing by σ first: scores 2, 2, 6 over σ 2, 1, 3 give x = 1, 2, 2.
    scaled = risk_scaled_z(np.array([2.0, 2.0, 6.0]), np.array([2.0, 1.0, 3.0]))
    x = np.array([1.0, 2.0, 2.0])
    np.testing.assert_allclose(scaled, (x - x.mean()) / x.std(), rtol=1e-12)


def test_horizons_are_combined_by_their_weights() -> None:
    scores = np.array([[1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    only_first = risk_scaled_z(scores, np.ones(3), SignalSettings(horizon_weights=(1.0, 0.0)))
    np.testing.assert_allclose(only_first, risk_scaled_z(scores[0], np.ones(3)), rtol=1e-12)
    # Equal weights: x = [2, 1.5, 2.5].
    x = np.array([2.0, 1.5, 2.5])
    np.testing.assert_allclose(risk_scaled_z(scores, np.ones(3)), (x - x.mean()) / x.std(), rtol=1e-12)


def test_bad_signals_name_their_field() -> None:
    with pytest.raises(InvalidInputError, match=r"sigma\[1\]"):
        risk_scaled_z(np.array([1.0, 2.0]), np.array([1.0, 0.0]))
    with pytest.raises(InvalidInputError, match="all equal"):
        risk_scaled_z(np.array([2.0, 4.0]), np.array([1.0, 2.0]))
    with pytest.raises(InvalidInputError, match="horizon_weights"):
        risk_scaled_z(np.ones((2, 3)), np.ones(3), SignalSettings(horizon_weights=(1.0,)))
    with pytest.raises(InvalidInputError, match="winsor_limit"):
        SignalSettings(winsor_limit=0.0)


def test_ledoit_wolf_correlation_is_scikit_learns_shrunk_covariance_as_a_correlation(
    sp500_prices: pd.DataFrame,
) -> None:
    returns = sp500_prices.iloc[-501:, :12].pct_change(fill_method=None).iloc[1:].to_numpy()
    theirs, _ = ledoit_wolf(returns)
    sd = np.sqrt(np.diag(theirs))
    np.testing.assert_allclose(shrunk_correlation(returns), theirs / np.outer(sd, sd), rtol=1e-10, atol=1e-14)


def test_constant_correlation_shrinkage_moves_every_pair_towards_the_average_by_one_factor(
    sp500_prices: pd.DataFrame,
) -> None:
    # The target keeps the variances and sets every correlation to the average r̄, so the shrunk correlation is
    # δ r̄ + (1 − δ) r_ij: (shrunk − r̄) / (r − r̄) is one constant in [0, 1] over all pairs.
    returns = sp500_prices.iloc[-501:, :12].pct_change(fill_method=None).iloc[1:].to_numpy()
    sample = np.corrcoef(returns, rowvar=False)
    upper = np.triu_indices(12, k=1)
    average = sample[upper].mean()
    shrunk = shrunk_correlation(returns, CorrelationTarget.CONSTANT_CORRELATION)
    ratio = (shrunk[upper] - average) / (sample[upper] - average)
    assert 0.0 <= ratio.mean() <= 1.0
    np.testing.assert_allclose(ratio, ratio.mean(), rtol=1e-8)
    np.testing.assert_allclose(np.diag(shrunk), 1.0)
    assert np.linalg.eigvalsh(shrunk).min() > 0
