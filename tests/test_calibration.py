"""Tests of ols_jax.calibration (temperature scaling)."""

import jax.numpy as jnp
import numpy as np
import pytest

import oracles
from hypothesis import given, settings, strategies as st

from ols_jax import calibration


def _softmax(z):
  z = z - z.max(axis=1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=1, keepdims=True)


def _calibrated_set(n, k, seed, spread=1.5):
  """Labels drawn from softmax(z): the logits z are calibrated by design."""
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(n, k)) * spread
  p = _softmax(z)
  u = rng.random((n, 1))
  labels = np.minimum((np.cumsum(p, axis=1) < u).sum(axis=1), k - 1)
  return z.astype(np.float32), labels


def test_recovers_temperature_of_overconfident_logits():
  z, labels = _calibrated_set(20000, 5, seed=0)
  logits = 3.0 * z  # over-confident by a factor 3
  t = calibration.fit_temperature(logits, labels)
  assert abs(t - 3.0) < 0.15, t
  before = oracles.numpy_reference_metrics(_softmax(logits), labels)
  scaled = np.asarray(calibration.apply_temperature(logits, t))
  after = oracles.numpy_reference_metrics(_softmax(scaled), labels)
  assert after["ece"] < 0.5 * before["ece"]
  assert after["ece"] < 0.02
  assert after["nll"] < before["nll"]


def test_under_confident_logits_give_t_below_one():
  z, labels = _calibrated_set(10000, 4, seed=1)
  t = calibration.fit_temperature(0.5 * z, labels)
  assert abs(t - 0.5) < 0.05, t


@settings(max_examples=15, deadline=None)
@given(n=st.integers(5, 300), k=st.integers(2, 8),
       scale=st.floats(0.01, 30.0), signal=st.floats(0.0, 3.0),
       seed=st.integers(0, 2**31 - 1))
def test_never_increases_validation_nll(n, k, scale, signal, seed):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, k, n)
  logits = rng.normal(size=(n, k))
  logits[np.arange(n), labels] += signal
  logits = (scale * logits).astype(np.float32)
  t = calibration.fit_temperature(logits, labels)
  assert np.exp(-3.0) - 1e-12 <= t <= np.exp(3.0) + 1e-9
  nll_fit = calibration.temperature_nll(logits, labels, t)
  nll_one = calibration.temperature_nll(logits, labels, 1.0)
  assert nll_fit <= nll_one + 1e-12
  # No point of a coarse grid over the bracket is better.
  grid = np.exp(np.linspace(-3.0, 3.0, 61))
  best_grid = min(calibration.temperature_nll(logits, labels, g) for g in grid)
  assert nll_fit <= best_grid + 1e-9


def test_deterministic_and_accepts_jax_bf16():
  z, labels = _calibrated_set(2000, 6, seed=2)
  logits = jnp.asarray(2.0 * z, jnp.bfloat16)
  t1 = calibration.fit_temperature(logits, jnp.asarray(labels))
  t2 = calibration.fit_temperature(logits, labels)
  assert t1 == t2
  assert isinstance(t1, float)
  assert 1.5 < t1 < 2.6


def test_separable_data_hits_the_lower_bound():
  labels = np.arange(50) % 3
  logits = np.eye(3, dtype=np.float32)[labels] * 5.0
  t = calibration.fit_temperature(logits, labels)
  np.testing.assert_allclose(t, np.exp(-3.0), rtol=1e-6)


def test_apply_temperature():
  x = jnp.asarray([[1.0, -2.0, 4.0]], jnp.float32)
  np.testing.assert_allclose(calibration.apply_temperature(x, 2.0),
                             [[0.5, -1.0, 2.0]])
  y = calibration.apply_temperature(x.astype(jnp.bfloat16), 2.0)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_array_equal(calibration.apply_temperature(x, 1.0), x)


def test_rejects_bad_input():
  with pytest.raises(ValueError):
    calibration.fit_temperature(np.zeros((0, 3)), np.zeros(0, int))
  with pytest.raises(ValueError):
    calibration.fit_temperature(np.zeros((4, 3)), np.array([0, 1, 2, 3]))
  with pytest.raises(ValueError):
    calibration.fit_temperature(np.full((2, 3), np.nan), np.array([0, 1]))
