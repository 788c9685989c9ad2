"""Out-of-distribution (OOD) scores and their evaluation.

Convention: every score here is a *confidence* score, higher = more
in-distribution. An input is flagged as OOD when its score falls below a
threshold (``ood = score < threshold``), and AUROC treats the in-distribution
inputs as the positive class.

Scores (host side, float64):

* :func:`msp`: the maximum softmax probability (Hendrycks & Gimpel 2017).
* :func:`energy`: the negative free energy ``T * logsumexp(z / T)``
  (Liu et al. 2020); it is the negative of the paper's energy ``E(x)``.
* :func:`mahalanobis_score`: minus the smallest squared Mahalanobis distance
  from an embedding to a class mean under one shared (tied) covariance
  (Lee et al. 2018), fitted with :func:`fit_mahalanobis` on in-distribution
  training embeddings.

The threshold (:func:`threshold_at_tpr`) is chosen on in-distribution data
only, so that a fraction ``tpr`` of them is kept (usually 95%); FPR at that
TPR is the fraction of OOD inputs that it fails to flag.

References:
  Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and
  Out-of-Distribution Examples in Neural Networks", ICLR 2017.
  Liu, Wang, Owens & Li, "Energy-based Out-of-distribution Detection",
  NeurIPS 2020.
  Lee, Lee, Lee & Shin, "A Simple Unified Framework for Detecting
  Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from ols_jax import metrics as metrics_lib

SCORES = ("msp", "energy", "mahalanobis")
# Keys of the dict that fit_mahalanobis returns (all NumPy arrays).
MAHALANOBIS_KEYS = ("means", "precision", "class_present")


def _check_logits(logits) -> np.ndarray:
  z = np.asarray(logits, np.float64)
  if z.ndim != 2 or z.shape[1] == 0:
    raise ValueError(f"logits: expected an (N, K) array with K >= 1, got "
                     f"shape {z.shape}")
  if not np.all(np.isfinite(z)):
    raise ValueError("logits: values must be finite")
  return z


def _check_scores(scores, name: str) -> np.ndarray:
  s = np.asarray(scores, np.float64)
  if s.ndim != 1 or s.size == 0:
    raise ValueError(f"{name}: expected a non-empty 1-D array of scores, got "
                     f"shape {s.shape}")
  if not np.all(np.isfinite(s)):
    raise ValueError(f"{name}: scores must be finite")
  return s


def _check_tpr(tpr: float) -> float:
  tpr = float(tpr)
  if not 0.0 < tpr <= 1.0:  # also rejects NaN
    raise ValueError(f"tpr: expected a value in (0, 1], got {tpr!r}")
  return tpr


def _check_embeddings(embeddings) -> np.ndarray:
  x = np.asarray(embeddings, np.float64)
  if x.ndim != 2 or x.shape[1] == 0:
    raise ValueError(f"embeddings: expected an (N, D) array with D >= 1, got "
                     f"shape {x.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError("embeddings: values must be finite")
  return x


def msp(logits) -> np.ndarray:
  """Maximum softmax probability.

  Computed as ``1 / sum_k exp(z_k - max z)``, stable for any finite logits.

  Args:
    logits: ``(N, K)`` logits.

  Returns:
    ``(N,)`` float64 scores in ``[1 / K, 1]`` (higher = in-distribution).

  References:
    Hendrycks & Gimpel, ICLR 2017.
  """
  z = _check_logits(logits)
  shifted = z - z.max(axis=1, keepdims=True)
  return 1.0 / np.exp(shifted).sum(axis=1)


def energy(logits, temperature: float = 1.0) -> np.ndarray:
  """Negative free energy ``T * logsumexp(z / T)``.

  Args:
    logits: ``(N, K)`` logits.
    temperature: ``T > 0``.

  Returns:
    ``(N,)`` float64 scores (higher = in-distribution); adding ``c`` to every
    logit adds ``c`` to the score.

  References:
    Liu et al., NeurIPS 2020 (this is ``-E(x; f)``).
  """
  z = _check_logits(logits)
  t = float(temperature)
  if not (math.isfinite(t) and t > 0.0):
    raise ValueError(f"temperature: expected a finite T > 0, got "
                     f"{temperature!r}")
  s = z / t
  m = s.max(axis=1)
  return t * (m + np.log(np.exp(s - m[:, None]).sum(axis=1)))


def fit_mahalanobis(embeddings, labels, num_classes: int, *,
                    ridge: float = 1e-6) -> dict[str, np.ndarray]:
  """Class means and the tied covariance's precision (Mahalanobis OOD).

  The covariance is the pooled within-class covariance
  ``sum_i (x_i - mu_{y_i})(x_i - mu_{y_i})^T / N`` plus ``eps * I`` with
  ``eps = ridge * trace / D`` (``ridge`` itself when the trace is 0), and the
  precision is its (pseudo-)inverse, symmetrised. Classes without examples
  get a zero mean and ``class_present = False``; :func:`mahalanobis_score`
  ignores them.

  Args:
    embeddings: ``(N, D)`` in-distribution (training) embeddings, ``N >= 1``.
    labels: ``(N,)`` integer labels in ``[0, num_classes)``.
    num_classes: ``K >= 1``.
    ridge: relative ridge added to the covariance, ``>= 0``.

  Returns:
    ``{"means": (K, D), "precision": (D, D), "class_present": (K,) bool}``,
    plain NumPy arrays (``np.savez(path, **fit)`` stores them).

  References:
    Lee et al., NeurIPS 2018.
  """
  x = _check_embeddings(embeddings)
  n, d = x.shape
  if n == 0:
    raise ValueError("embeddings: need at least one embedding")
  k = int(num_classes)
  if k < 1:
    raise ValueError(f"num_classes: expected >= 1, got {num_classes!r}")
  y = np.asarray(labels)
  if y.shape != (n,):
    raise ValueError(f"labels: expected shape {(n,)} to match embeddings "
                     f"{x.shape}, got {y.shape}")
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"labels: expected integers, got dtype {y.dtype}")
  y = y.astype(np.int64)
  if np.any((y < 0) | (y >= k)):
    raise ValueError(f"labels: expected values in [0, {k}), got min {y.min()} "
                     f"and max {y.max()}")
  ridge = float(ridge)
  if not (math.isfinite(ridge) and ridge >= 0.0):
    raise ValueError(f"ridge: expected a finite value >= 0, got {ridge!r}")
  counts = np.bincount(y, minlength=k)
  present = counts > 0
  sums = np.zeros((k, d))
  np.add.at(sums, y, x)
  means = np.zeros((k, d))
  means[present] = sums[present] / counts[present, None]
  centered = x - means[y]
  cov = centered.T @ centered / n
  trace = float(np.trace(cov))
  eps = ridge * trace / d if trace > 0.0 else ridge
  cov[np.diag_indices(d)] += eps
  precision = np.linalg.pinv(cov, hermitian=True)
  precision = 0.5 * (precision + precision.T)
  return {"means": means, "precision": precision, "class_present": present}


def mahalanobis_score(embeddings, fit: Mapping[str, Any], *,
                      block_size: int = 4096) -> np.ndarray:
  """Minus the smallest squared Mahalanobis distance to a class mean.

  ``d_k(x) = (x - mu_k)^T P (x - mu_k)`` is expanded as ``x'Px - 2 x'P mu_k
  + mu_k'P mu_k`` after centring on the mean of the class means, ``block_size``
  rows at a time, so memory is ``O(block_size * (K + D))`` and no
  ``(N, K, D)`` array is formed. Distances are clipped at 0; absent classes
  (``class_present`` False) are ignored.

  Args:
    embeddings: ``(N, D)`` embeddings.
    fit: the dict from :func:`fit_mahalanobis` (or loaded from ``np.savez``).
    block_size: rows per block, ``>= 1``.

  Returns:
    ``(N,)`` float64 scores ``-min_k d_k(x)`` (higher = in-distribution).

  References:
    Lee et al., NeurIPS 2018.
  """
  x = _check_embeddings(embeddings)
  missing = [key for key in MAHALANOBIS_KEYS if key not in fit]
  if missing:
    raise ValueError(f"fit: missing {missing}; expected the keys "
                     f"{MAHALANOBIS_KEYS} from fit_mahalanobis")
  means = np.asarray(fit["means"], np.float64)
  precision = np.asarray(fit["precision"], np.float64)
  present = np.asarray(fit["class_present"]).astype(bool)
  if means.ndim != 2 or present.shape != means.shape[:1]:
    raise ValueError(f"fit: expected means (K, D) and class_present (K,), got "
                     f"{means.shape} and {present.shape}")
  d = means.shape[1]
  if precision.shape != (d, d):
    raise ValueError(f"fit: expected precision of shape {(d, d)}, got "
                     f"{precision.shape}")
  if x.shape[1] != d:
    raise ValueError(f"embeddings: expected dimension D = {d} of the fit, got "
                     f"shape {x.shape}")
  if not np.any(present):
    raise ValueError("fit: no class has any example")
  block_size = int(block_size)
  if block_size < 1:
    raise ValueError(f"block_size: expected >= 1, got {block_size!r}")
  centre = means[present].mean(axis=0)
  mu = means[present] - centre
  mu_p = mu @ precision  # (K', D)
  mu_term = np.einsum("kd,kd->k", mu_p, mu)
  out = np.empty(x.shape[0])
  for start in range(0, x.shape[0], block_size):
    xb = x[start:start + block_size] - centre
    x_term = np.einsum("nd,nd->n", xb @ precision, xb)
    dist = x_term[:, None] - 2.0 * (xb @ mu_p.T) + mu_term[None, :]
    out[start:start + block_size] = -np.maximum(dist.min(axis=1), 0.0)
  return out


def threshold_at_tpr(in_scores, tpr: float = 0.95) -> float:
  """The largest threshold that keeps a fraction ``>= tpr`` of in-distribution.

  With ``n`` in-distribution scores and ``m = ceil(tpr * n)`` (relative
  tolerance ``1e-12`` against rounding in the product): the ``m``-th largest
  score. Then ``#{in_scores >= threshold} >= m`` and any larger threshold keeps
  fewer than ``m``. Flag ``ood = score < threshold``.

  Args:
    in_scores: ``(n,)`` in-distribution scores (higher = in-distribution).
    tpr: wanted true-positive rate in ``(0, 1]``.

  Returns:
    The threshold as a float (one of ``in_scores``).
  """
  s = _check_scores(in_scores, "in_scores")
  tpr = _check_tpr(tpr)
  n = s.size
  level = tpr * n
  m = min(max(math.ceil(level - 1e-12 * level), 1), n)
  return float(np.sort(s)[n - m])


def auroc(in_scores, out_scores) -> float:
  """AUROC of separating in-distribution (positive) from OOD inputs.

  The Mann-Whitney statistic: the probability that a random in-distribution
  score exceeds a random OOD score, ties counted one half.

  Args:
    in_scores: ``(n_in,)`` in-distribution scores.
    out_scores: ``(n_out,)`` OOD scores.

  Returns:
    The AUROC in ``[0, 1]`` (0.5 = chance).
  """
  s_in = _check_scores(in_scores, "in_scores")
  s_out = _check_scores(out_scores, "out_scores")
  return metrics_lib.binary_auroc(np.concatenate([s_in, s_out]),
                                  np.arange(s_in.size + s_out.size) < s_in.size)


def fpr_at_tpr(in_scores, out_scores, tpr: float = 0.95) -> float:
  """Fraction of OOD scores ``>=`` :func:`threshold_at_tpr` of ``in_scores``.

  Args:
    in_scores: ``(n_in,)`` in-distribution scores.
    out_scores: ``(n_out,)`` OOD scores.
    tpr: true-positive rate in ``(0, 1]`` fixing the threshold.

  Returns:
    The false-positive rate (OOD inputs not flagged) in ``[0, 1]``.
  """
  threshold = threshold_at_tpr(in_scores, tpr)
  s_out = _check_scores(out_scores, "out_scores")
  return float(np.mean(s_out >= threshold))


def ood_summary(in_scores: Mapping[str, Any],
                out_sets: Mapping[str, Mapping[str, Any]],
                thresholds: Mapping[str, float]
                ) -> dict[str, dict[str, dict[str, float]]]:
  """AUROC, FPR at 95% TPR and flagged fraction of every OOD set and score.

  Args:
    in_scores: ``{score_name: (n_in,) scores}`` on in-distribution test data.
    out_sets: ``{set_name: {score_name: (n_out,) scores}}`` on each OOD set;
      every score name must be in ``in_scores`` and ``thresholds``.
    thresholds: ``{score_name: threshold}``, chosen beforehand (e.g.
      :func:`threshold_at_tpr` on in-distribution validation data).

  Returns:
    ``{set_name: {score_name: {"auroc", "fpr_at_95tpr", "flagged_fraction"}}}``
    with Python floats (JSON-ready). ``auroc`` and ``fpr_at_95tpr`` compare the
    set with ``in_scores`` (the threshold at 95% TPR of ``in_scores``);
    ``flagged_fraction`` is the fraction of the set with ``score <
    thresholds[score_name]``.
  """
  summary: dict[str, dict[str, dict[str, float]]] = {}
  for set_name, by_score in out_sets.items():
    summary[set_name] = {}
    for score_name, out in by_score.items():
      if score_name not in in_scores:
        raise ValueError(f"in_scores: no {score_name!r} scores for OOD set "
                         f"{set_name!r}; have {sorted(in_scores)}")
      if score_name not in thresholds:
        raise ValueError(f"thresholds: no {score_name!r} threshold for OOD set "
                         f"{set_name!r}; have {sorted(thresholds)}")
      s_out = _check_scores(out, f"out_sets[{set_name!r}][{score_name!r}]")
      s_in = _check_scores(in_scores[score_name],
                           f"in_scores[{score_name!r}]")
      summary[set_name][score_name] = {
          "auroc": auroc(s_in, s_out),
          "fpr_at_95tpr": fpr_at_tpr(s_in, s_out, 0.95),
          "flagged_fraction": float(np.mean(s_out < float(
              thresholds[score_name])))}
  return summary
