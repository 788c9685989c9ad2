"""Classification and calibration metrics.

On device, :func:`eval_sums` turns one batch into plain *sums* (counts, summed
losses, per-bin confidence and accuracy). Sums of several batches or devices
can be added (``jax.lax.psum`` inside ``pmap``, :func:`merge_sums` on the
host), and :func:`finalize` turns the total into metrics on the host.

Binning: ``num_bins`` equal-width bins on ``[0, 1]``; bin ``b`` is
``[b / B, (b + 1) / B)`` except the last one, which is closed
``[(B - 1) / B, 1]``. A value exactly on an interior edge goes to the upper
bin. The edges are float32 (see :func:`bin_edges`).

:func:`host_metrics` gives the metrics that need every example at once
(adaptive ECE, AUROC). The tests check :func:`finalize` against a NumPy
oracle that recomputes every metric from probabilities (``tests/oracles.py``).

References:
  Guo et al., "On Calibration of Modern Neural Networks", ICML 2017.
  Nixon et al., "Measuring Calibration in Deep Learning", CVPR Workshops 2019.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ols_jax import ops

SUM_KEYS = ("count", "correct1", "correct5", "nll", "brier", "conf_sum",
            "bin_count", "bin_conf", "bin_correct",
            "cw_count", "cw_conf", "cw_correct")

FINAL_KEYS = ("top1_error", "top5_error", "nll", "brier", "ece", "mce",
              "classwise_ece", "mean_confidence", "accuracy",
              "calibration_gap", "count")


def bin_edges(num_bins: int = 15) -> np.ndarray:
  """The ``num_bins - 1`` interior bin edges ``b / num_bins`` as float32."""
  if num_bins < 1:
    raise ValueError(f"num_bins: expected >= 1, got {num_bins!r}")
  return (np.arange(1, num_bins, dtype=np.float64) / num_bins).astype(np.float32)


def bin_indices(values: jax.Array, num_bins: int = 15) -> jax.Array:
  """Equal-width bin index of each value in ``[0, 1]`` (jit-able).

  Args:
    values: float array of probabilities.
    num_bins: number of bins ``B``.

  Returns:
    int32 array of the same shape with entries in ``[0, B - 1]``; bins are
    ``[lo, hi)`` and the last bin is closed.
  """
  edges = jnp.asarray(bin_edges(num_bins))
  values = jnp.asarray(values, jnp.float32)
  return jnp.sum(values[..., None] >= edges, axis=-1, dtype=jnp.int32)


def eval_sums(logits: jax.Array, labels: jax.Array,
              mask: Optional[jax.Array] = None,
              num_bins: int = 15) -> dict[str, jax.Array]:
  """Additive float32 evaluation statistics of one batch (jit-able).

  Args:
    logits: ``(N, K)`` logits, any float dtype; the softmax is float32.
    labels: ``(N,)`` integer labels (any value on padded rows).
    mask: optional ``(N,)`` validity mask (1 / True = real sample); padded
      samples contribute nothing.
    num_bins: number of equal-width confidence bins (static).

  Returns:
    A dict of float32 sums: scalars ``count``, ``correct1``, ``correct5``
    (top-min(5, K)), ``nll``, ``brier``, ``conf_sum``; top-label bins
    ``bin_count``, ``bin_conf``, ``bin_correct`` of shape ``(num_bins,)``; and
    classwise bins ``cw_count``, ``cw_conf``, ``cw_correct`` of shape
    ``(K, num_bins)``.

  References:
    Guo et al., ICML 2017 (ECE); Nixon et al., CVPR-W 2019 (classwise ECE).
  """
  if logits.ndim != 2 or labels.ndim != 1:
    raise ValueError(f"expected logits (N, K) and labels (N,), got "
                     f"{logits.shape} and {labels.shape}")
  num_classes = logits.shape[-1]
  logits = logits.astype(jnp.float32)
  weight = ops.valid_mask(labels.shape, mask)
  valid = weight > 0
  labels = jnp.clip(labels.astype(jnp.int32), 0, num_classes - 1)

  probs = jax.nn.softmax(logits, axis=-1)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)

  conf = jnp.max(probs, axis=-1)
  pred = jnp.argmax(probs, axis=-1)
  correct1 = (pred == labels).astype(jnp.float32)
  _, top_idx = jax.lax.top_k(probs, min(5, num_classes))
  correct5 = jnp.any(top_idx == labels[:, None], axis=-1).astype(jnp.float32)
  nll = ops.hard_cross_entropy(log_probs, labels)
  brier = jnp.sum(jnp.square(probs - onehot), axis=-1)

  def wsum(x):
    # `where` instead of a product: garbage (inf / nan) on padded rows is
    # dropped rather than propagated.
    return jnp.sum(jnp.where(valid, x, 0.0) * weight)

  bins = jax.nn.one_hot(bin_indices(conf, num_bins), num_bins,
                        dtype=jnp.float32) * weight[:, None]
  bins = jnp.where(valid[:, None], bins, 0.0)
  safe_conf = jnp.where(valid, conf, 0.0)

  cw_bins = jax.nn.one_hot(bin_indices(probs, num_bins), num_bins,
                           dtype=jnp.float32)  # (N, K, B)
  cw_bins = jnp.where(valid[:, None, None], cw_bins * weight[:, None, None],
                      0.0)
  safe_probs = jnp.where(valid[:, None], probs, 0.0)

  return {
      "count": jnp.sum(jnp.where(valid, weight, 0.0)),
      "correct1": wsum(correct1),
      "correct5": wsum(correct5),
      "nll": wsum(nll),
      "brier": wsum(brier),
      "conf_sum": wsum(conf),
      "bin_count": jnp.sum(bins, axis=0),
      "bin_conf": jnp.sum(bins * safe_conf[:, None], axis=0),
      "bin_correct": jnp.sum(bins * correct1[:, None], axis=0),
      "cw_count": jnp.sum(cw_bins, axis=0),
      "cw_conf": jnp.sum(cw_bins * safe_probs[:, :, None], axis=0),
      "cw_correct": jnp.sum(cw_bins * onehot[:, :, None], axis=0),
  }


def zero_sums(num_classes: int, num_bins: int = 15) -> dict[str, np.ndarray]:
  """Float64 zeros with the structure of :func:`eval_sums` (host side)."""
  out = {k: np.zeros((), np.float64) for k in SUM_KEYS[:6]}
  out.update({k: np.zeros((num_bins,), np.float64) for k in SUM_KEYS[6:9]})
  out.update({k: np.zeros((num_classes, num_bins), np.float64)
              for k in SUM_KEYS[9:]})
  return out


def merge_sums(*sums: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Adds several :func:`eval_sums` results on the host in float64.

  Args:
    *sums: dicts of sums (JAX or NumPy arrays).

  Returns:
    A dict of float64 NumPy arrays.
  """
  if not sums:
    raise ValueError("merge_sums: expected at least one dict of sums")
  out = {k: np.asarray(v, np.float64).copy() for k, v in sums[0].items()}
  for s in sums[1:]:
    for k in out:
      out[k] = out[k] + np.asarray(s[k], np.float64)
  return out


