"""A finished run's model on new scans: calibrated predictions and abstention.

``predict_to_file`` restores the run (:func:`ols_jax.runs.load`: its
``config.json`` and selected checkpoint, the best by validation, the one its
test metrics come from), reads the inputs (:func:`ols_jax.data.inputs.collect_inputs`:
a folder tree or one file of PNG / JPEG / TIFF / ... images, DICOM files, or
one split of a MedMNIST-layout npz), preprocesses every image exactly as the
evaluation did (:func:`ols_jax.data.augment.preprocess`: working colour space,
black padding to a square, bilinear resize, [-1, 1]), runs the evaluation
step on all devices in batches (:func:`ols_jax.runs.infer`: the last one
padded and masked), and writes one row per image to a CSV or JSONL file.

Probabilities are temperature-scaled with the run's ``temperature`` (fitted on
validation) unless ``temperature=False``. A row is marked ``abstain`` when its
confidence is below the run's abstention threshold
(:func:`ols_jax.runs.abstention_threshold`, see :mod:`ols_jax.selective`: the
lowest validation confidence whose accepted set reaches the target accuracy).
A row also gets a split-conformal prediction set (:mod:`ols_jax.conformal`,
calibrated on the run's saved validation outputs with the very probabilities
the rows publish) and an out-of-distribution flag (:mod:`ols_jax.ood`:
Mahalanobis distance of the penultimate embedding, or energy / MSP of the raw
logits, below a threshold that keeps 95% of the validation scans). The output
is written to a temporary file and renamed at the end, so an error never
leaves a partial file.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import pathlib
import sys
from typing import Any, Callable, Iterator, Optional, Sequence

import jax
import numpy as np

from ols_jax import fileio
from ols_jax import conformal
from ols_jax import evaluation
from ols_jax import runs
from ols_jax import selective
from ols_jax.config import ConfigError
from ols_jax.data import augment
from ols_jax.data import inputs as inputs_lib
from ols_jax.data.errors import DataError
from ols_jax.logging_utils import Progress

OUTPUT_SUFFIXES = (".csv", ".jsonl")
TOP_K = 5
DECIMALS = 6
# Separator of the class names of a prediction set in a CSV cell.
SET_SEPARATOR = "|"


# ----------------------------------------------------------------------------
# Prediction sets.
# ----------------------------------------------------------------------------


def set_names(sets: np.ndarray, probs: np.ndarray,
              class_names: Sequence[str]) -> list[list[str]]:
  """Each set's class names by decreasing probability (ties by class index)."""
  order = np.argsort(-np.asarray(probs), axis=1, kind="stable")
  return [[class_names[int(j)] for j in row if keep[j]]
          for row, keep in zip(order, np.asarray(sets, bool))]


# ----------------------------------------------------------------------------
# The model on all devices.
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class Predictions:
  """Logits and embeddings of the images read, in input order, and what was skipped."""
  names: list[str]
  logits: np.ndarray          # (N, K) float32
  labels: Optional[np.ndarray]  # (N,) or None
  skipped: list[str]          # one message per skipped input
  embeddings: Optional[np.ndarray] = None  # (N, D) float32 penultimate features


def _batches(run: runs.FinishedRun, inputs: inputs_lib.Inputs, batch_size: int,
             skip_bad: bool, skipped: list[str], kept: list[int],
             on_skip: Callable[[str], None]) -> Iterator[np.ndarray]:
  """Preprocessed batches of the valid images; their input indices go to ``kept``."""
  size, channels = run.config.image_size, run.config.channels
  images = []
  for i in range(len(inputs)):
    try:
      image = inputs_lib.check_image(inputs.read(i), inputs.names[i])
    except DataError as e:
      if not skip_bad:
        raise
      skipped.append(str(e))
      on_skip(str(e))
      continue
    images.append(augment.preprocess(image, image_size=size, channels=channels))
    kept.append(i)
    if len(images) == batch_size:
      yield np.stack(images)
      images = []
  if images:
    yield np.stack(images)


