"""Split conformal prediction: quantile, LAC/APS scores and sets, coverage."""

from __future__ import annotations

from fractions import Fraction
import json
import math

import numpy as np
import pytest

from ols_jax import conformal


def _softmax(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


def _miscalibrated(rng, n, k=5, scale=2.0, true_temperature=2.5):
  """Model probs softmax(z); labels drawn from the hotter softmax(z / T)."""
  logits = scale * rng.normal(size=(n, k)) + np.linspace(0.0, 1.0, k)
  true_p = _softmax(logits / true_temperature)
  u = rng.random((n, 1))
  labels = np.minimum((u > np.cumsum(true_p, axis=1)).sum(axis=1), k - 1)
  return _softmax(logits), labels


def _random_probs(rng, n, k):
  return _softmax(rng.normal(size=(n, k)) * 1.5)


def _dyadic_probs(rng, n, k, total=16):
  """Probabilities in multiples of 1/total (exact sums, many ties)."""
  counts = np.stack([np.bincount(rng.integers(0, k, size=total), minlength=k)
                     for _ in range(n)])
  return counts / total


def _brute_quantile(scores, alpha):
  """k-th smallest score, k from exact rational arithmetic on str(alpha)."""
  n = len(scores)
  k = math.ceil((n + 1) * (1 - Fraction(str(alpha))))
  return math.inf if k > n else sorted(scores)[k - 1]


# -- quantile ---------------------------------------------------------------

def test_quantile_hand_examples():
  scores = np.random.default_rng(0).permutation(np.arange(1, 11) / 10)
  # n = 10: k = ceil(11 (1 - alpha)).
  assert conformal.conformal_quantile(scores, 0.5) == 0.6  # k = 6
  assert conformal.conformal_quantile(scores, 0.2) == 0.9  # k = 9
  assert conformal.conformal_quantile(scores, 0.1) == 1.0  # k = 10
  assert conformal.conformal_quantile(scores, 0.05) == math.inf  # k = 11
  assert conformal.conformal_quantile([3.0], 0.5) == 3.0  # k = ceil(1) = 1
  assert conformal.conformal_quantile([3.0], 0.4) == math.inf  # k = 2
  # (n + 1)(1 - alpha) an integer: k is exactly that integer, despite
  # 10 * (1 - 0.7) = 3.0000000000000004 in floating point.
  nine = np.arange(1.0, 10.0)
  assert conformal.conformal_quantile(nine, 0.7) == 3.0
  assert conformal.conformal_quantile(nine, 0.1) == 9.0
  # Ties: the k-th order statistic counts repeated values.
  assert conformal.conformal_quantile([0.2, 0.2, 0.2, 0.9], 0.5) == 0.2


def test_quantile_matches_exact_rational_reference():
  rng = np.random.default_rng(1)
  for n in (1, 2, 5, 9, 19, 24, 99, 100, 301):
    scores = rng.random(n)
    for alpha in (0.01, 0.05, 0.1, 0.15, 0.2, 0.3, 0.44, 0.7, 0.85, 0.95):
      assert conformal.conformal_quantile(scores, alpha) == _brute_quantile(
          list(scores), alpha), (n, alpha)


def test_quantile_is_smallest_score_with_enough_mass():
  rng = np.random.default_rng(2)
  scores = rng.integers(0, 20, size=57) / 20.0
  for alpha in (0.05, 0.1, 0.3):
    q = conformal.conformal_quantile(scores, alpha)
    need = (scores.size + 1) * (1 - alpha)
    assert np.sum(scores <= q) >= need - 1e-9
    assert np.sum(scores < q) < need - 1e-9


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_bad_alpha_raises(alpha):
  probs = _random_probs(np.random.default_rng(0), 10, 3)
  labels = np.zeros(10, np.int64)
  with pytest.raises(ValueError, match="alpha"):
    conformal.conformal_quantile(np.arange(10.0), alpha)
  with pytest.raises(ValueError, match="alpha"):
    conformal.calibrate(probs, labels, "lac", alpha)
  with pytest.raises(ValueError, match="alpha"):
    conformal.conformal_summary(probs, labels, probs, labels, alpha)


def test_bad_inputs_raise():
  probs = _random_probs(np.random.default_rng(0), 4, 3)
  with pytest.raises(ValueError, match="at least one"):
    conformal.conformal_quantile([], 0.1)
  with pytest.raises(ValueError, match="1-D"):
    conformal.conformal_quantile(np.zeros((2, 2)), 0.1)
  with pytest.raises(ValueError, match="method"):
    conformal.calibrate(probs, np.zeros(4, np.int64), "raps", 0.1)
  with pytest.raises(ValueError, match="method"):
    conformal.prediction_sets(probs, 0.5, "topk")
  with pytest.raises(ValueError, match="labels"):
    conformal.lac_scores(probs, np.array([0, 1, 3, 0]))
  with pytest.raises(ValueError, match="labels"):
    conformal.aps_scores(probs, np.zeros(3, np.int64))
  with pytest.raises(ValueError, match="probs"):
    conformal.lac_sets(probs[0], 0.5)
  with pytest.raises(ValueError, match="probs"):
    conformal.aps_sets(probs * np.nan, 0.5)


# -- scores and sets ----------------------------------------------------------

def test_lac_reference():
  probs = np.array([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]])
  np.testing.assert_allclose(conformal.lac_scores(probs, [0, 1]), [0.3, 0.75])
  np.testing.assert_array_equal(
      conformal.lac_sets(probs, 0.75),  # p >= 0.25
      [[True, False, False], [True, True, True]])
  np.testing.assert_array_equal(
      conformal.lac_sets(probs, 0.25),  # p >= 0.75: both empty
      np.zeros((2, 3), bool))
  assert conformal.lac_sets(probs, math.inf).all()


