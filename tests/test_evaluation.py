"""The final evaluation's scoring: one pass per split and temperature."""

import jax.numpy as jnp
import numpy as np
import pytest

from ols_jax import evaluation
from ols_jax import metrics
from ols_jax import selective


def test_score_gives_every_metric_and_curve_of_one_softmax():
  rng = np.random.default_rng(0)
  logits = (rng.normal(size=(300, 4)) * 3).astype(np.float32)
  labels = np.where(rng.random(300) < 0.6, np.argmax(logits, 1), rng.integers(0, 4, 300))
  got = evaluation.score(logits, labels, num_bins=15, temperature=2.0)

  want = metrics.finalize(metrics.eval_sums(jnp.asarray(logits / 2.0), jnp.asarray(labels),
                                            None, num_bins=15))
  probs = selective.probabilities(logits, 2.0)
  want.update(metrics.host_metrics(probs, labels, num_bins=15))
  conf, ok = selective.confidence_and_correct(probs, labels)
  want["aurc"] = selective.aurc(conf, ok)
  assert sorted(got.metrics) == sorted(want)
  for key, value in want.items():
    assert got.metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key
    assert isinstance(got.metrics[key], float)
  np.testing.assert_array_equal(got.confidence, conf)
  np.testing.assert_array_equal(got.correct, ok)
  # The curves come from the same sums and confidences as the metrics.
  assert got.reliability["ece"] == got.metrics["ece"]
  assert got.reliability["mce"] == got.metrics["mce"]
  assert selective.curve_area(got.risk_coverage) == got.metrics["aurc"]


def test_score_at_temperature_one_is_the_raw_logits():
  rng = np.random.default_rng(1)
  logits = (rng.normal(size=(64, 3)) * 2).astype(np.float32)
  labels = rng.integers(0, 3, 64)
  raw = evaluation.score(logits, labels, num_bins=10)
  same = evaluation.score(logits, labels, num_bins=10, temperature=1.0)
  assert raw.metrics == same.metrics
  assert raw.metrics["count"] == 64.0