def predict_logits(run: runs.FinishedRun, inputs: inputs_lib.Inputs, *,
                   batch_size: int = 0, skip_bad: bool = False,
                   devices: Optional[Sequence[Any]] = None, progress: bool = True,
                   on_skip: Callable[[str], None] = lambda message: None
                   ) -> Predictions:
  """Runs the run's model over the inputs on all devices (:func:`ols_jax.runs.infer`).

  Args:
    run: from :func:`ols_jax.runs.load`.
    inputs: from :func:`ols_jax.data.inputs.collect_inputs`.
    batch_size: global batch (0: the run's ``eval_batch_size``), rounded up to
      a multiple of the device count; the last batch is padded and masked.
    skip_bad: skip unreadable inputs (else the first one raises DataError).
    devices: the devices (default: all).
    progress: a progress line on stderr for long inputs.
    on_skip: called with the message of each skipped input.

  Returns:
    :class:`Predictions` (logits and the penultimate embeddings the evaluation
    step returns beside them).
  """
  devices = list(jax.devices() if devices is None else devices)
  batch_size = int(batch_size or run.config.eval_batch_size)
  if batch_size < 1:
    raise ConfigError(f"--batch_size: expected a positive integer, got {batch_size}")
  batch_size = runs.global_batch_size(run, batch_size, len(devices))
  bar = Progress(math.ceil(len(inputs) / batch_size), enabled=progress, stream=sys.stderr,
                 quiet_start=True)
  skipped: list[str] = []
  kept: list[int] = []
  out = runs.infer(runs.on_devices(run, devices),
                   _batches(run, inputs, batch_size, skip_bad, skipped, kept, on_skip),
                   batch_size=batch_size, on_step=lambda step: bar.update(step, batch_size))
  bar.close()
  return Predictions(
      names=[inputs.names[i] for i in kept],
      logits=out.logits,
      labels=None if inputs.labels is None else inputs.labels[kept],
      skipped=skipped,
      embeddings=out.embeddings if kept else None)


# ----------------------------------------------------------------------------
# Output.
# ----------------------------------------------------------------------------


def check_output_path(path: str | os.PathLike) -> pathlib.Path:
  """The output file, checked before any work: suffix and folder."""
  path = pathlib.Path(path)
  if path.suffix.lower() not in OUTPUT_SUFFIXES:
    raise ConfigError(f"--output {path}: expected a .csv or .jsonl file name")
  if path.is_dir():
    raise ConfigError(f"--output {path}: is a folder")
  if not path.parent.is_dir():
    raise ConfigError(f"--output {path}: folder {path.parent} does not exist")
  return path


def prediction_rows(names: Sequence[str], probs: np.ndarray,
                    class_names: Sequence[str], *, labels: Optional[np.ndarray] = None,
                    threshold: Optional[float] = None,
                    sets: Optional[np.ndarray] = None,
                    ood_score: Optional[np.ndarray] = None,
                    ood_threshold: Optional[float] = None,
                    label_names: Optional[Sequence[str]] = None) -> list[dict[str, Any]]:
  """One dict per image: path, label, prediction, confidence, abstain,
  prediction set, OOD score and flag, top-k, probabilities (rounded to
  :data:`DECIMALS`).

  Args:
    names: input names.
    probs: ``(N, K)`` probabilities.
    class_names: ``K`` names.
    labels: ``(N,)`` known labels or None.
    threshold: abstain iff confidence < threshold (None: never).
    sets: ``(N, K)`` prediction-set mask, or None (no ``prediction_set``).
    ood_score: ``(N,)`` OOD scores, or None (no ``ood_score`` / ``ood``).
    ood_threshold: ``ood`` iff ``ood_score < ood_threshold``.
    label_names: what ``labels`` index (None: ``class_names``).
  """
  probs = np.asarray(probs)
  k = min(TOP_K, probs.shape[1])
  pred = np.argmax(probs, axis=1)
  conf = probs.max(axis=1)
  top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
  members = None if sets is None else set_names(sets, probs, class_names)
  rows = []
  for i, name in enumerate(names):
    row = {"path": name}
    if labels is not None:
      row["label"] = (label_names or class_names)[int(labels[i])]
    row.update(
        prediction=class_names[int(pred[i])],
        confidence=round(float(conf[i]), DECIMALS),
        abstain=bool(threshold is not None and conf[i] < threshold))
    if members is not None:
      row["prediction_set"] = members[i]
    if ood_score is not None:
      row["ood_score"] = round(float(ood_score[i]), DECIMALS)
      row["ood"] = bool(ood_score[i] < ood_threshold)
    row.update(
        top=[(class_names[int(j)], round(float(probs[i, j]), DECIMALS)) for j in top[i]],
        probabilities={c: round(float(p), DECIMALS) for c, p in zip(class_names, probs[i])})
    rows.append(row)
  return rows