def _host(sums: Mapping[str, Any]) -> dict[str, np.ndarray]:
  return {k: np.asarray(jax.device_get(v), np.float64) for k, v in sums.items()}


def _ece_terms(count, conf, correct, total):
  """ECE and MCE from per-bin sums (any shape; empty bins are ignored)."""
  gap = np.abs(correct - conf)
  ece = float(np.sum(gap) / total)
  nonempty = count > 0
  per_bin = gap[nonempty] / count[nonempty]
  mce = float(np.max(per_bin)) if per_bin.size else float("nan")
  return ece, mce


def finalize(sums: Mapping[str, Any]) -> dict[str, float]:
  """Metrics from (summed) :func:`eval_sums` statistics, on the host.

  Args:
    sums: a dict of sums from :func:`eval_sums` (possibly added up).

  Returns:
    ``top1_error``, ``top5_error``, ``nll`` (mean), ``brier`` (mean over
    samples of the squared error summed over classes), ``ece``, ``mce``,
    ``classwise_ece``, ``mean_confidence``, ``accuracy``, ``calibration_gap``
    (mean confidence minus accuracy) and ``count``. All NaN except ``count``
    when there is no sample.

  References:
    Guo et al., ICML 2017; Nixon et al., CVPR-W 2019.
  """
  s = _host(sums)
  n = float(s["count"])
  if n <= 0:
    out = {k: float("nan") for k in FINAL_KEYS}
    out["count"] = n
    return out
  accuracy = float(s["correct1"]) / n
  mean_conf = float(s["conf_sum"]) / n
  ece, mce = _ece_terms(s["bin_count"], s["bin_conf"], s["bin_correct"], n)
  num_classes = s["cw_count"].shape[0]
  cw_ece, _ = _ece_terms(s["cw_count"], s["cw_conf"], s["cw_correct"], n)
  return {
      "top1_error": 1.0 - accuracy,
      "top5_error": 1.0 - float(s["correct5"]) / n,
      "nll": float(s["nll"]) / n,
      "brier": float(s["brier"]) / n,
      "ece": ece,
      "mce": mce,
      "classwise_ece": cw_ece / num_classes,
      "mean_confidence": mean_conf,
      "accuracy": accuracy,
      "calibration_gap": mean_conf - accuracy,
      "count": n,
  }


