"""Selective prediction: risk-coverage curves, AURC and abstention thresholds.

A selective classifier answers only when its confidence (the top softmax
probability) reaches a threshold and abstains otherwise. Its *coverage* is the
fraction of inputs it answers and its *selective risk* the error rate among
those. Sorting by confidence gives the risk-coverage curve; the area under it
(AURC) summarises how well confidence ranks right above wrong predictions
(lower is better; a perfect ranking gives the smallest value possible at that
accuracy).

Ties: inputs with equal confidence are accepted or rejected together by any
threshold, so within a run of tied confidences the curve takes the expected
risk of a random order (linear interpolation of the error count). The curve,
and hence the AURC, therefore does not depend on how a sort breaks ties.

Threshold rule (:func:`select_threshold`): on the validation split, the lowest
confidence ``t`` whose accepted set ``{confidence >= t}`` has an accuracy of at
least the target. Candidates are the observed confidences and 0 (accept
everything); when no candidate reaches the target the threshold lies above
every possible probability and the classifier abstains on everything. The
lowest such ``t`` gives the largest validation coverage at the target.

References:
  Geifman & El-Yaniv, "Selective Classification for Deep Neural Networks",
  NeurIPS 2017.
  Geifman, Uziel & El-Yaniv, "Bias-Reduced Uncertainty Estimation for Deep
  Neural Classifiers", ICLR 2019 (AURC, E-AURC).
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ols_jax import calibration
from ols_jax import fileio
from ols_jax import run_files

# Above every probability: a threshold that accepts nothing (the next float32
# after 1, so it stays above 1 when compared with float32 confidences).
ABSTAIN_ALL = float(np.nextafter(np.float32(1.0), np.float32(2.0)))


def probabilities(logits, temperature: float = 1.0) -> np.ndarray:
  """float32 softmax of ``logits / temperature``, as the evaluation computes it.

  Args:
    logits: ``(N, K)`` logits.
    temperature: ``T > 0``.

  Returns:
    ``(N, K)`` float32 probabilities.
  """
  scaled = calibration.apply_temperature(logits, temperature)
  return np.asarray(jax.nn.softmax(jnp.asarray(scaled, jnp.float32), axis=-1))


def confidence_and_correct(probs: np.ndarray, labels: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray]:
  """Top-label confidence and correctness (argmax, first index on ties)."""
  probs = np.asarray(probs)
  return probs.max(axis=-1), np.argmax(probs, axis=-1) == np.asarray(labels)


def _sorted_groups(confidence, correct):
  """Errors sorted by decreasing confidence, and the tie groups' bounds."""
  conf = np.asarray(confidence, np.float64).reshape(-1)
  ok = np.asarray(correct).reshape(-1).astype(bool)
  if conf.shape != ok.shape:
    raise ValueError(f"expected confidence and correct of one length, got "
                     f"{conf.shape} and {ok.shape}")
  if conf.size == 0:
    raise ValueError("selective: no samples")
  if not np.all(np.isfinite(conf)):
    raise ValueError("selective: confidences must be finite")
  order = np.argsort(-conf, kind="stable")
  conf, errors = conf[order], (~ok[order]).astype(np.float64)
  starts = np.flatnonzero(np.concatenate([[True], conf[1:] != conf[:-1]]))
  ends = np.concatenate([starts[1:], [conf.size]])  # exclusive
  return conf, errors, starts, ends


def risk_coverage_curve(confidence, correct) -> dict[str, np.ndarray]:
  """Selective risk at every coverage ``k / N``, ``k = 1..N``.

  Args:
    confidence: ``(N,)`` confidence scores (higher = more confident).
    correct: ``(N,)`` booleans, whether each prediction is right.

  Returns:
    ``coverage`` ``(N,)`` and ``risk`` ``(N,)`` (expected error rate of the
    ``k`` most confident inputs, ties in a random order), and ``threshold``
    ``(N,)`` (the confidence of the ``k``-th input).

  References:
    Geifman & El-Yaniv, NeurIPS 2017.
  """
  conf, errors, starts, ends = _sorted_groups(confidence, correct)
  n = conf.size
  cum = np.concatenate([[0.0], np.cumsum(errors)])
  sizes = ends - starts
  group = np.repeat(np.arange(starts.size), sizes)
  k = np.arange(1, n + 1, dtype=np.float64)
  before = cum[starts[group]]
  group_errors = cum[ends[group]] - before
  expected = before + (k - starts[group]) * group_errors / sizes[group]
  return {"coverage": k / n, "risk": expected / k, "threshold": conf}