def _csv_text(rows: list[dict[str, Any]], class_names: Sequence[str]) -> str:
  first = rows[0] if rows else {}
  with_label = "label" in first
  with_set = "prediction_set" in first
  with_ood = "ood" in first
  k = min(TOP_K, len(class_names))
  header = ["path"] + (["label"] if with_label else []) + [
      "prediction", "confidence", "abstain"]
  header += (["prediction_set"] if with_set else []) + (
      ["ood_score", "ood"] if with_ood else [])
  for j in range(1, k + 1):
    header += [f"top{j}", f"top{j}_prob"]
  header += [f"p_{c}" for c in class_names]
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(header)
  fmt = f"{{:.{DECIMALS}f}}"
  for row in rows:
    cells = [row["path"]] + ([row["label"]] if with_label else []) + [
        row["prediction"], fmt.format(row["confidence"]),
        "true" if row["abstain"] else "false"]
    if with_set:
      cells.append(SET_SEPARATOR.join(row["prediction_set"]))
    if with_ood:
      cells += [fmt.format(row["ood_score"]), "true" if row["ood"] else "false"]
    for name, p in row["top"]:
      cells += [name, fmt.format(p)]
    cells += [fmt.format(row["probabilities"][c]) for c in class_names]
    writer.writerow(cells)
  return buf.getvalue()


def _jsonl_text(rows: list[dict[str, Any]]) -> str:
  lines = []
  for row in rows:
    out = {k: v for k, v in row.items() if k not in ("top", "probabilities")}
    out["top5"] = [{"class": c, "probability": p} for c, p in row["top"]]
    out["probabilities"] = row["probabilities"]
    lines.append(json.dumps(out, ensure_ascii=False))
  return "".join(line + "\n" for line in lines)


def write_rows(path: str | os.PathLike, rows: list[dict[str, Any]],
               class_names: Sequence[str]) -> pathlib.Path:
  """Writes rows as CSV or JSONL (by suffix), atomically."""
  path = check_output_path(path)
  text = (_csv_text(rows, class_names) if path.suffix.lower() == ".csv"
          else _jsonl_text(rows))
  fileio.atomic_write_text(path, text)
  return path


# ----------------------------------------------------------------------------
# Everything at once.
# ----------------------------------------------------------------------------


def predict_to_file(workdir: str | os.PathLike, input_path: str | os.PathLike,
                    output: str | os.PathLike, *, split: str = "test",
                    temperature: bool = True, abstain: bool = True,
                    target_accuracy: Optional[float] = None, sets: bool = True,
                    conformal_method: str = "aps",
                    conformal_alpha: Optional[float] = None, ood: bool = True,
                    ood_score: Optional[str] = None, skip_bad: bool = False,
                    batch_size: int = 0, progress: bool = True,
                    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)
                    ) -> dict[str, Any]:
  """Classifies the inputs with a finished run and writes the predictions.

  Args:
    workdir: the run.
    input_path: see :func:`ols_jax.data.inputs.collect_inputs`.
    output: a ``.csv`` or ``.jsonl`` file.
    split: the npz split.
    temperature: apply the run's temperature (else raw probabilities).
    abstain: mark rows below the abstention threshold.
    target_accuracy: choose a threshold for this target instead of the run's.
    sets: add each row's conformal prediction set
      (:func:`ols_jax.runs.conformal_threshold`).
    conformal_method: ``'aps'`` or ``'lac'``.
    conformal_alpha: miscoverage level (None: the run's ``conformal_alpha``).
    ood: add each row's OOD score and flag (:func:`ols_jax.runs.ood_rule`).
    ood_score: ``'mahalanobis'``, ``'energy'``, ``'msp'`` or None (Mahalanobis
      when the run saved :data:`ols_jax.run_files.OOD_FIT`, else energy).
    skip_bad: skip unreadable inputs (reported through ``log``).
    batch_size: global batch (0: the run's ``eval_batch_size``).
    progress: a progress line on stderr for long inputs.
    log: receives notes and skipped-input messages.

  Returns:
    A summary: ``count``, ``skipped``, ``abstained``, ``threshold``,
    ``target_accuracy``, ``temperature``, ``output``; with sets ``sets``
    (``method``, ``alpha``, ``qhat``, ``mean_size``, ``empty``); with OOD
    ``ood`` (``score``, ``threshold``, ``tpr``, ``source``, ``flagged``);
    and, when labels are known, ``accuracy``, ``accepted_accuracy`` and the
    sets' ``coverage``.
  """
  output = check_output_path(output)
  if sets:
    runs.check_set_options(conformal_method, conformal_alpha)
  if ood:
    runs.check_ood_score(ood_score)
  run = runs.load(workdir)
  threshold = target = None
  if abstain:
    threshold, target, note = runs.abstention_threshold(
        run, temperature=temperature, target_accuracy=target_accuracy)
    if note:
      log(note)
  qhat = alpha = None
  if sets:
    bad = [c for c in run.class_names if SET_SEPARATOR in c]
    if bad and output.suffix.lower() == ".csv":
      raise ConfigError(f"--output {output}: class name {bad[0]!r} holds {SET_SEPARATOR!r}, "
                        f"the CSV separator of prediction sets; write .jsonl or pass --no_sets")
    qhat, alpha = runs.conformal_threshold(run, method=conformal_method,
                                           alpha=conformal_alpha, temperature=temperature)
  rule = runs.ood_rule(run, ood_score) if ood else None
  inputs = inputs_lib.collect_inputs(input_path, split=split)
  # Labels in another class space (an npz whose class_names differ from the
  # run's) are reported by their own names and never scored.
  foreign = (inputs.labels is not None and inputs.label_names is not None
             and tuple(inputs.label_names) != tuple(run.class_names))
  if not foreign and inputs.labels is not None and len(inputs.labels) and (
      inputs.labels.min() < 0 or inputs.labels.max() >= run.num_classes):
    raise DataError(f"input {input_path}: labels run from {inputs.labels.min()} to "
                    f"{inputs.labels.max()}, but the run has {run.num_classes} classes")
  preds = predict_logits(run, inputs, batch_size=batch_size, skip_bad=skip_bad,
                         progress=progress, on_skip=lambda m: log(f"skipped: {m}"))
  if not preds.names:
    raise DataError(f"input {input_path}: no readable image "
                    f"({len(preds.skipped)} skipped)")
  t = run.temperature if temperature else 1.0
  probs = selective.probabilities(preds.logits, t)
  masks = conformal.prediction_sets(probs, qhat, conformal_method) if sets else None
  scores = (runs.ood_scores(rule.score, preds.logits, preds.embeddings, rule.fit)
            if rule is not None else None)
  rows = prediction_rows(preds.names, probs, run.class_names, labels=preds.labels,
                         threshold=threshold, sets=masks, ood_score=scores,
                         ood_threshold=None if rule is None else rule.threshold,
                         label_names=inputs.label_names if foreign else None)
  write_rows(output, rows, run.class_names)
  conf = probs.max(axis=1)
  accepted = conf >= threshold if threshold is not None else np.ones(len(conf), bool)
  summary = {"count": len(rows), "skipped": len(preds.skipped),
             "abstained": int(np.sum(~accepted)), "threshold": threshold,
             "target_accuracy": target, "temperature": t, "output": str(output),
             "method": run.config.method, "model": run.config.model}
  if masks is not None:
    sizes = masks.sum(axis=1)
    summary["sets"] = {"method": conformal_method, "alpha": alpha,
                       "qhat": qhat if math.isfinite(qhat) else None,
                       "mean_size": float(sizes.mean()), "empty": int(np.sum(sizes == 0))}
  if rule is not None:
    summary["ood"] = {"score": rule.score, "threshold": rule.threshold,
                      "tpr": evaluation.OOD_TPR, "source": rule.source,
                      "flagged": int(np.sum(scores < rule.threshold))}
  if foreign:
    summary["foreign_labels"] = list(inputs.label_names)
  elif preds.labels is not None:
    correct = np.argmax(probs, axis=1) == preds.labels
    summary["accuracy"] = float(correct.mean())
    summary["accepted_accuracy"] = (float(correct[accepted].mean())
                                    if accepted.any() else None)
    if masks is not None:
      summary["sets"]["coverage"] = float(masks[np.arange(len(masks)), preds.labels].mean())
  return summary