def reliability_curve(sums: Mapping[str, Any]) -> dict[str, Any]:
  """Per-bin data of a reliability diagram from :func:`eval_sums` sums.

  Args:
    sums: a dict of sums (at least the ``bin_*`` entries and ``count``).

  Returns:
    A dict with ``edges`` ``(B + 1,)``, ``centers``, ``accuracy`` and
    ``confidence`` (per bin, NaN where empty), ``count`` and ``fraction``
    (per bin), plus the scalars ``ece``, ``mce``, ``accuracy_overall`` and
    ``mean_confidence``.
  """
  s = _host(sums)
  count = s["bin_count"]
  num_bins = count.shape[0]
  n = float(s.get("count", np.sum(count)))
  nonempty = count > 0
  safe = np.where(nonempty, count, 1.0)
  edges = np.concatenate([[0.0], bin_edges(num_bins).astype(np.float64), [1.0]])
  if n > 0:
    ece, mce = _ece_terms(count, s["bin_conf"], s["bin_correct"], n)
  else:
    ece = mce = float("nan")
  return {
      "edges": edges,
      "centers": 0.5 * (edges[:-1] + edges[1:]),
      "accuracy": np.where(nonempty, s["bin_correct"] / safe, np.nan),
      "confidence": np.where(nonempty, s["bin_conf"] / safe, np.nan),
      "count": count,
      "fraction": count / n if n > 0 else np.zeros_like(count),
      "ece": ece,
      "mce": mce,
      "accuracy_overall": (float(np.sum(s["bin_correct"])) / n if n > 0
                           else float("nan")),
      "mean_confidence": (float(np.sum(s["bin_conf"])) / n if n > 0
                          else float("nan")),
  }


# ----------------------------------------------------------------------------
# Host-side metrics on the whole set.
# ----------------------------------------------------------------------------


def _check_probs(probs, labels):
  probs = np.asarray(probs, np.float64)
  labels = np.asarray(labels).astype(np.int64)
  if probs.ndim != 2 or labels.shape != probs.shape[:1]:
    raise ValueError(f"expected probs (N, K) and labels (N,), got "
                     f"{probs.shape} and {labels.shape}")
  return probs, labels


def adaptive_ece_from_confidence(conf: np.ndarray, correct: np.ndarray,
                                 num_bins: int = 15) -> float:
  """Top-label ECE with equal-mass (adaptive) bins, from per-example records.

  The examples are sorted by confidence (stable) and split into
  ``min(num_bins, N)`` groups the way ``np.array_split`` splits them (the
  first ``N % B`` groups one longer). The one home of adaptive ECE:
  :func:`adaptive_ece` and the study's per-example records both call it.

  Args:
    conf: ``(N,)`` top-label confidences.
    correct: ``(N,)`` 1 where the top label is the true one.
    num_bins: number of bins.

  Returns:
    ``sum_b |hits_b - conf_b| / N``; NaN for an empty set.

  References:
    Nixon et al., "Measuring Calibration in Deep Learning", CVPR-W 2019.
  """
  conf = np.asarray(conf, np.float64)
  n = conf.shape[0]
  if n == 0:
    return float("nan")
  order = np.argsort(conf, kind="stable")
  groups = min(num_bins, n)
  size, extra = divmod(n, groups)
  starts = np.arange(groups) * size + np.minimum(np.arange(groups), extra)
  hit = np.add.reduceat(np.asarray(correct, np.float64)[order], starts)
  mass = np.add.reduceat(conf[order], starts)
  return float(np.abs(hit - mass).sum() / n)


def adaptive_ece(probs: np.ndarray, labels: np.ndarray,
                 num_bins: int = 15) -> float:
  """Top-label ECE with equal-mass bins (:func:`adaptive_ece_from_confidence`).

  Args:
    probs: ``(N, K)`` probabilities.
    labels: ``(N,)`` integer labels.
    num_bins: number of bins.

  Returns:
    ``sum_b n_b / N * |acc_b - conf_b|``; NaN for an empty set.
  """
  probs, labels = _check_probs(probs, labels)
  return adaptive_ece_from_confidence(
      probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(np.float64), num_bins)


