"""OOD scores (MSP, energy, Mahalanobis), thresholds, AUROC and FPR."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ols_jax import ood


# -- MSP and energy ------------------------------------------------------------

def test_msp_and_energy_match_numpy_references():
  z = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [-1.0, 4.0, 0.5]])
  p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
  np.testing.assert_allclose(ood.msp(z), p.max(axis=1), rtol=1e-14)
  np.testing.assert_allclose(ood.energy(z), np.log(np.exp(z).sum(axis=1)),
                             rtol=1e-14)
  np.testing.assert_allclose(ood.energy(z, temperature=2.0),
                             2.0 * np.log(np.exp(z / 2.0).sum(axis=1)),
                             rtol=1e-14)
  assert ood.msp(z)[1] == pytest.approx(1 / 3)
  assert ood.energy(z)[1] == pytest.approx(np.log(3.0))


def test_msp_and_energy_invariances():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(50, 7)) * 3
  for c in (-7.5, 1.0, 1000.0):
    np.testing.assert_allclose(ood.msp(z + c), ood.msp(z), rtol=1e-9)
    np.testing.assert_allclose(ood.energy(z + c), ood.energy(z) + c,
                               rtol=1e-12, atol=1e-9)
  # energy(z, T) = T * energy(z / T, 1); T -> 0 tends to max(z).
  np.testing.assert_allclose(ood.energy(z, 3.0), 3.0 * ood.energy(z / 3.0),
                             rtol=1e-12)
  np.testing.assert_allclose(ood.energy(z, 1e-3), z.max(axis=1), atol=1e-2)
  # Extreme logits stay finite.
  big = np.array([[1000.0, 0.0, -1000.0], [-1e4, -1e4, -1e4]])
  assert np.all(np.isfinite(ood.msp(big)))
  np.testing.assert_allclose(ood.msp(big), [1.0, 1 / 3])
  np.testing.assert_allclose(ood.energy(big), [1000.0, -1e4 + np.log(3.0)])


def test_logits_validation():
  with pytest.raises(ValueError, match=r"logits: expected an \(N, K\)"):
    ood.msp(np.zeros(3))
  with pytest.raises(ValueError, match=r"logits: expected an \(N, K\)"):
    ood.energy(np.zeros((2, 3, 4)))
  with pytest.raises(ValueError, match="finite"):
    ood.msp(np.array([[0.0, np.nan]]))
  with pytest.raises(ValueError, match="temperature"):
    ood.energy(np.zeros((2, 3)), temperature=0.0)


# -- Mahalanobis ---------------------------------------------------------------

def _clusters(rng, n_per_class=200, k=3, d=4):
  centres = rng.normal(size=(k, d)) * 6
  mixing = rng.normal(size=(d, d)) * 0.5 + np.eye(d)
  labels = np.repeat(np.arange(k), n_per_class)
  x = centres[labels] + rng.normal(size=(labels.size, d)) @ mixing
  return x, labels, centres, mixing


def _loop_reference(x_train, y_train, num_classes, x, ridge=1e-6):
  """Explicit per-sample, per-class loops of the documented definitions."""
  n, d = x_train.shape
  means = np.zeros((num_classes, d))
  present = np.zeros(num_classes, bool)
  for c in range(num_classes):
    members = [x_train[i] for i in range(n) if y_train[i] == c]
    if members:
      present[c] = True
      means[c] = np.sum(members, axis=0) / len(members)
  cov = np.zeros((d, d))
  for i in range(n):
    diff = x_train[i] - means[y_train[i]]
    cov += np.outer(diff, diff)
  cov /= n
  cov += ridge * np.trace(cov) / d * np.eye(d)
  precision = np.linalg.inv(cov)
  scores = []
  for row in x:
    dists = [(row - means[c]) @ precision @ (row - means[c])
             for c in range(num_classes) if present[c]]
    scores.append(-min(dists))
  return means, precision, present, np.array(scores)


def test_mahalanobis_equals_loop_reference():
  rng = np.random.default_rng(1)
  x_train = rng.normal(size=(13, 3))
  y_train = np.array([0, 2, 2, 0, 4, 2, 0, 4, 4, 0, 2, 4, 0])  # 1, 3 absent
  x = rng.normal(size=(9, 3)) * 2
  means, precision, present, scores = _loop_reference(x_train, y_train, 5, x)
  fit = ood.fit_mahalanobis(x_train, y_train, 5)
  assert set(fit) == set(ood.MAHALANOBIS_KEYS)
  np.testing.assert_allclose(fit["means"], means, rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(fit["precision"], precision, rtol=1e-9)
  np.testing.assert_array_equal(fit["class_present"], present)
  assert np.all(np.isfinite(fit["means"]))
  np.testing.assert_allclose(ood.mahalanobis_score(x, fit), scores, rtol=1e-9)
  # Absent classes change nothing: same scores with only the present ones.
  relabel = {0: 0, 2: 1, 4: 2}
  compact = ood.fit_mahalanobis(
      x_train, np.array([relabel[c] for c in y_train]), 3)
  np.testing.assert_allclose(ood.mahalanobis_score(x, compact), scores,
                             rtol=1e-9)
  # A training point at its own class mean scores 0, the maximum.
  at_mean = ood.mahalanobis_score(fit["means"][present], fit)
  np.testing.assert_allclose(at_mean, 0.0, atol=1e-10)


def test_mahalanobis_blockwise_equals_unblocked_and_survives_savez():
  rng = np.random.default_rng(2)
  x_train, y_train, _, _ = _clusters(rng, 50)
  fit = ood.fit_mahalanobis(x_train, y_train, 3)
  x = rng.normal(size=(1001, 4)) * 5
  full = ood.mahalanobis_score(x, fit, block_size=10**6)
  for block in (1, 7, 256, 1000, 1001):
    np.testing.assert_allclose(ood.mahalanobis_score(x, fit, block_size=block),
                               full, rtol=1e-12, atol=1e-12)
  buffer = io.BytesIO()
  np.savez(buffer, **fit)
  buffer.seek(0)
  with np.load(buffer) as loaded:
    np.testing.assert_array_equal(ood.mahalanobis_score(x, dict(loaded)), full)


def test_mahalanobis_separates_far_points():
  rng = np.random.default_rng(3)
  x_train, y_train, centres, mixing = _clusters(rng)
  fit = ood.fit_mahalanobis(x_train, y_train, 3)
  test_labels = np.repeat(np.arange(3), 100)  # fresh in-distribution points
  x_in = centres[test_labels] + rng.normal(size=(300, 4)) @ mixing
  # Far: around points 25 units away from every centre.
  x_out = (rng.normal(size=(300, 4)) @ mixing
           + centres.mean(axis=0) + 25 * rng.choice([-1, 1], size=(300, 4)))
  s_in, s_out = ood.mahalanobis_score(x_in, fit), ood.mahalanobis_score(
      x_out, fit)
  assert np.all(s_in <= 0) and np.all(s_out <= 0)
  assert np.median(s_in) > np.median(s_out)
  assert ood.auroc(s_in, s_out) > 0.99
  assert ood.fpr_at_tpr(s_in, s_out) < 0.05


def test_mahalanobis_validation():
  x = np.zeros((4, 3))
  with pytest.raises(ValueError, match=r"embeddings: expected an \(N, D\)"):
    ood.fit_mahalanobis(np.zeros(4), np.zeros(4, np.int64), 2)
  with pytest.raises(ValueError, match="labels: expected shape"):
    ood.fit_mahalanobis(x, np.zeros(3, np.int64), 2)
  with pytest.raises(ValueError, match="labels: expected values"):
    ood.fit_mahalanobis(x, np.array([0, 1, 2, 0]), 2)
  with pytest.raises(ValueError, match="at least one"):
    ood.fit_mahalanobis(np.zeros((0, 3)), np.zeros(0, np.int64), 2)
  fit = ood.fit_mahalanobis(np.eye(3)[[0, 1, 2, 0]], np.array([0, 1, 1, 0]), 2)
  with pytest.raises(ValueError, match="dimension D = 3"):
    ood.mahalanobis_score(np.zeros((5, 4)), fit)
  with pytest.raises(ValueError, match="missing"):
    ood.mahalanobis_score(x, {"means": fit["means"]})
  with pytest.raises(ValueError, match="block_size"):
    ood.mahalanobis_score(x, fit, block_size=0)
  # Degenerate data (every point at its class mean) still fits: ridge only.
  flat = ood.fit_mahalanobis(np.ones((4, 3)), np.zeros(4, np.int64), 1)
  assert np.all(np.isfinite(flat["precision"]))


# -- thresholds, AUROC, FPR ----------------------------------------------------

def test_threshold_at_tpr_hand_examples():
  scores = np.random.default_rng(4).permutation(np.arange(1.0, 21.0))
  assert ood.threshold_at_tpr(scores, 0.95) == 2.0  # 19 of 20 kept
  assert ood.threshold_at_tpr(scores, 1.0) == 1.0
  assert ood.threshold_at_tpr(scores, 0.5) == 11.0  # 10 of 20 kept
  assert ood.threshold_at_tpr(scores, 0.51) == 10.0  # 11 of 20 kept
  assert ood.threshold_at_tpr([5.0], 0.95) == 5.0
  # Ties: all tied scores pass together.
  assert ood.threshold_at_tpr([1.0, 1.0, 1.0, 2.0], 0.5) == 1.0
  with pytest.raises(ValueError, match="tpr"):
    ood.threshold_at_tpr(scores, 0.0)
  with pytest.raises(ValueError, match="tpr"):
    ood.threshold_at_tpr(scores, 1.01)


def test_threshold_keeps_the_tpr_and_is_the_largest_such():
  rng = np.random.default_rng(5)
  for n in (1, 3, 19, 20, 21, 100, 1003):
    scores = np.round(rng.normal(size=n), 1)  # with ties
    for tpr in (0.5, 0.9, 0.95, 0.99, 1.0):
      t = ood.threshold_at_tpr(scores, tpr)
      assert np.mean(scores >= t) >= tpr - 1e-12
      above = scores[scores > t]
      if above.size:
        assert np.mean(scores >= above.min()) < tpr


def test_fpr_hand_example():
  in_scores = np.arange(1.0, 21.0)  # threshold 2 at 95% TPR
  out_scores = np.array([0.0, 1.5, 2.0, 3.0, 25.0])
  assert ood.fpr_at_tpr(in_scores, out_scores) == 0.6  # 2, 3, 25 pass
  assert ood.fpr_at_tpr(in_scores, out_scores, tpr=1.0) == 0.8
  assert ood.fpr_at_tpr(in_scores, np.array([-5.0, 0.0])) == 0.0


def test_auroc_matches_sklearn_with_ties():
  rng = np.random.default_rng(6)
  for _ in range(20):
    n_in, n_out = rng.integers(1, 60, size=2)
    s_in = rng.integers(0, 6, size=n_in).astype(float)
    s_out = rng.integers(0, 5, size=n_out).astype(float)
    expected = roc_auc_score(np.r_[np.ones(n_in), np.zeros(n_out)],
                             np.r_[s_in, s_out])
    assert ood.auroc(s_in, s_out) == pytest.approx(expected, abs=1e-12)
  assert ood.auroc([2.0, 3.0], [0.0, 1.0]) == 1.0
  assert ood.auroc([0.0, 1.0], [2.0, 3.0]) == 0.0
  assert ood.auroc([1.0, 1.0], [1.0]) == 0.5
  assert ood.auroc([1.0, 2.0], [1.0]) == 0.75


def test_score_validation():
  with pytest.raises(ValueError, match="in_scores: expected a non-empty 1-D"):
    ood.auroc(np.zeros((2, 2)), np.zeros(3))
  with pytest.raises(ValueError, match="out_scores: expected a non-empty 1-D"):
    ood.auroc(np.zeros(3), np.zeros(0))
  with pytest.raises(ValueError, match="out_scores"):
    ood.fpr_at_tpr(np.zeros(3), np.zeros((3, 1)))
  with pytest.raises(ValueError, match="finite"):
    ood.threshold_at_tpr(np.array([0.0, np.nan]))


def test_ood_summary():
  rng = np.random.default_rng(7)
  logits_in = rng.normal(size=(200, 4)) * 4 + 2.0
  logits_out = rng.normal(size=(150, 4)) * 0.5
  in_scores = {"msp": ood.msp(logits_in), "energy": ood.energy(logits_in)}
  out_sets = {"noise": {"msp": ood.msp(logits_out),
                        "energy": ood.energy(logits_out)},
              "copy": {"msp": ood.msp(logits_in[:50])}}
  thresholds = {name: ood.threshold_at_tpr(s) for name, s in in_scores.items()}
  summary = ood.ood_summary(in_scores, out_sets, thresholds)
  assert set(summary) == {"noise", "copy"}
  assert set(summary["noise"]) == {"msp", "energy"}
  assert set(summary["copy"]) == {"msp"}
  entry = summary["noise"]["energy"]
  assert entry == {
      "auroc": ood.auroc(in_scores["energy"], out_sets["noise"]["energy"]),
      "fpr_at_95tpr": ood.fpr_at_tpr(in_scores["energy"],
                                     out_sets["noise"]["energy"]),
      "flagged_fraction": float(np.mean(out_sets["noise"]["energy"]
                                        < thresholds["energy"]))}
  assert entry["auroc"] > 0.8
  # Flagged fraction at the 95% TPR threshold of the same scores is 1 - FPR.
  assert entry["flagged_fraction"] == pytest.approx(1 - entry["fpr_at_95tpr"])
  json.dumps(summary, allow_nan=False)
  with pytest.raises(ValueError, match="thresholds: no 'energy'"):
    ood.ood_summary(in_scores, out_sets, {"msp": 0.5})
  with pytest.raises(ValueError, match="in_scores: no 'mahalanobis'"):
    ood.ood_summary(in_scores, {"far": {"mahalanobis": np.zeros(3)}},
                    thresholds)
