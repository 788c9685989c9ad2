"""A finished run's model on new scans: calibrated predictions and abstention.

``predict_to_file`` restores the run's selected checkpoint (the best by
validation, the one its test metrics come from) and ``config.json``, reads the
inputs (a folder tree or one file of PNG / JPEG / TIFF / ... images, DICOM
files, or one split of a MedMNIST-layout npz), preprocesses every image
exactly as the evaluation did (:func:`ols_jax.data.augment.preprocess`:
working colour space, black padding to a square, bilinear resize, [-1, 1]),
runs the evaluation step on all devices in batches (the last one padded and
masked), and writes one row per image to a CSV or JSONL file.

Probabilities are temperature-scaled with the run's ``temperature`` (fitted on
validation) unless ``temperature=False``. A row is marked ``abstain`` when its
confidence is below the run's abstention threshold (see
:mod:`ols_jax.selective`: the lowest validation confidence whose accepted set
reaches the target accuracy). The output is written to a temporary file and
renamed at the end, so an error never leaves a partial file.
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
import zipfile
from typing import Any, Callable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ols_jax import checkpointing
from ols_jax import config as config_lib
from ols_jax import ols
from ols_jax import parallel
from ols_jax import selective
from ols_jax import train
from ols_jax import train_state as train_state_lib
from ols_jax.config import ConfigError
from ols_jax.data import augment
from ols_jax.data import dicom
from ols_jax.data import sources
from ols_jax.data.errors import DataError
from ols_jax.logging_utils import Progress

MIN_SIDE = 8
OUTPUT_SUFFIXES = (".csv", ".jsonl")
TOP_K = 5
DECIMALS = 6


# ----------------------------------------------------------------------------
# The trained run.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Run:
  """What inference needs from a finished run's workdir."""
  workdir: pathlib.Path
  config: ml_collections.ConfigDict
  results: dict[str, Any]
  class_names: tuple[str, ...]
  variables: dict[str, Any]
  apply_fn: Callable[..., Any]
  checkpoint: pathlib.Path

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def temperature(self) -> float:
    return float(self.results["temperature"])


def _read_json(path: pathlib.Path) -> Any:
  try:
    return json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ConfigError(f"{path}: unreadable ({e})") from None


def load_run(workdir: str | os.PathLike) -> Run:
  """Restores a finished run: its config, results and selected checkpoint.

  Args:
    workdir: the run's workdir (with ``config.json``, ``results.json`` and
      ``checkpoints/``).

  Returns:
    A :class:`Run`.

  Raises:
    ConfigError: the folder does not hold a finished run.
  """
  workdir = pathlib.Path(workdir)
  if not workdir.is_dir():
    raise ConfigError(f"workdir {workdir}: not found")
  if not (workdir / "config.json").is_file():
    raise ConfigError(f"workdir {workdir}: no config.json (not a training run)")
  if not (workdir / "results.json").is_file():
    raise ConfigError(f"workdir {workdir}: no results.json (the run has not "
                      f"finished; rerun its training command to finish it)")
  config = ml_collections.ConfigDict(_read_json(workdir / "config.json"))
  results = _read_json(workdir / "results.json")
  for key in ("class_names", "temperature"):
    if not isinstance(results, dict) or key not in results:
      raise ConfigError(f"{workdir / 'results.json'}: no {key!r} (not the "
                        f"results of a finished run)")
  names = tuple(str(n) for n in results["class_names"])
  model = train.make_model(config, len(names))
  shape = (1, config.image_size, config.image_size, config.channels)
  abstract = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros(shape, jnp.float32), train=False))
  variables, path = checkpointing.restore_model_variables(workdir, abstract, len(names))
  return Run(workdir=workdir, config=config, results=results, class_names=names,
             variables=variables, apply_fn=model.apply, checkpoint=path)


