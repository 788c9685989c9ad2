"""The final evaluation's scoring: one pass per split and temperature."""

import numpy as np
import pytest

from ols_jax import evaluation
from ols_jax import selective


def _numpy_reference(logits, labels, temperature, num_bins=15):
  """Top-label metrics of softmax(logits / T), written out in NumPy (float64)."""
  z = logits.astype(np.float64) / temperature
  z -= z.max(1, keepdims=True)
  p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
  conf, pred = p.max(1), p.argmax(1)
  ok = (pred == labels).astype(np.float64)
  n = len(labels)
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  ece = mce = 0.0
  for b in range(num_bins):
    hi_ok = conf <= edges[b + 1] if b == num_bins - 1 else conf < edges[b + 1]
    sel = (conf >= edges[b]) & hi_ok
    if sel.any():
      gap = abs(ok[sel].mean() - conf[sel].mean())
      ece += sel.sum() / n * gap
      mce = max(mce, gap)
  onehot = np.eye(logits.shape[1])[labels]
  return {"top1_error": 1 - ok.mean(), "accuracy": ok.mean(), "ece": ece, "mce": mce,
          "nll": -np.log(p[np.arange(n), labels]).mean(),
          "brier": ((p - onehot) ** 2).sum(1).mean(), "mean_confidence": conf.mean(),
          "calibration_gap": conf.mean() - ok.mean(), "count": float(n)}


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_score_matches_a_numpy_transcription(temperature):
  rng = np.random.default_rng(0)
  logits = (rng.normal(size=(300, 4)) * 3).astype(np.float32)
  labels = np.where(rng.random(300) < 0.6, np.argmax(logits, 1), rng.integers(0, 4, 300))
  got = evaluation.score(logits, labels, num_bins=15, temperature=temperature)
  for key, value in _numpy_reference(logits, labels, temperature).items():
    assert got.metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert isinstance(got.metrics[key], float)
  # The curves come from the same sums and confidences as the metrics.
  assert got.reliability["ece"] == got.metrics["ece"]
  assert got.reliability["mce"] == got.metrics["mce"]
  assert selective.curve_area(got.risk_coverage) == got.metrics["aurc"]
  conf, ok = selective.confidence_and_correct(selective.probabilities(logits, temperature),
                                              labels)
  np.testing.assert_array_equal(got.confidence, conf)
  np.testing.assert_array_equal(got.correct, ok)


def test_temperature_divides_the_logits_and_keeps_the_argmax():
  rng = np.random.default_rng(1)
  logits = (rng.normal(size=(64, 3)) * 2).astype(np.float32)
  labels = rng.integers(0, 3, 64)
  scaled = evaluation.score(logits, labels, num_bins=10, temperature=2.0)
  divided = evaluation.score(logits / 2.0, labels, num_bins=10)
  for key in ("ece", "nll", "brier", "mean_confidence", "top1_error"):
    assert scaled.metrics[key] == pytest.approx(divided.metrics[key], rel=1e-5), key
  raw = evaluation.score(logits, labels, num_bins=10)
  assert raw.metrics["top1_error"] == scaled.metrics["top1_error"]
  assert raw.metrics["mean_confidence"] > scaled.metrics["mean_confidence"]
  assert raw.metrics["count"] == 64.0


def test_evals_default_plus_switches_and_errors():
  from ols_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  c = config_lib.base_config()
  assert evaluation.evals_of(c) == evaluation.DEFAULT_EVALS
  c.evals, c.shift_eval, c.cross_source = "ood,conformal", True, "brain_tumor_44"
  # Registry order, whatever the config's order; the switches add their evaluators.
  assert evaluation.evals_of(c) == ("conformal", "ood", "cross_source", "shift")
  c.evals = "conformal,nope"
  with pytest.raises(ValueError, match=r"unknown evaluator\(s\) \['nope'\]"):
    evaluation.evals_of(c)


def _outputs(rng, n, k=3, d=4):
  return {"logits": rng.normal(size=(n, k)).astype(np.float32),
          "embedding": rng.normal(size=(n, d)).astype(np.float32),
          "label": rng.integers(0, k, n)}


def test_sections_are_pure_functions_of_the_outputs():
  rng = np.random.default_rng(0)
  train, val, test, far = (_outputs(rng, n) for n in (60, 40, 40, 30))
  summary, saved, fit = evaluation.ood_section(train, val, test, {"far": far}, num_classes=3)
  again, _, _ = evaluation.ood_section(train, val, test, {"far": far}, num_classes=3)
  assert summary == again and summary["set_sizes"] == {"far": 30}
  # The val thresholds keep at least OOD_TPR of val for every score.
  assert all(v <= 1 - evaluation.OOD_TPR + 1e-9 for v in summary["val_flagged"].values())
  assert sorted(saved) == sorted([f"mahalanobis_{k}" for k in fit] +
                                 [f"threshold_{k}" for k in summary["thresholds"]])
  cross = evaluation.CrossSource("src", "a -> b", np.zeros((30, 2, 2), np.uint8),
                                 far["label"], 50)
  with_ood = evaluation.cross_source_section(cross, far, val, 1.5, num_bins=10, alpha=0.1,
                                             thresholds=summary["thresholds"], fit=fit)
  without = evaluation.cross_source_section(cross, far, val, 1.5, num_bins=10, alpha=0.1,
                                            thresholds=None, fit=None)
  assert "ood_flagged" in with_ood and "ood_flagged" not in without
  assert with_ood["raw"] == without["raw"] and with_ood["count"] == 30


@pytest.mark.slow
def test_a_run_with_fewer_evaluators_skips_their_passes(tmp_path):
  from ols_jax import train  # pylint: disable=import-outside-toplevel
  from experiments.configs import smoke  # pylint: disable=import-outside-toplevel
  config = smoke.get_config()
  config.num_epochs, config.progress, config.figures, config.tensorboard = 1, False, False, False
  config.evals = "conformal"
  seen = []
  real = evaluation.evaluate

  def counting(dp, state, source, cfg, **kw):
    seen.append(len(source))
    return real(dp, state, source, cfg, **kw)

  evaluation.evaluate = counting
  try:
    _, summary = train.train_and_evaluate(config, tmp_path / "run")
  finally:
    evaluation.evaluate = real
  assert summary["evals"] == ["conformal"]
  assert "ood" not in summary and "selective" not in summary and "embedding" not in summary
  assert not (tmp_path / "run" / "ood_fit.npz").exists()
  assert summary["conformal"]["alpha"] == config.conformal_alpha
  # The training split never went through the final evaluation.
  final_passes = seen[-2:]
  assert summary["split_sizes"]["train"] not in final_passes
