"""Split conformal prediction sets (LAC and APS).

A conformity *score* measures how badly a label fits an input (higher = worse).
On a held-out calibration split of ``n`` labelled inputs the threshold
``qhat`` is the ``k``-th smallest calibration score, ``k = ceil((n + 1)(1 -
alpha))``; the prediction set of a new input is every label whose score is at
most ``qhat``. When calibration and test inputs are exchangeable the set holds
the true label with probability at least ``1 - alpha``, and (without ties in
the scores) at most ``1 - alpha + 1 / (n + 1)``. The guarantee is marginal over
calibration and test draws, and it fails when the test data are shifted from
the calibration data, so the calibration split must come from the same
distribution as the inputs the sets are published for.

Scores (both from softmax probabilities; host side, float64):

* LAC ("least ambiguous set-valued classifier", the "threshold" score):
  ``1 - p_y``. The set ``{k : 1 - p_k <= qhat}`` (that is ``p_k >= 1 -
  qhat``) can be empty.
* APS (adaptive prediction sets, non-randomised): the classes are sorted by
  decreasing probability, ties by increasing class index (a stable sort), and
  the score of a label is the probability mass up to and including it. The
  cumulative sums are capped at 1 so that rounding in the probabilities cannot
  push the last classes above ``qhat = 1``.

Sets and scores: both methods build the set from the very array of scores
that :func:`lac_scores` / :func:`aps_scores` return, so ``y`` is in the set iff
``score(x, y) <= qhat`` exactly, ties and rounding included; this is what the
coverage guarantee needs. Both sets are prefixes of the classes in decreasing
probability, so a non-empty set always contains the argmax (the prediction). A
set is empty when even the top class scores above ``qhat``. :func:`aps_sets`
with ``include_last=True`` gives the other common APS form (also the first
class whose cumulative mass reaches ``qhat``): never empty when ``qhat > 0``
but conservative, and no longer "``y`` in set iff score <= qhat".

References:
  Vovk, Gammerman & Shafer, "Algorithmic Learning in a Random World",
  Springer 2005.
  Angelopoulos & Bates, "A Gentle Introduction to Conformal Prediction and
  Distribution-Free Uncertainty Quantification", arXiv:2107.07511, 2021.
  Sadinle, Lei & Wasserman, "Least Ambiguous Set-Valued Classifiers with
  Bounded Error Levels", JASA 2019.
  Romano, Sesia & Candes, "Classification with Valid and Adaptive Coverage",
  NeurIPS 2020.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

METHODS = ("lac", "aps")


def _check_alpha(alpha: float) -> float:
  alpha = float(alpha)
  if not 0.0 < alpha < 1.0:  # also rejects NaN
    raise ValueError(f"alpha: expected a miscoverage level in (0, 1), got "
                     f"{alpha!r}")
  return alpha


def _check_probs(probs) -> np.ndarray:
  p = np.asarray(probs, np.float64)
  if p.ndim != 2 or p.shape[1] == 0:
    raise ValueError(f"probs: expected an (N, K) array with K >= 1, got shape "
                     f"{p.shape}")
  if not np.all(np.isfinite(p)):
    raise ValueError("probs: probabilities must be finite")
  if np.any(p < 0.0):
    raise ValueError("probs: probabilities must be non-negative")
  return p


def _check_labels(labels, probs: np.ndarray) -> np.ndarray:
  y = np.asarray(labels)
  if y.shape != probs.shape[:1]:
    raise ValueError(f"labels: expected shape {probs.shape[:1]} to match probs "
                     f"{probs.shape}, got {y.shape}")
  if y.size and not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"labels: expected integers, got dtype {y.dtype}")
  y = y.astype(np.int64)
  if np.any((y < 0) | (y >= probs.shape[1])):
    raise ValueError(f"labels: expected values in [0, {probs.shape[1]}), got "
                     f"min {y.min()} and max {y.max()}")
  return y


def _check_method(method: str) -> str:
  if method not in METHODS:
    raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
  return method


def conformal_quantile(scores, alpha: float) -> float:
  """The split-conformal threshold of calibration scores.

  With ``n`` scores and ``k = ceil((n + 1)(1 - alpha))``: the ``k``-th smallest
  score, i.e. the empirical ``k / n`` quantile in the inverse-CDF sense (the
  smallest score ``s`` with ``#{scores <= s} >= k``). ``k`` is computed with a
  relative tolerance of ``1e-12`` so that e.g. ``n = 9, alpha = 0.7`` gives
  ``k = 3`` despite rounding in ``10 * (1 - 0.7)``. Note that
  ``np.quantile(scores, k / n, method="higher")`` is one order statistic
  higher whenever ``k < n``.

  Args:
    scores: ``(n,)`` finite calibration scores, ``n >= 1``.
    alpha: miscoverage level in ``(0, 1)``.

  Returns:
    ``qhat`` as a float; ``+inf`` when ``k > n`` (too few calibration points
    for level ``alpha``: every set is then the full label set).

  References:
    Vovk et al. 2005; Angelopoulos & Bates 2021, Section 1.
  """
  alpha = _check_alpha(alpha)
  s = np.asarray(scores, np.float64)
  if s.ndim != 1:
    raise ValueError(f"scores: expected a 1-D array, got shape {s.shape}")
  n = s.size
  if n < 1:
    raise ValueError("scores: need at least one calibration score")
  if not np.all(np.isfinite(s)):
    raise ValueError("scores: calibration scores must be finite")
  level = (n + 1) * (1.0 - alpha)
  k = math.ceil(level - 1e-12 * level)
  if k > n:
    return math.inf
  return float(np.partition(s, k - 1)[k - 1])


def lac_scores(probs, labels) -> np.ndarray:
  """LAC conformity scores ``1 - p_y``.

  Args:
    probs: ``(N, K)`` probabilities.
    labels: ``(N,)`` integer labels.

  Returns:
    ``(N,)`` float64 scores in ``[0, 1]``.

  References:
    Sadinle, Lei & Wasserman, JASA 2019.
  """
  p = _check_probs(probs)
  y = _check_labels(labels, p)
  return 1.0 - p[np.arange(p.shape[0]), y]


def lac_sets(probs, qhat: float) -> np.ndarray:
  """LAC prediction sets ``{k : p_k >= 1 - qhat}``.

  Evaluated as ``1 - p_k <= qhat`` (the score of every class), so a label is
  in the set iff its :func:`lac_scores` value is at most ``qhat``.

  Args:
    probs: ``(N, K)`` probabilities.
    qhat: threshold from :func:`calibrate` (``inf`` keeps every class).

  Returns:
    ``(N, K)`` boolean mask; rows can be empty, and non-empty rows contain the
    argmax.
  """
  p = _check_probs(probs)
  return (1.0 - p) <= float(qhat)


def _aps_cumulative(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per class: the mass up to and including it and the mass before it."""
  order = np.argsort(-p, axis=1, kind="stable")
  sorted_p = np.take_along_axis(p, order, axis=1)
  cum = np.minimum(np.cumsum(sorted_p, axis=1), 1.0)
  before = np.concatenate([np.zeros_like(cum[:, :1]), cum[:, :-1]], axis=1)
  rows = np.arange(p.shape[0])[:, None]
  cum_by_class = np.empty_like(cum)
  before_by_class = np.empty_like(cum)
  cum_by_class[rows, order] = cum
  before_by_class[rows, order] = before
  return cum_by_class, before_by_class


def aps_scores(probs, labels) -> np.ndarray:
  """Non-randomised APS scores: the sorted mass up to and including ``y``.

  Args:
    probs: ``(N, K)`` probabilities.
    labels: ``(N,)`` integer labels.

  Returns:
    ``(N,)`` float64 scores in ``[0, 1]``.

  References:
    Romano, Sesia & Candes, NeurIPS 2020; Angelopoulos & Bates 2021, 2.1.
  """
  p = _check_probs(probs)
  y = _check_labels(labels, p)
  cum, _ = _aps_cumulative(p)
  return cum[np.arange(p.shape[0]), y]


def aps_sets(probs, qhat: float, *, include_last: bool = False) -> np.ndarray:
  """APS prediction sets.

  Classes are taken in decreasing probability (ties by class index). By
  default a class is kept iff its :func:`aps_scores` value (mass up to and
  including it) is at most ``qhat``: the exact inverse of the score, empty
  when the top probability exceeds ``qhat``, every class when ``qhat >= 1``.
  With ``include_last`` the first class whose mass reaches ``qhat`` is kept
  too (the set as written in Angelopoulos & Bates 2021, Section 2.1): it
  always contains the argmax when ``qhat > 0`` and over-covers.

  Args:
    probs: ``(N, K)`` probabilities.
    qhat: threshold from :func:`calibrate` (``inf`` keeps every class).
    include_last: also keep the class that crosses ``qhat``.

  Returns:
    ``(N, K)`` boolean mask; non-empty rows contain the argmax.

  References:
    Romano, Sesia & Candes, NeurIPS 2020.
  """
  p = _check_probs(probs)
  qhat = float(qhat)
  cum, before = _aps_cumulative(p)
  sets = cum <= qhat
  if include_last:
    sets |= before < qhat
  return sets


def calibrate(probs, labels, method: str, alpha: float) -> float:
  """``qhat`` of a method on a calibration split.

  Args:
    probs: ``(n, K)`` calibration probabilities.
    labels: ``(n,)`` calibration labels.
    method: one of :data:`METHODS`.
    alpha: miscoverage level in ``(0, 1)``.

  Returns:
    :func:`conformal_quantile` of the method's scores (may be ``inf``).
  """
  method = _check_method(method)
  alpha = _check_alpha(alpha)
  score_fn = lac_scores if method == "lac" else aps_scores
  return conformal_quantile(score_fn(probs, labels), alpha)


def prediction_sets(probs, qhat: float, method: str) -> np.ndarray:
  """Prediction sets of a method: :func:`lac_sets` or :func:`aps_sets`.

  Args:
    probs: ``(N, K)`` probabilities.
    qhat: threshold from :func:`calibrate`.
    method: one of :data:`METHODS`.

  Returns:
    ``(N, K)`` boolean mask.
  """
  method = _check_method(method)
  return lac_sets(probs, qhat) if method == "lac" else aps_sets(probs, qhat)


def evaluate_sets(sets, labels) -> dict[str, float]:
  """Empirical coverage and size of prediction sets.

  Args:
    sets: ``(N, K)`` boolean mask, ``N >= 1``.
    labels: ``(N,)`` integer labels.

  Returns:
    ``coverage`` (fraction of rows holding their label), ``mean_size`` (mean
    number of classes per set) and ``empty_fraction`` (fraction of empty sets).
  """
  s = np.asarray(sets)
  if s.ndim != 2 or s.shape[0] == 0:
    raise ValueError(f"sets: expected a non-empty (N, K) mask, got shape "
                     f"{s.shape}")
  if s.dtype != np.bool_:
    raise ValueError(f"sets: expected a boolean mask, got dtype {s.dtype}")
  y = _check_labels(labels, s)
  sizes = s.sum(axis=1)
  return {"coverage": float(np.mean(s[np.arange(s.shape[0]), y])),
          "mean_size": float(np.mean(sizes)),
          "empty_fraction": float(np.mean(sizes == 0))}


def conformal_summary(val_probs, val_labels, test_probs, test_labels,
                      alpha: float = 0.1) -> dict[str, dict[str, Any]]:
  """Calibrates every method on val and evaluates its sets on test.

  Args:
    val_probs: ``(n, K)`` calibration (validation) probabilities, e.g.
      temperature-scaled; they must be exchangeable with the test inputs.
    val_labels: ``(n,)`` calibration labels.
    test_probs: ``(N, K)`` test probabilities.
    test_labels: ``(N,)`` test labels.
    alpha: miscoverage level in ``(0, 1)``.

  Returns:
    ``{method: {"qhat", "target_coverage", "coverage", "mean_size",
    "empty_fraction"}}`` for each of :data:`METHODS`, all Python floats so it
    can be written as JSON; ``qhat`` is None when it is infinite (too few
    calibration points for ``alpha``; the sets are then every class).
  """
  alpha = _check_alpha(alpha)
  summary: dict[str, dict[str, Any]] = {}
  for method in METHODS:
    qhat = calibrate(val_probs, val_labels, method, alpha)
    stats = evaluate_sets(prediction_sets(test_probs, qhat, method),
                          test_labels)
    stored: Optional[float] = qhat if math.isfinite(qhat) else None
    summary[method] = {"qhat": stored, "target_coverage": 1.0 - alpha, **stats}
  return summary