def abstention_threshold(run: Run, *, temperature: bool = True,
                         target_accuracy: Optional[float] = None
                         ) -> tuple[float, float, Optional[str]]:
  """The threshold for the confidences that predict reports.

  The run's stored threshold (chosen on validation with temperature-scaled
  probabilities) when that is what is asked for; otherwise a new one chosen
  with the same rule on the validation outputs the run saved
  (:data:`ols_jax.selective.VAL_OUTPUTS`).

  Args:
    run: the run.
    temperature: whether the confidences are temperature-scaled.
    target_accuracy: a target other than the run's, or None.

  Returns:
    ``(threshold, target_accuracy, note)``; ``note`` is a message for the
    user when a requested target could not be honoured, else None.

  Raises:
    ConfigError: the run has no threshold, or raw confidences were asked for
      and the run saved no validation outputs.
  """
  stored = run.results.get("selective")
  if target_accuracy is not None and not 0.0 < target_accuracy <= 1.0:
    raise ConfigError(f"--target_accuracy: expected a value in (0, 1], got "
                      f"{target_accuracy!r}")
  default_target = (stored["target_accuracy"] if stored
                    else float(run.config.get("target_accuracy", 0.95)))
  target = default_target if target_accuracy is None else float(target_accuracy)
  if stored and temperature and math.isclose(target, stored["target_accuracy"]):
    return float(stored["threshold"]), target, None
  val_path = run.workdir / selective.VAL_OUTPUTS
  if val_path.is_file():
    try:
      with np.load(val_path) as z:
        logits, labels = z["logits"], z["label"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
      raise ConfigError(f"{val_path}: unreadable ({e})") from None
    conf, ok = selective.confidence_and_correct(
        selective.probabilities(logits, run.temperature if temperature else 1.0), labels)
    return selective.select_threshold(conf, ok, target), target, None
  if not stored:
    raise ConfigError(f"workdir {run.workdir}: results.json has no abstention "
                      f"threshold (a run from before selective prediction); pass "
                      f"--no_abstain")
  if not temperature:
    raise ConfigError(f"--no_temperature: workdir {run.workdir} saved no validation "
                      f"outputs ({selective.VAL_OUTPUTS}) to choose a threshold for "
                      f"raw confidences; pass --no_abstain too")
  note = (f"note: workdir {run.workdir} saved no validation outputs "
          f"({selective.VAL_OUTPUTS}) to choose a threshold for a target accuracy "
          f"of {target}; using the stored threshold {stored['threshold']:.4f} "
          f"(target {stored['target_accuracy']})")
  return float(stored["threshold"]), float(stored["target_accuracy"]), note


# ----------------------------------------------------------------------------
# Inputs.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Inputs:
  """The images to classify: names, a reader per index, optional labels."""
  names: Sequence[str]
  read: Callable[[int], np.ndarray]  # uint8 (H, W) or (H, W, 3); DataError if bad.
  labels: Optional[np.ndarray] = None  # class index per image, if known.

  def __len__(self) -> int:
    return len(self.names)


def check_image(image: np.ndarray, name: str) -> np.ndarray:
  """An image as ``(H, W)`` or ``(H, W, 3)`` uint8, or a DataError naming it."""
  image = sources.squeeze_gray(np.asarray(image))
  if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3):
    channels = image.shape[-1] if image.ndim == 3 else "?"
    raise DataError(f"image {name}: expected 1 (grayscale) or 3 (RGB) channels, "
                    f"got {channels} (shape {image.shape})")
  if image.dtype != np.uint8:
    raise DataError(f"image {name}: expected uint8 pixels, got {image.dtype}")
  h, w = image.shape[:2]
  if min(h, w) < MIN_SIDE:
    raise DataError(f"image {name}: too small ({h}x{w} pixels; at least "
                    f"{MIN_SIDE} per side)")
  return image


def read_input_file(path: str | os.PathLike) -> np.ndarray:
  """Decodes one image or DICOM file and checks it (see :func:`check_image`)."""
  if dicom.is_dicom(path):
    image = dicom.read_dicom(path)
  else:
    image = sources.read_image(path)
  return check_image(image, str(path))


def _is_input_file(path: pathlib.Path) -> bool:
  suffix = path.suffix.lower()
  if suffix in sources.IMAGE_SUFFIXES or suffix == ".dcm":
    return True
  return suffix == "" and dicom.is_dicom(path)


