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
reaches the target accuracy). A row also gets a split-conformal prediction set
(:mod:`ols_jax.conformal`, calibrated on the run's saved validation outputs
with the very probabilities the rows publish) and an out-of-distribution flag
(:mod:`ols_jax.ood`: Mahalanobis distance of the penultimate embedding, or
energy / MSP of the raw logits, below a threshold that keeps 95% of the
validation scans). The output is written to a temporary file and renamed at
the end, so an error never leaves a partial file.
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
from ols_jax import conformal
from ols_jax import evaluation
from ols_jax import ols
from ols_jax import ood as ood_lib
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
# Separator of the class names of a prediction set in a CSV cell.
SET_SEPARATOR = "|"
# The Mahalanobis fit and OOD thresholds a finished run saves (train.write_outputs).
OOD_FIT = "ood_fit.npz"
# --ood_score choices, the default first.
OOD_SCORES = ("mahalanobis", "energy", "msp")


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


def val_outputs(run: Run) -> Optional[tuple[np.ndarray, np.ndarray]]:
  """The run's saved validation ``(logits, labels)``, or None if it saved none.

  Raises:
    ConfigError: the file is there but unreadable.
  """
  path = run.workdir / selective.VAL_OUTPUTS
  if not path.is_file():
    return None
  try:
    with np.load(path) as z:
      return np.asarray(z["logits"]), np.asarray(z["label"])
  except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
    raise ConfigError(f"{path}: unreadable ({e})") from None


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
  val = val_outputs(run)
  if val is not None:
    logits, labels = val
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


def check_set_options(method: str, alpha: Optional[float]) -> None:
  """ConfigError naming the flag for a bad ``--conformal`` / ``--conformal_alpha``."""
  if method not in conformal.METHODS:
    raise ConfigError(f"--conformal: expected one of {', '.join(conformal.METHODS)}, "
                      f"got {method!r}")
  if alpha is not None and not 0.0 < alpha < 1.0:  # also rejects NaN
    raise ConfigError(f"--conformal_alpha: expected a value in (0, 1), got {alpha!r}")


def conformal_threshold(run: Run, *, method: str = "aps",
                        alpha: Optional[float] = None, temperature: bool = True
                        ) -> tuple[float, float]:
  """``qhat`` of split-conformal sets for the probabilities predict publishes.

  Calibrated on the run's saved validation outputs
  (:data:`ols_jax.selective.VAL_OUTPUTS`) with the same temperature as the
  rows (so it works for runs from before conformal sets too). A run without
  them falls back on the ``qhat`` of its ``results.json`` when that one
  matches (temperature-scaled, same alpha).

  Args:
    run: the run.
    method: ``'aps'`` or ``'lac'`` (:data:`ols_jax.conformal.METHODS`).
    alpha: miscoverage level (None: the run's ``config.conformal_alpha``).
    temperature: whether the probabilities are temperature-scaled.

  Returns:
    ``(qhat, alpha)``; ``qhat`` is ``inf`` when validation is too small for
    ``alpha`` (every set is then every class).

  Raises:
    ConfigError: a bad option, or nothing to calibrate on.
  """
  check_set_options(method, alpha)
  alpha = float(run.config.get("conformal_alpha", 0.1) if alpha is None else alpha)
  val = val_outputs(run)
  if val is not None:
    logits, labels = val
    probs = selective.probabilities(logits, run.temperature if temperature else 1.0)
    return conformal.calibrate(probs, labels, method, alpha), alpha
  stored = run.results.get("conformal") or {}
  if (temperature and stored.get("probabilities") == "temperature-scaled"
      and method in stored and math.isclose(float(stored.get("alpha", -1.0)), alpha)):
    qhat = stored[method]["qhat"]
    return (math.inf if qhat is None else float(qhat)), alpha
  what = " on raw probabilities" if not temperature else ""
  raise ConfigError(f"workdir {run.workdir}: no validation outputs "
                    f"({selective.VAL_OUTPUTS}) to calibrate {method.upper()} prediction "
                    f"sets at alpha {alpha}{what}, and results.json holds no matching "
                    f"qhat; pass --no_sets")