def host_bin_sums(conf: np.ndarray, correct: np.ndarray, num_bins: int = 15) -> dict:
  """The top-label bin sums of :func:`eval_sums`, on the host from records.

  Bins by :func:`bin_edges` as the on-device sums do (float32 comparison).

  Returns:
    ``bin_count``, ``bin_conf``, ``bin_correct`` (each ``(num_bins,)``) and
    ``count``: what :func:`reliability_curve` and :func:`ece_from_sums` read.
  """
  conf = np.asarray(conf)
  edges = bin_edges(num_bins)
  bins = np.searchsorted(edges, conf.astype(np.float32), side="right")
  return {"bin_count": np.bincount(bins, minlength=num_bins).astype(np.float64),
          "bin_conf": np.bincount(bins, weights=conf, minlength=num_bins),
          "bin_correct": np.bincount(bins, weights=np.asarray(correct, np.float64),
                                     minlength=num_bins),
          "count": float(len(conf))}


def ece_from_sums(sums: Mapping[str, Any]) -> float:
  """Top-label ECE from bin sums (on-device :func:`eval_sums` or
  :func:`host_bin_sums`): the one home of ECE; NaN for no example."""
  s = _host(sums)
  n = float(s.get("count", np.sum(s["bin_count"])))
  if n <= 0:
    return float("nan")
  return _ece_terms(s["bin_count"], s["bin_conf"], s["bin_correct"], n)[0]


def _average_ranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks of ``x`` with ties given their average rank."""
  order = np.argsort(x, kind="mergesort")
  xs = x[order]
  # Start of each run of equal values in the sorted array.
  starts = np.flatnonzero(np.concatenate([[True], xs[1:] != xs[:-1]]))
  ends = np.concatenate([starts[1:], [xs.size]])
  avg = 0.5 * (starts + ends - 1) + 1.0  # mean of 1-based positions
  ranks = np.empty(x.size, np.float64)
  ranks[order] = np.repeat(avg, ends - starts)
  return ranks


def binary_auroc(scores: np.ndarray, positives: np.ndarray) -> float:
  """Area under the ROC curve via the Mann-Whitney U statistic.

  The one home of AUROC (class-wise here, OOD separation in
  :func:`ols_jax.ood.auroc`).

  Args:
    scores: ``(N,)`` scores (higher = more positive).
    positives: ``(N,)`` booleans.

  Returns:
    The AUROC (ties count one half); NaN without positives or negatives.
  """
  scores = np.asarray(scores, np.float64)
  positives = np.asarray(positives, bool)
  n_pos = int(np.sum(positives))
  n_neg = positives.size - n_pos
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  ranks = _average_ranks(scores)
  u = np.sum(ranks[positives]) - n_pos * (n_pos + 1) / 2.0
  return float(u / (n_pos * n_neg))


def auroc_macro(probs: np.ndarray, labels: np.ndarray) -> float:
  """One-vs-rest macro AUROC (for ``K == 2``: the AUROC of class 1).

  Args:
    probs: ``(N, K)`` probabilities.
    labels: ``(N,)`` integer labels.

  Returns:
    The mean AUROC over classes that have both positives and negatives; NaN
    when there is none.
  """
  probs, labels = _check_probs(probs, labels)
  num_classes = probs.shape[1]
  if num_classes == 2:
    return binary_auroc(probs[:, 1], labels == 1)
  values = [binary_auroc(probs[:, c], labels == c) for c in range(num_classes)]
  values = [v for v in values if not np.isnan(v)]
  return float(np.mean(values)) if values else float("nan")


def host_metrics(probs: np.ndarray, labels: np.ndarray,
                 num_bins: int = 15) -> dict[str, float]:
  """Metrics that need the whole evaluation set, computed in NumPy.

  Only the metrics that cannot be summed batch by batch; the others come from
  :func:`finalize`, so merging this dict
  into a :func:`finalize` result never overwrites anything.

  Args:
    probs: ``(N, K)`` probabilities of every example.
    labels: ``(N,)`` integer labels.
    num_bins: number of equal-mass bins of ``adaptive_ece``.

  Returns:
    ``adaptive_ece`` and ``auroc_macro``.

  References:
    Nixon et al., CVPR-W 2019 (adaptive ECE).
  """
  return {
      "adaptive_ece": adaptive_ece(probs, labels, num_bins),
      "auroc_macro": auroc_macro(probs, labels),
  }