def list_input_files(folder: pathlib.Path) -> list[pathlib.Path]:
  """Image and DICOM files anywhere under ``folder``, sorted by relative path.

  Hidden files and folders are skipped, as are files of other types; a file
  without a suffix counts when it starts with the DICOM preamble.
  """
  found = []
  for path in folder.rglob("*"):
    rel = path.relative_to(folder)
    if any(part.startswith(".") for part in rel.parts) or not path.is_file():
      continue
    if _is_input_file(path):
      found.append(path)
  return sorted(found, key=lambda p: p.relative_to(folder).parts)


def _npz_inputs(path: pathlib.Path, split: str) -> Inputs:
  images_key, labels_key = f"{split}_images", f"{split}_labels"
  try:
    with np.load(path, allow_pickle=False) as z:
      keys = sorted(z.files)
      if images_key not in keys:
        raise DataError(
            f"npz {path}: no {images_key!r} array (keys: {', '.join(keys) or 'none'}); "
            f"expected the MedMNIST layout <split>_images[, <split>_labels]")
      images = z[images_key]
      labels = z[labels_key] if labels_key in keys else None
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    if isinstance(e, DataError):
      raise
    raise DataError(f"cannot read npz {path}: {e}") from None
  if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] in (1, 3))):
    raise DataError(f"npz {path}: {images_key} has shape {images.shape}; expected "
                    f"(N, H, W) or (N, H, W, 1 or 3)")
  if images.dtype != np.uint8:
    raise DataError(f"npz {path}: {images_key} holds {images.dtype}; expected uint8")
  if len(images) == 0:
    raise DataError(f"npz {path}: {images_key} is empty")
  if min(images.shape[1:3]) < MIN_SIDE:
    raise DataError(f"npz {path}: {images_key} too small ({images.shape[1]}x"
                    f"{images.shape[2]} pixels; at least {MIN_SIDE} per side)")
  if labels is not None:
    labels = np.asarray(labels)
    if labels.size != len(images) or not np.issubdtype(labels.dtype, np.integer):
      raise DataError(f"npz {path}: {labels_key} has shape {labels.shape} and dtype "
                      f"{labels.dtype}; expected one integer label per image")
    labels = labels.reshape(-1).astype(np.int64)
  names = [f"npz:{split}:{i}" for i in range(len(images))]
  return Inputs(names=names, read=lambda i: images[i], labels=labels)


def collect_inputs(path: str | os.PathLike, *, split: str = "test") -> Inputs:
  """The images at ``path``: a folder tree, an image / DICOM file, or an npz.

  Args:
    path: the input.
    split: the npz split (``<split>_images``, optional ``<split>_labels``).

  Returns:
    :class:`Inputs` (files are decoded when read).
  """
  path = pathlib.Path(path)
  if path.is_dir():
    files = list_input_files(path)
    if not files:
      raise DataError(f"input folder {path}: no image or DICOM files "
                      f"({', '.join(sources.IMAGE_SUFFIXES)}, .dcm)")
    return Inputs(names=[str(f) for f in files],
                  read=lambda i: read_input_file(files[i]))
  if not path.exists():
    raise DataError(f"input {path}: not found")
  if path.suffix.lower() == ".npz":
    return _npz_inputs(path, split)
  if _is_input_file(path) or dicom.is_dicom(path):
    return Inputs(names=[str(path)], read=lambda i: read_input_file(path))
  raise DataError(f"input {path}: unsupported file type; expected an image "
                  f"({', '.join(sources.IMAGE_SUFFIXES)}), a DICOM file or a "
                  f"MedMNIST-layout .npz")


# ----------------------------------------------------------------------------
# The model on all devices.
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class Predictions:
  """Logits of the images read, in input order, and what was skipped."""
  names: list[str]
  logits: np.ndarray          # (N, K) float32
  labels: Optional[np.ndarray]  # (N,) or None
  skipped: list[str]          # one message per skipped input


def _inference_state(run: Run) -> train_state_lib.TrainState:
  """A TrainState holding only what the evaluation step reads."""
  return train_state_lib.TrainState(
      step=jnp.zeros((), jnp.int32), params=run.variables["params"],
      batch_stats=run.variables.get("batch_stats", {}), opt_state=(),
      ols=ols.init(run.num_classes), rng=jax.random.PRNGKey(0),
      apply_fn=run.apply_fn, tx=optax.identity())