def aurc(confidence, correct) -> float:
  """Area under the risk-coverage curve (mean selective risk over ``k/N``).

  Args:
    confidence: ``(N,)`` confidence scores.
    correct: ``(N,)`` booleans.

  Returns:
    The AURC in ``[0, 1]``.

  References:
    Geifman, Uziel & El-Yaniv, ICLR 2019.
  """
  return curve_area(risk_coverage_curve(confidence, correct))


def curve_area(curve: dict[str, np.ndarray]) -> float:
  """The AURC of a :func:`risk_coverage_curve`: its mean selective risk."""
  return float(np.mean(curve["risk"]))


def select_threshold(confidence, correct, target_accuracy: float) -> float:
  """The lowest threshold whose accepted set reaches ``target_accuracy``.

  Args:
    confidence: ``(N,)`` validation confidences.
    correct: ``(N,)`` booleans.
    target_accuracy: wanted accuracy of the accepted inputs, in ``(0, 1]``.

  Returns:
    ``0.0`` when every input together reaches the target; otherwise an
    observed confidence ``t`` (accept iff ``confidence >= t``); or
    :data:`ABSTAIN_ALL` when no accepted set reaches it.
  """
  if not 0.0 < target_accuracy <= 1.0:
    raise ValueError(f"target_accuracy: expected a value in (0, 1], got "
                     f"{target_accuracy!r}")
  conf, errors, starts, ends = _sorted_groups(confidence, correct)
  cum_correct = np.cumsum(1.0 - errors)[ends - 1]
  accuracy = cum_correct / ends
  good = np.flatnonzero(accuracy >= target_accuracy - 1e-12)
  if good.size == 0:
    return ABSTAIN_ALL
  last = int(good[-1])
  if last == starts.size - 1:
    return 0.0
  return float(conf[starts[last]])


def accepted_stats(confidence, correct, threshold: float
                   ) -> tuple[float, Optional[float]]:
  """Coverage and accuracy of ``{confidence >= threshold}``.

  Returns:
    ``(coverage, accuracy)``; accuracy is None when nothing is accepted.
  """
  conf = np.asarray(confidence, np.float64).reshape(-1)
  ok = np.asarray(correct).reshape(-1).astype(bool)
  accept = conf >= threshold
  n = int(accept.sum())
  return n / max(conf.size, 1), (float(ok[accept].mean()) if n else None)


def abstention(val_confidence, val_correct, test_confidence, test_correct, *,
               temperature: float, target_accuracy: float) -> dict[str, Any]:
  """The abstention threshold chosen on val, and what it does on val and test.

  Args:
    val_confidence, val_correct: validation confidences and correctness from
      temperature-scaled probabilities (:func:`confidence_and_correct`).
    test_confidence, test_correct: the same on the test split.
    temperature: the temperature of those probabilities (recorded).
    target_accuracy: wanted accuracy of the accepted inputs, in ``(0, 1]``.

  Returns:
    ``target_accuracy``, ``threshold`` (:func:`select_threshold` on val),
    ``temperature``, ``val_coverage``, ``val_accuracy``, ``test_coverage``,
    ``test_accuracy`` (:func:`accepted_stats`).
  """
  threshold = select_threshold(val_confidence, val_correct, target_accuracy)
  val_cov, val_acc = accepted_stats(val_confidence, val_correct, threshold)
  test_cov, test_acc = accepted_stats(test_confidence, test_correct, threshold)
  return {"target_accuracy": float(target_accuracy), "threshold": threshold,
          "temperature": float(temperature), "val_coverage": val_cov,
          "val_accuracy": val_acc, "test_coverage": test_cov,
          "test_accuracy": test_acc}


def save_val_outputs(workdir: str | os.PathLike, logits, labels) -> pathlib.Path:
  """Writes the validation logits and labels atomically (for new thresholds)."""
  path = pathlib.Path(workdir) / run_files.VAL_OUTPUTS
  fileio.atomic_save_npz(path, logits=np.asarray(logits, np.float32),
                         label=np.asarray(labels, np.int64))
  return path