def set_names(sets: np.ndarray, probs: np.ndarray,
              class_names: Sequence[str]) -> list[list[str]]:
  """Each set's class names by decreasing probability (ties by class index)."""
  order = np.argsort(-np.asarray(probs), axis=1, kind="stable")
  return [[class_names[int(j)] for j in row if keep[j]]
          for row, keep in zip(order, np.asarray(sets, bool))]


@dataclasses.dataclass(frozen=True)
class OodRule:
  """How predict flags an input as out-of-distribution: ``score < threshold``.

  Attributes:
    score: ``'mahalanobis'``, ``'energy'`` or ``'msp'``.
    threshold: keeps :data:`ols_jax.evaluation.OOD_TPR` of validation.
    source: the file the threshold comes from (``ood_fit.npz`` or
      ``val_outputs.npz``).
    fit: the Mahalanobis fit (``means``, ``precision``, ``class_present``) or
      None.
  """
  score: str
  threshold: float
  source: str
  fit: Optional[dict[str, np.ndarray]] = None


def check_ood_score(score: Optional[str]) -> None:
  """ConfigError naming the flag for a bad ``--ood_score``."""
  if score is not None and score not in OOD_SCORES:
    raise ConfigError(f"--ood_score: expected one of {', '.join(OOD_SCORES)}, got "
                      f"{score!r}")


def _read_ood_fit(path: pathlib.Path) -> dict[str, np.ndarray]:
  try:
    with np.load(path, allow_pickle=False) as z:
      return {k: np.asarray(z[k]) for k in z.files}
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise ConfigError(f"{path}: unreadable ({e})") from None


def ood_rule(run: Run, score: Optional[str] = None) -> OodRule:
  """The OOD score and threshold for a run.

  With the run's :data:`OOD_FIT` (saved by the final evaluation): its
  threshold for the score, and its Mahalanobis fit; the default score is then
  ``'mahalanobis'``. Without it (a run from before OOD scores): ``'energy'``
  by default, with the threshold chosen on the saved validation logits at
  :data:`ols_jax.evaluation.OOD_TPR`; Mahalanobis is refused. Energy and MSP
  are computed on raw logits, as the final evaluation does.

  Args:
    run: the run.
    score: ``'mahalanobis'``, ``'energy'``, ``'msp'`` or None (the default).

  Returns:
    An :class:`OodRule`.

  Raises:
    ConfigError: a bad score, or no file to take the threshold from.
  """
  check_ood_score(score)
  path = run.workdir / OOD_FIT
  saved = _read_ood_fit(path) if path.is_file() else None
  score = score or ("mahalanobis" if saved is not None else "energy")
  if saved is not None:
    key = f"threshold_{score}"
    fit_keys = [f"mahalanobis_{k}" for k in ood_lib.MAHALANOBIS_KEYS]
    missing = [k for k in [key] + (fit_keys if score == "mahalanobis" else [])
               if k not in saved]
    if missing:
      raise ConfigError(f"{path}: no {missing[0]!r} (keys: {', '.join(sorted(saved))})")
    fit = ({k: saved[f"mahalanobis_{k}"] for k in ood_lib.MAHALANOBIS_KEYS}
           if score == "mahalanobis" else None)
    return OodRule(score=score, threshold=float(saved[key]), source=OOD_FIT, fit=fit)
  if score == "mahalanobis":
    raise ConfigError(f"--ood_score=mahalanobis: workdir {run.workdir} has no {OOD_FIT} "
                      f"(a run from before OOD scores); use --ood_score=energy or msp")
  val = val_outputs(run)
  if val is None:
    raise ConfigError(f"workdir {run.workdir}: neither {OOD_FIT} nor "
                      f"{selective.VAL_OUTPUTS} to set an OOD threshold from; pass --no_ood")
  threshold = ood_lib.threshold_at_tpr(ood_scores(score, val[0]), evaluation.OOD_TPR)
  return OodRule(score=score, threshold=threshold, source=selective.VAL_OUTPUTS)