def _batches(run: Run, inputs: Inputs, batch_size: int, skip_bad: bool,
             skipped: list[str], on_skip: Callable[[str], None]
             ) -> Iterator[tuple[np.ndarray, list[int]]]:
  """Preprocessed batches of valid images and the input indices they hold."""
  size, channels = run.config.image_size, run.config.channels
  images, index = [], []
  for i in range(len(inputs)):
    try:
      image = check_image(inputs.read(i), inputs.names[i])
    except DataError as e:
      if not skip_bad:
        raise
      skipped.append(str(e))
      on_skip(str(e))
      continue
    images.append(augment.preprocess(image, image_size=size, channels=channels))
    index.append(i)
    if len(images) == batch_size:
      yield np.stack(images), index
      images, index = [], []
  if images:
    yield np.stack(images), index


def predict_logits(run: Run, inputs: Inputs, *, batch_size: int = 0,
                   skip_bad: bool = False, devices: Optional[Sequence[Any]] = None,
                   progress: bool = True,
                   on_skip: Callable[[str], None] = lambda message: None
                   ) -> Predictions:
  """Runs the run's model over the inputs on all devices.

  Args:
    run: from :func:`load_run`.
    inputs: from :func:`collect_inputs`.
    batch_size: global batch (0: the run's ``eval_batch_size``), rounded up to
      a multiple of the device count; the last batch is padded and masked.
    skip_bad: skip unreadable inputs (else the first one raises DataError).
    devices: the devices (default: all).
    progress: a progress line on stderr for long inputs.
    on_skip: called with the message of each skipped input.

  Returns:
    :class:`Predictions`.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  batch_size = int(batch_size or run.config.eval_batch_size)
  if batch_size < 1:
    raise ConfigError(f"--batch_size: expected a positive integer, got {batch_size}")
  batch_size = -(-batch_size // n) * n
  dp = parallel.DataParallel("jit", config_lib.loss_spec(run.config, run.num_classes),
                             devices, num_bins=int(run.config.num_bins))
  state = dp.to_device(_inference_state(run))
  size, channels = run.config.image_size, run.config.channels
  bar = Progress(math.ceil(len(inputs) / batch_size), enabled=progress, stream=sys.stderr,
                 quiet_start=True)
  skipped: list[str] = []
  logits, kept = [], []
  pending = None

  def collect(job):
    out, rows = job
    logits.append(np.asarray(jax.device_get(out["logits"]))[:len(rows)])
    kept.extend(rows)

  for step, (images, rows) in enumerate(
      _batches(run, inputs, batch_size, skip_bad, skipped, on_skip), start=1):
    batch = {"image": np.zeros((batch_size, size, size, channels), np.float32),
             "label": np.zeros(batch_size, np.int32),
             "mask": np.zeros(batch_size, np.float32)}
    batch["image"][:len(rows)] = images
    batch["mask"][:len(rows)] = 1.0
    _, out = dp.evaluate(state, batch, with_outputs=True)  # dispatched, not awaited
    if pending is not None:
      collect(pending)
    pending = (out, rows)
    bar.update(step, batch_size)
  if pending is not None:
    collect(pending)
  bar.close()
  k = run.num_classes
  return Predictions(
      names=[inputs.names[i] for i in kept],
      logits=np.concatenate(logits) if logits else np.zeros((0, k), np.float32),
      labels=None if inputs.labels is None else inputs.labels[kept],
      skipped=skipped)


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
                    threshold: Optional[float] = None) -> list[dict[str, Any]]:
  """One dict per image: path, label, prediction, confidence, abstain, top-k,
  probabilities (rounded to :data:`DECIMALS`).

  Args:
    names: input names.
    probs: ``(N, K)`` probabilities.
    class_names: ``K`` names.
    labels: ``(N,)`` known labels or None.
    threshold: abstain iff confidence < threshold (None: never).
  """
  probs = np.asarray(probs)
  k = min(TOP_K, probs.shape[1])
  pred = np.argmax(probs, axis=1)
  conf = probs.max(axis=1)
  top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
  rows = []
  for i, name in enumerate(names):
    row = {"path": name}
    if labels is not None:
      row["label"] = class_names[int(labels[i])]
    row.update(
        prediction=class_names[int(pred[i])],
        confidence=round(float(conf[i]), DECIMALS),
        abstain=bool(threshold is not None and conf[i] < threshold),
        top=[(class_names[int(j)], round(float(probs[i, j]), DECIMALS)) for j in top[i]],
        probabilities={c: round(float(p), DECIMALS) for c, p in zip(class_names, probs[i])})
    rows.append(row)
  return rows


def _csv_text(rows: list[dict[str, Any]], class_names: Sequence[str],
              with_label: bool) -> str:
  k = min(TOP_K, len(class_names))
  header = ["path"] + (["label"] if with_label else []) + [
      "prediction", "confidence", "abstain"]
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
  with_label = bool(rows) and "label" in rows[0]
  text = (_csv_text(rows, class_names, with_label) if path.suffix.lower() == ".csv"
          else _jsonl_text(rows))
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  try:
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  return path


# ----------------------------------------------------------------------------
# Everything at once.
# ----------------------------------------------------------------------------


def predict_to_file(workdir: str | os.PathLike, input_path: str | os.PathLike,
                    output: str | os.PathLike, *, split: str = "test",
                    temperature: bool = True, abstain: bool = True,
                    target_accuracy: Optional[float] = None, skip_bad: bool = False,
                    batch_size: int = 0, progress: bool = True,
                    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)
                    ) -> dict[str, Any]:
  """Classifies the inputs with a finished run and writes the predictions.

  Args:
    workdir: the run.
    input_path: see :func:`collect_inputs`.
    output: a ``.csv`` or ``.jsonl`` file.
    split: the npz split.
    temperature: apply the run's temperature (else raw probabilities).
    abstain: mark rows below the abstention threshold.
    target_accuracy: choose a threshold for this target instead of the run's.
    skip_bad: skip unreadable inputs (reported through ``log``).
    batch_size: global batch (0: the run's ``eval_batch_size``).
    progress: a progress line on stderr for long inputs.
    log: receives notes and skipped-input messages.

  Returns:
    A summary: ``count``, ``skipped``, ``abstained``, ``threshold``,
    ``target_accuracy``, ``temperature``, ``output`` and, when labels are
    known, ``accuracy`` and ``accepted_accuracy``.
  """
  output = check_output_path(output)
  run = load_run(workdir)
  threshold = target = None
  if abstain:
    threshold, target, note = abstention_threshold(
        run, temperature=temperature, target_accuracy=target_accuracy)
    if note:
      log(note)
  inputs = collect_inputs(input_path, split=split)
  if inputs.labels is not None and len(inputs.labels) and (
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
  rows = prediction_rows(preds.names, probs, run.class_names, labels=preds.labels,
                         threshold=threshold)
  write_rows(output, rows, run.class_names)
  conf = probs.max(axis=1)
  accepted = conf >= threshold if threshold is not None else np.ones(len(conf), bool)
  summary = {"count": len(rows), "skipped": len(preds.skipped),
             "abstained": int(np.sum(~accepted)), "threshold": threshold,
             "target_accuracy": target, "temperature": t, "output": str(output),
             "method": run.config.method, "model": run.config.model}
  if preds.labels is not None:
    correct = np.argmax(probs, axis=1) == preds.labels
    summary["accuracy"] = float(correct.mean())
    summary["accepted_accuracy"] = (float(correct[accepted].mean())
                                    if accepted.any() else None)
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
  if summary["skipped"]:
    text += f"; {summary['skipped']} bad inputs skipped"
  if "accuracy" in summary:
    acc = summary["accepted_accuracy"]
    text += (f"; accuracy {100 * summary['accuracy']:.2f}% on all, "
             + (f"{100 * acc:.2f}% on the accepted" if acc is not None else
                "none accepted"))
  return text + f" -> {summary['output']}"
