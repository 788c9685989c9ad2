"""A finished model under shift: the corruption suite on its test split.

:func:`shift_records` corrupts the test images at the run's resolution (the
uint8 working images the evaluation path starts from,
:func:`working_array`) with every corruption and severity of
:mod:`ols_jax.corruptions`, runs the model, and scores each set raw and with
the run's own temperature (fitted once on the clean validation split, never
refitted on shifted data). :mod:`ols_jax.shift_run` does the same for a finished
run after the fact (``experiments/shift.py``); :func:`write_outputs` writes
the records and their figure.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ols_jax import fileio
from ols_jax import corruptions
from ols_jax.config import ConfigError
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


# ----------------------------------------------------------------------------
# A finished run, after the fact.
# ----------------------------------------------------------------------------


def parse_corruptions(text: Optional[str]) -> tuple[str, ...]:
  """``--corruptions``: comma-separated names of :data:`ols_jax.corruptions.CORRUPTIONS`.

  None means all of them. Raises ConfigError naming the flag.
  """
  if text is None:
    return tuple(corruptions.CORRUPTIONS)
  names = [n.strip() for n in str(text).split(",") if n.strip()]
  if not names:
    raise ConfigError(f"--corruptions: expected a comma-separated list, got {text!r}")
  for name in names:
    if name not in corruptions.CORRUPTIONS:
      raise ConfigError(f"--corruptions: unknown corruption {name!r}; expected some of "
                        f"{', '.join(corruptions.CORRUPTIONS)}")
  if len(set(names)) != len(names):
    raise ConfigError(f"--corruptions: a corruption given twice in {text!r}")
  return tuple(names)


def parse_severities(text: Optional[str]) -> tuple[int, ...]:
  """``--severities``: comma-separated ints in 1..5 (None: all); ConfigError if bad."""
  if text is None:
    return tuple(corruptions.SEVERITIES)
  top = corruptions.SEVERITIES[-1]
  items = [t.strip() for t in str(text).split(",") if t.strip()]
  try:
    values = [int(t) for t in items]
  except ValueError:
    values = []
  if not values or any(v < 1 or v > top for v in values):
    raise ConfigError(f"--severities: expected comma-separated integers in 1..{top} (the "
                      f"clean set, severity 0, is always scored), got {text!r}")
  if len(set(values)) != len(values):
    raise ConfigError(f"--severities: a severity given twice in {text!r}")
  return tuple(values)


def check_output_paths(output: str | os.PathLike, figure: Optional[str | os.PathLike] = None
                       ) -> tuple[pathlib.Path, Optional[pathlib.Path]]:
  """The ``.json`` records file and the optional ``.png`` figure, checked up front."""
  out = []
  for flag, path, suffix in (("--output", output, ".json"), ("--figure", figure, ".png")):
    if path is None:
      out.append(None)
      continue
    path = pathlib.Path(path)
    if path.suffix.lower() != suffix:
      raise ConfigError(f"{flag} {path}: expected a {suffix} file name")
    if path.is_dir():
      raise ConfigError(f"{flag} {path}: is a folder")
    if not path.parent.is_dir():
      raise ConfigError(f"{flag} {path}: folder {path.parent} does not exist")
    out.append(path)
  return out[0], out[1]


def write_outputs(records: Sequence[dict[str, Any]], output: str | os.PathLike,
                  figure: Optional[str | os.PathLike] = None, *,
                  title: str = "Under shift") -> None:
  """The records as a JSON list and, optionally, their figure; atomically.

  The JSON goes to a temporary file that is renamed once the figure
  (:func:`ols_jax.plots.shift_curves`, itself written atomically) is done, so
  an error leaves neither half-written.
  """
  from ols_jax import plots  # pylint: disable=import-outside-toplevel
  output = pathlib.Path(output)
  for r in records:
    for key in RECORD_FIELDS[2:]:
      if not math.isfinite(float(r[key])):
        raise ValueError(f"shift record {r['corruption']} / {r['severity']}: {key} is "
                         f"{r[key]}")
  with fileio.atomic_path(output) as tmp:
    tmp.write_text(json.dumps([{k: r[k] for k in RECORD_FIELDS} for r in records],
                              indent=1) + "\n", encoding="utf-8")
    if figure is not None:
      plots.shift_curves(records, figure, title=title)