def ood_scores(score: str, logits: np.ndarray, embeddings: Optional[np.ndarray] = None,
               fit: Optional[dict[str, np.ndarray]] = None) -> np.ndarray:
  """``(N,)`` OOD scores (higher = in-distribution) of raw logits / embeddings."""
  if score == "msp":
    return ood_lib.msp(logits)
  if score == "energy":
    return ood_lib.energy(logits)
  return ood_lib.mahalanobis_score(embeddings, fit)


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
  """Logits and embeddings of the images read, in input order, and what was skipped."""
  names: list[str]
  logits: np.ndarray          # (N, K) float32
  labels: Optional[np.ndarray]  # (N,) or None
  skipped: list[str]          # one message per skipped input
  embeddings: Optional[np.ndarray] = None  # (N, D) float32 penultimate features


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
    :class:`Predictions` (logits and the penultimate embeddings the evaluation
    step returns beside them).
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
  logits, embeddings, kept = [], [], []
  pending = None

  def collect(job):
    out, rows = job
    host = jax.device_get({k: out[k] for k in ("logits", "embedding")})
    logits.append(np.asarray(host["logits"])[:len(rows)])
    embeddings.append(np.asarray(host["embedding"])[:len(rows)])
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
      skipped=skipped,
      embeddings=np.concatenate(embeddings) if embeddings else None)


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
                    ood_threshold: Optional[float] = None) -> list[dict[str, Any]]:
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
      row["label"] = class_names[int(labels[i])]
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
    input_path: see :func:`collect_inputs`.
    output: a ``.csv`` or ``.jsonl`` file.
    split: the npz split.
    temperature: apply the run's temperature (else raw probabilities).
    abstain: mark rows below the abstention threshold.
    target_accuracy: choose a threshold for this target instead of the run's.
    sets: add each row's conformal prediction set (:func:`conformal_threshold`).
    conformal_method: ``'aps'`` or ``'lac'``.
    conformal_alpha: miscoverage level (None: the run's ``conformal_alpha``).
    ood: add each row's OOD score and flag (:func:`ood_rule`).
    ood_score: ``'mahalanobis'``, ``'energy'``, ``'msp'`` or None (Mahalanobis
      when the run saved :data:`OOD_FIT`, else energy).
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
    check_set_options(conformal_method, conformal_alpha)
  if ood:
    check_ood_score(ood_score)
  run = load_run(workdir)
  threshold = target = None
  if abstain:
    threshold, target, note = abstention_threshold(
        run, temperature=temperature, target_accuracy=target_accuracy)
    if note:
      log(note)
  qhat = alpha = None
  if sets:
    bad = [c for c in run.class_names if SET_SEPARATOR in c]
    if bad and output.suffix.lower() == ".csv":
      raise ConfigError(f"--output {output}: class name {bad[0]!r} holds {SET_SEPARATOR!r}, "
                        f"the CSV separator of prediction sets; write .jsonl or pass --no_sets")
    qhat, alpha = conformal_threshold(run, method=conformal_method,
                                      alpha=conformal_alpha, temperature=temperature)
  rule = ood_rule(run, ood_score) if ood else None
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
  masks = conformal.prediction_sets(probs, qhat, conformal_method) if sets else None
  scores = (ood_scores(rule.score, preds.logits, preds.embeddings, rule.fit)
            if rule is not None else None)
  rows = prediction_rows(preds.names, probs, run.class_names, labels=preds.labels,
                         threshold=threshold, sets=masks, ood_score=scores,
                         ood_threshold=None if rule is None else rule.threshold)
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
  if preds.labels is not None:
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
  if "accuracy" in summary:
    acc = summary["accepted_accuracy"]
    text += (f"; accuracy {100 * summary['accuracy']:.2f}% on all, "
             + (f"{100 * acc:.2f}% on the accepted" if acc is not None else
                "none accepted"))
  return text + f" -> {summary['output']}"