def test_aps_reference_with_ties():
  # Sorted order 1 (0.5), 2 (0.1875), 3 (0.1875, tie after class 2), 0.
  probs = np.array([[0.125, 0.5, 0.1875, 0.1875]])
  scores = [conformal.aps_scores(probs, [y])[0] for y in range(4)]
  assert scores == [1.0, 0.5, 0.6875, 0.875]
  sets = lambda q, **kw: conformal.aps_sets(probs, q, **kw)[0].tolist()
  assert sets(0.4) == [False, False, False, False]
  assert sets(0.5) == [False, True, False, False]
  assert sets(0.6875) == [False, True, True, False]
  assert sets(0.7) == [False, True, True, False]
  assert sets(1.0) == [True] * 4
  assert sets(math.inf) == [True] * 4
  # The inclusive form also keeps the class that crosses qhat.
  assert sets(0.4, include_last=True) == [False, True, False, False]
  assert sets(0.7, include_last=True) == [False, True, True, True]
  assert sets(0.6875, include_last=True) == [False, True, True, False]


def test_aps_every_class_at_qhat_one_despite_rounding():
  # float32 softmax outputs sum to 1 only up to rounding.
  rng = np.random.default_rng(3)
  probs = _softmax(rng.normal(size=(200, 7)) * 3).astype(np.float32)
  assert conformal.aps_sets(probs, 1.0).all()
  assert conformal.prediction_sets(probs, 1.0, "lac").all()


def _all_label_scores(score_fn, probs):
  n, k = probs.shape
  return np.stack([score_fn(probs, np.full(n, y)) for y in range(k)], axis=1)


@pytest.mark.parametrize("method", conformal.METHODS)
def test_set_rule_is_exact_inverse_of_score(method):
  """y in set iff score(x, y) <= qhat, exactly, ties and rounding included."""
  rng = np.random.default_rng(4)
  score_fn = {"lac": conformal.lac_scores, "aps": conformal.aps_scores}[method]
  for probs in (_dyadic_probs(rng, 300, 5), _random_probs(rng, 300, 6),
                _random_probs(rng, 300, 4).astype(np.float32)):
    scores = _all_label_scores(score_fn, probs)
    observed = np.unique(scores)
    qhats = np.concatenate([observed, (observed[1:] + observed[:-1]) / 2,
                            np.nextafter(observed, -np.inf),
                            [0.0, 1.0, math.inf]])
    for q in qhats:
      sets = conformal.prediction_sets(probs, q, method)
      np.testing.assert_array_equal(sets, scores <= q)


@pytest.mark.parametrize("method", conformal.METHODS)
def test_nonempty_sets_contain_the_prediction(method):
  rng = np.random.default_rng(5)
  for probs in (_dyadic_probs(rng, 300, 5), _random_probs(rng, 300, 6)):
    top = np.argmax(probs, axis=1)
    for q in np.linspace(0.0, 1.0, 41):
      sets = conformal.prediction_sets(probs, q, method)
      nonempty = sets.any(axis=1)
      assert sets[np.arange(len(top)), top][nonempty].all()
      # Sets are prefixes of the classes in decreasing probability.
      sorted_sets = np.take_along_axis(
          sets, np.argsort(-probs, axis=1, kind="stable"), axis=1)
      assert np.all(np.diff(sorted_sets.astype(int), axis=1) <= 0)


def test_aps_inclusive_contains_argmax_and_covers_the_exact_sets():
  rng = np.random.default_rng(6)
  probs = _dyadic_probs(rng, 300, 5)
  top = np.argmax(probs, axis=1)
  for q in np.linspace(0.01, 1.0, 34):
    exact = conformal.aps_sets(probs, q)
    inclusive = conformal.aps_sets(probs, q, include_last=True)
    assert inclusive[np.arange(300), top].all()
    assert np.all(inclusive >= exact)
    # At most one extra class: the one that crosses q.
    assert np.all(inclusive.sum(1) - exact.sum(1) <= 1)


