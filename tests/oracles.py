"""Test oracles: plain NumPy / per-batch recomputations the library is checked against."""

from typing import Optional

import jax
import numpy as np

from ols_jax import metrics as metrics_lib
from ols_jax import ols
from ols_jax.metrics import _check_probs  # the library's own input check
from ols_jax.metrics import bin_edges


def numpy_reference_metrics(probs: np.ndarray, labels: np.ndarray,
                            num_bins: int = 15) -> dict[str, float]:
  """The :func:`finalize` metrics computed directly from probabilities.

  A straightforward NumPy implementation used as a test oracle; the bin
  assignment uses the same float32 edges as :func:`eval_sums`.

  Args:
    probs: ``(N, K)`` probabilities (rows sum to one).
    labels: ``(N,)`` integer labels.
    num_bins: number of equal-width bins.

  Returns:
    A dict with the keys of :func:`finalize`.
  """
  probs32 = np.asarray(probs, np.float32)
  probs, labels = _check_probs(probs, labels)
  n, num_classes = probs.shape
  if n == 0:
    out = {k: float("nan") for k in metrics_lib.FINAL_KEYS}
    out["count"] = 0.0
    return out
  edges = bin_edges(num_bins)
  rows = np.arange(n)
  conf32 = probs32.max(axis=1)
  conf = conf32.astype(np.float64)
  pred = probs.argmax(axis=1)
  hit = (pred == labels).astype(np.float64)
  k = min(5, num_classes)
  topk = np.argsort(-probs32, axis=1, kind="stable")[:, :k]
  hit5 = np.any(topk == labels[:, None], axis=1)
  p_true = probs[rows, labels]
  onehot = np.eye(num_classes)[labels]

  def calib(scores32, scores, targets):
    """ECE-style sum of |acc - conf| * n_b and the max per-bin gap."""
    idx = np.searchsorted(edges, scores32, side="right")
    total, worst = 0.0, float("nan")
    for b in range(num_bins):
      sel = idx == b
      if not np.any(sel):
        continue
      gap = abs(np.mean(targets[sel]) - np.mean(scores[sel]))
      total += gap * np.sum(sel)
      worst = gap if np.isnan(worst) else max(worst, gap)
    return total, worst

  ece_sum, mce = calib(conf32, conf, hit)
  cw_sum = 0.0
  for c in range(num_classes):
    cw_sum += calib(probs32[:, c], probs[:, c],
                    (labels == c).astype(np.float64))[0]
  accuracy = float(np.mean(hit))
  mean_conf = float(np.mean(conf))
  return {
      "top1_error": 1.0 - accuracy,
      "top5_error": 1.0 - float(np.mean(hit5)),
      "nll": float(np.mean(-np.log(np.maximum(p_true, 1e-300)))),
      "brier": float(np.mean(np.sum((probs - onehot) ** 2, axis=1))),
      "ece": ece_sum / n,
      "mce": float(mce),
      "classwise_ece": cw_sum / (n * num_classes),
      "mean_confidence": mean_conf,
      "accuracy": accuracy,
      "calibration_gap": mean_conf - accuracy,
      "count": float(n),
  }


def batch_statistics(logits: jax.Array, labels: jax.Array, num_classes: int,
                     mask: Optional[jax.Array] = None
                     ) -> tuple[jax.Array, jax.Array]:
  """Per-class sums of correct softmax vectors and counts for one batch.

  Args:
    logits: ``(B, K)`` logits of the training forward pass (any float dtype).
    labels: ``(B,)`` integer true classes.
    num_classes: ``K``.
    mask: optional ``(B,)`` validity mask (1 = real sample, 0 = padding).

  Returns:
    ``(prob_sums, counts)``: ``(K, K)`` and ``(K,)`` float32 sums over the
    valid samples whose argmax equals their label (ties: first index wins).
  """
  probs, segments, weight = ols._correct_rows(logits, labels, num_classes, mask)
  prob_sums = jax.ops.segment_sum(probs * weight[:, None], segments,
                                  num_segments=num_classes + 1)[:num_classes]
  counts = jax.ops.segment_sum(weight, segments,
                               num_segments=num_classes + 1)[:num_classes]
  return prob_sums, counts
