"""A finished model under shift: the corruption suite on its test split.

:func:`shift_records` corrupts the test images at the run's resolution (the
uint8 working images the evaluation path starts from,
:func:`working_array`) with every corruption and severity of
:mod:`ols_jax.corruptions`, runs the model, and scores each set raw and with
the run's own temperature (fitted once on the clean validation split, never
refitted on shifted data).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np

from ols_jax import corruptions
from ols_jax.data import augment
from ols_jax.data import sources

RECORD_FIELDS = ("corruption", "severity", "top1_error", "ece", "nll", "ece_ts",
                 "nll_ts", "aurc")


def working_array(source: Any, *, image_size: int, channels: int) -> tuple[np.ndarray,
                                                                          np.ndarray]:
  """A split as uint8 working images at the run's size, and its labels.

  The same conversion the evaluation applies before scaling
  (:func:`ols_jax.data.augment.working_image`: working colour space, padded
  to a square, resized), so a batch of these through the evaluation path
  equals the clean evaluation.

  Args:
    source: a data source (``len``, ``src[i]``).
    image_size: the run's image size.
    channels: the run's channels.

  Returns:
    ``(images, labels)``: ``(N, S, S)`` or ``(N, S, S, 3)`` uint8 and ``(N,)``
    int64.
  """
  stored = getattr(source, "images", None)
  if (isinstance(stored, np.ndarray) and stored.dtype == np.uint8
      and stored.ndim in (3, 4) and stored.shape[1] == stored.shape[2] == image_size):
    return (augment.to_working_batch(stored, channels),
            sources.source_labels(source))
  images = [augment.working_image(source[i]["image"], image_size=image_size,
                                  channels=channels) for i in range(len(source))]
  return np.stack(images), sources.source_labels(source)


def shift_records(eval_logits: Callable[[np.ndarray, np.ndarray], np.ndarray],
                  images: np.ndarray, labels: np.ndarray, *, temperature: float,
                  score_fn: Callable[..., Any],
                  names: Sequence[str] = corruptions.CORRUPTIONS,
                  severities: Sequence[int] = corruptions.SEVERITIES,
                  seed: int = 0,
                  on_record: Optional[Callable[[dict[str, Any]], None]] = None
                  ) -> list[dict[str, Any]]:
  """Scores the model on every corruption and severity of the test images.

  Args:
    eval_logits: uint8 working images and labels -> ``(N, K)`` logits (the
      run's evaluation path).
    images: clean uint8 working images (:func:`working_array`).
    labels: their labels.
    temperature: the run's temperature (fitted on clean validation).
    score_fn: ``score_fn(logits, labels, temperature=T)`` -> an object with a
      ``metrics`` dict (:func:`ols_jax.evaluation.score`).
    names: corruptions to apply.
    severities: severities to apply (0 is the clean set).
    seed: base seed of the corruptions.
    on_record: called with each record as it is made (progress).

  Returns:
    One record per (corruption, severity) with :data:`RECORD_FIELDS`, the
    clean set first as ``('none', 0)``.
  """
  def record(name, severity, corrupted):
    logits = eval_logits(corrupted, labels)
    raw = score_fn(logits, labels).metrics
    ts = score_fn(logits, labels, temperature=temperature).metrics
    rec = {"corruption": name, "severity": int(severity),
           "top1_error": raw["top1_error"], "ece": raw["ece"], "nll": raw["nll"],
           "ece_ts": ts["ece"], "nll_ts": ts["nll"], "aurc": raw["aurc"]}
    if on_record is not None:
      on_record(rec)
    return rec

  records = [record("none", 0, images)]
  for name in names:
    for severity in severities:
      records.append(record(name, severity,
                            corruptions.corrupt(images, name, severity, seed=seed)))
  return records


def mean_over_severities(records: Sequence[dict[str, Any]], field: str = "ece"
                         ) -> dict[str, float]:
  """Each corruption's ``field`` averaged over its severities (clean left out)."""
  out: dict[str, list[float]] = {}
  for r in records:
    if r["severity"] > 0:
      out.setdefault(r["corruption"], []).append(float(r[field]))
  return {k: float(np.mean(v)) for k, v in out.items()}