@pytest.mark.parametrize("method", conformal.METHODS)
def test_sets_are_nested_in_alpha(method):
  rng = np.random.default_rng(7)
  cal_p, cal_y = _miscalibrated(rng, 400)
  test_p, _ = _miscalibrated(rng, 500)
  previous = None
  for alpha in (0.5, 0.3, 0.2, 0.1, 0.05, 0.01, 0.001):
    qhat = conformal.calibrate(cal_p, cal_y, method, alpha)
    sets = conformal.prediction_sets(test_p, qhat, method)
    if previous is not None:
      assert np.all(sets >= previous), alpha  # smaller alpha: superset
    previous = sets
  assert previous.all()  # alpha = 0.001 < 1 / 401: qhat = inf


# -- coverage -----------------------------------------------------------------

@pytest.mark.parametrize("method", conformal.METHODS)
def test_marginal_coverage_over_random_splits(method):
  """Exchangeable splits: 1 - alpha <= E[coverage] <= 1 - alpha + 1/(n+1)."""
  rng = np.random.default_rng(8)
  probs, labels = _miscalibrated(rng, 2000)
  alpha, n_cal, repeats = 0.1, 500, 200
  # The model is miscalibrated: the naive set "classes until 90% mass" does
  # not cover 90%.
  naive = conformal.aps_scores(probs, labels) <= 1 - alpha
  assert naive.mean() < 1 - alpha - 0.1
  coverages = []
  for _ in range(repeats):
    perm = rng.permutation(len(labels))
    cal, test = perm[:n_cal], perm[n_cal:]
    qhat = conformal.calibrate(probs[cal], labels[cal], method, alpha)
    sets = conformal.prediction_sets(probs[test], qhat, method)
    coverages.append(conformal.evaluate_sets(sets, labels[test])["coverage"])
  coverages = np.array(coverages)
  se = coverages.std(ddof=1) / np.sqrt(repeats)
  lo, hi = 1 - alpha, 1 - alpha + 1 / (n_cal + 1)
  assert lo - 3 * se <= coverages.mean() <= hi + 3 * se
  # Every split: within ~4.5 standard deviations of one split's coverage.
  assert np.all(np.abs(coverages - (1 - alpha)) < 0.07)


@pytest.mark.parametrize("method", conformal.METHODS)
def test_shifted_test_data_breaks_coverage(method):
  """Calibrating on easier data than the test data under-covers badly."""
  rng = np.random.default_rng(9)
  easy_p, easy_y = _miscalibrated(rng, 1000, scale=3.0, true_temperature=0.7)
  hard_p, hard_y = _miscalibrated(rng, 1000, scale=3.0, true_temperature=6.0)
  alpha = 0.1
  qhat = conformal.calibrate(easy_p, easy_y, method, alpha)
  shifted = conformal.evaluate_sets(
      conformal.prediction_sets(hard_p, qhat, method), hard_y)
  assert shifted["coverage"] < 1 - alpha - 0.15
  # Calibrating on the hard distribution itself restores coverage.
  qhat_hard = conformal.calibrate(hard_p[:500], hard_y[:500], method, alpha)
  matched = conformal.evaluate_sets(
      conformal.prediction_sets(hard_p[500:], qhat_hard, method), hard_y[500:])
  assert matched["coverage"] > 1 - alpha - 0.05


# -- evaluation and summary ----------------------------------------------------

def test_evaluate_sets_hand_example():
  sets = np.array([[True, False, True], [False, False, False],
                   [False, True, False], [True, True, True]])
  stats = conformal.evaluate_sets(sets, np.array([2, 0, 0, 1]))
  assert stats == {"coverage": 0.5, "mean_size": 1.5, "empty_fraction": 0.25}
  with pytest.raises(ValueError, match="boolean"):
    conformal.evaluate_sets(sets.astype(int), np.array([2, 0, 0, 1]))
  with pytest.raises(ValueError, match="labels"):
    conformal.evaluate_sets(sets, np.array([2, 0, 0]))


def test_summary_is_json_ready_and_matches_the_parts():
  rng = np.random.default_rng(10)
  val_p, val_y = _miscalibrated(rng, 300)
  test_p, test_y = _miscalibrated(rng, 400)
  summary = conformal.conformal_summary(val_p, val_y, test_p, test_y, 0.2)
  assert set(summary) == set(conformal.METHODS)
  for method, entry in summary.items():
    assert set(entry) == {"qhat", "target_coverage", "coverage", "mean_size",
                          "empty_fraction"}
    qhat = conformal.calibrate(val_p, val_y, method, 0.2)
    assert entry["qhat"] == qhat
    assert entry["target_coverage"] == pytest.approx(0.8)
    assert entry == {"qhat": qhat, "target_coverage": entry["target_coverage"],
                     **conformal.evaluate_sets(conformal.prediction_sets(
                         test_p, qhat, method), test_y)}
  json.dumps(summary, allow_nan=False)
  # Too few calibration points for alpha: qhat is inf, stored as None.
  tiny = conformal.conformal_summary(val_p[:5], val_y[:5], test_p, test_y, 0.1)
  for entry in tiny.values():
    assert entry["qhat"] is None
    assert entry["coverage"] == 1.0 and entry["mean_size"] == 5.0
  json.dumps(tiny, allow_nan=False)