def summary_line(summary: dict[str, Any]) -> str:
  """The one line the command prints when it is done."""
  text = (f"predicted {summary['count']} images with {summary['method']} / "
          f"{summary['model']} (T={summary['temperature']:.3f})")
  if summary["threshold"] is not None:
    text += (f": {summary['count'] - summary['abstained']} accepted, "
             f"{summary['abstained']} abstained (confidence < "
             f"{summary['threshold']:.4f}, target accuracy "
             f"{100 * summary['target_accuracy']:.1f}%)")
  sets = summary.get("sets")
  if sets:
    text += (f"; {sets['method'].upper()} sets at {100 * (1 - sets['alpha']):.1f}% target "
             f"coverage: mean size {sets['mean_size']:.2f}")
    if sets["empty"]:
      text += f", {sets['empty']} empty"
    if "coverage" in sets:
      text += f", coverage {100 * sets['coverage']:.2f}%"
  flags = summary.get("ood")
  if flags:
    text += (f"; {flags['flagged']} flagged out-of-distribution ({flags['score']}, "
             f"threshold keeps {100 * flags['tpr']:.0f}% of val)")
  if summary["skipped"]:
    text += f"; {summary['skipped']} bad inputs skipped"
  if "foreign_labels" in summary:
    text += ("; labels are the input's own classes ("
             + ", ".join(summary["foreign_labels"])
             + "), not the run's: accuracy and coverage not scored")
  if "accuracy" in summary:
    acc = summary["accepted_accuracy"]
    text += (f"; accuracy {100 * summary['accuracy']:.2f}% on all, "
             + (f"{100 * acc:.2f}% on the accepted" if acc is not None else
                "none accepted"))
  return text + f" -> {summary['output']}"
