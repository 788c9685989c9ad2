"""Selective prediction: risk-coverage curve, AURC and the abstention threshold."""

import itertools

from hypothesis import given, settings, strategies as st
import numpy as np
import pytest

from ols_jax import config as config_lib
from ols_jax import plots
from ols_jax import selective


def _reference_aurc(confidence, correct):
  """NumPy reference for distinct confidences: mean risk of the top-k, k=1..N."""
  order = np.argsort(-np.asarray(confidence))
  errors = 1.0 - np.asarray(correct, np.float64)[order]
  k = np.arange(1, len(errors) + 1)
  return float(np.mean(np.cumsum(errors) / k))


def test_aurc_matches_numpy_reference():
  rng = np.random.default_rng(0)
  for n in (1, 2, 7, 100, 1000):
    conf = rng.permutation(n) / n + rng.uniform(0, 1e-3)  # distinct values
    correct = rng.random(n) < 0.7
    assert selective.aurc(conf, correct) == pytest.approx(
        _reference_aurc(conf, correct), abs=1e-12)


def test_curve_is_the_expected_risk_over_tie_orders():
  conf = np.array([0.9, 0.7, 0.7, 0.7, 0.5, 0.5])
  correct = np.array([True, False, True, True, False, True])
  curve = selective.risk_coverage_curve(conf, correct)
  perms = [p for p in itertools.permutations(range(6))
           if np.all(np.diff(conf[list(p)]) <= 0)]  # every sort of the ties
  risks = [np.cumsum(~correct[list(p)]) / np.arange(1, 7) for p in perms]
  np.testing.assert_allclose(curve["risk"], np.mean(risks, axis=0), atol=1e-12)
  np.testing.assert_allclose(curve["coverage"], np.arange(1, 7) / 6)
  # Independent of the input order.
  shuffled = np.random.default_rng(1).permutation(6)
  assert selective.aurc(conf[shuffled], correct[shuffled]) == pytest.approx(
      selective.aurc(conf, correct), abs=1e-15)


def test_aurc_bounds():
  conf = np.linspace(1.0, 0.0, 10)
  perfect = np.arange(10) < 6  # right answers first
  worst = ~(np.arange(10) < 4)  # wrong answers first
  assert selective.aurc(conf, np.ones(10, bool)) == 0.0
  assert selective.aurc(conf, np.zeros(10, bool)) == 1.0
  assert selective.aurc(conf, perfect) < selective.aurc(conf, worst)
  # The optimal AURC at 60% accuracy (Geifman et al. 2019): sum over the
  # last 4 positions of (k - 6) / k, divided by N.
  optimal = sum((k - 6) / k for k in range(7, 11)) / 10
  assert selective.aurc(conf, perfect) == pytest.approx(optimal)


def _brute_threshold(conf, correct, target):
  candidates = sorted(set(conf.tolist()) | {0.0})
  for t in candidates:  # lowest first
    accept = conf >= t
    if accept.any() and correct[accept].mean() >= target - 1e-12:
      return 0.0 if accept.all() else t
  return selective.ABSTAIN_ALL


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.booleans()), min_size=1, max_size=40),
       st.sampled_from([0.5, 0.8, 0.9, 0.95, 1.0]))
def test_threshold_is_the_lowest_that_reaches_the_target(pairs, target):
  conf = np.array([c / 20 for c, _ in pairs])
  correct = np.array([ok for _, ok in pairs])
  t = selective.select_threshold(conf, correct, target)
  assert t == _brute_threshold(conf, correct, target)
  coverage, accuracy = selective.accepted_stats(conf, correct, t)
  if t > 1.0:
    assert coverage == 0.0 and accuracy is None
  else:
    assert accuracy >= target - 1e-12 and coverage > 0


def test_threshold_edge_cases():
  conf = np.array([0.9, 0.8, 0.6])
  assert selective.select_threshold(conf, np.array([True] * 3), 0.95) == 0.0
  assert selective.select_threshold(conf, np.array([False] * 3), 0.5) == selective.ABSTAIN_ALL
  assert selective.select_threshold(conf, np.array([True, True, False]), 0.95) == 0.8
  assert selective.ABSTAIN_ALL > 1.0 and not np.float32(1.0) >= selective.ABSTAIN_ALL
  with pytest.raises(ValueError, match="target_accuracy"):
    selective.select_threshold(conf, conf > 0.7, 0.0)
  with pytest.raises(ValueError, match="no samples"):
    selective.aurc(np.zeros(0), np.zeros(0, bool))


def test_abstention_threshold_is_chosen_on_val_and_applied_to_test():
  rng = np.random.default_rng(0)
  val_logits = rng.normal(size=(300, 4)) * 3
  val_labels = np.where(rng.random(300) < 0.7, np.argmax(val_logits, 1), rng.integers(0, 4, 300))
  test_logits = rng.normal(size=(200, 4)) * 3
  test_labels = rng.integers(0, 4, 200)
  conf, ok = selective.confidence_and_correct(
      selective.probabilities(val_logits, 2.0), val_labels)
  test_conf, test_ok = selective.confidence_and_correct(
      selective.probabilities(test_logits, 2.0), test_labels)
  sel = selective.abstention(conf, ok, test_conf, test_ok, temperature=2.0,
                             target_accuracy=0.9)
  assert sel["threshold"] == selective.select_threshold(conf, ok, 0.9)
  assert sel["val_accuracy"] >= 0.9 and sel["temperature"] == 2.0
  assert (sel["val_coverage"], sel["val_accuracy"]) == selective.accepted_stats(
      conf, ok, sel["threshold"])
  assert (sel["test_coverage"], sel["test_accuracy"]) == selective.accepted_stats(
      test_conf, test_ok, sel["threshold"])
  raw_conf, raw_ok = selective.confidence_and_correct(
      selective.probabilities(test_logits), test_labels)
  area = selective.curve_area(selective.risk_coverage_curve(raw_conf, raw_ok))
  assert area == selective.aurc(raw_conf, raw_ok)
  assert area == pytest.approx(_reference_aurc(raw_conf, raw_ok))


def test_risk_coverage_figure(tmp_path):
  rng = np.random.default_rng(0)
  conf, correct = rng.random(50), rng.random(50) < 0.6
  path = plots.risk_coverage({"raw": selective.risk_coverage_curve(conf, correct)},
                             tmp_path / "rc.png", threshold_coverage=0.4)
  assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  assert [p.name for p in tmp_path.iterdir()] == ["rc.png"]  # no temporary left


def test_new_config_fields_default_for_older_runs():
  current = config_lib.base_config().to_dict()
  saved = {k: v for k, v in current.items() if k not in ("target_accuracy", "tensorboard")}
  assert config_lib.result_affecting_differences(saved, current) == []
  changed = dict(current, target_accuracy=0.9)
  assert config_lib.result_affecting_differences(saved, changed) == ["target_accuracy"]
  assert config_lib.result_affecting_differences(
      current, dict(current, tensorboard=False)) == []
  bad = config_lib.base_config()
  bad.target_accuracy = 1.5
  with pytest.raises(config_lib.ConfigError, match="config.target_accuracy"):
    config_lib.validate(bad)
