"""A finished run, read in one place: config, results, model, selected checkpoint.

:func:`load` restores a finished run's workdir (``config.json``,
``results.json`` and the selected checkpoint: the best by validation, the one
its test metrics come from) into a :class:`FinishedRun`. Its model is
:func:`ols_jax.models.from_config` of the config, with the variables of
:func:`ols_jax.checkpointing.restore_selected_variables`;
:func:`restore_model` does that much for any run folder (a KD teacher needs
only ``config.json`` and the checkpoint). What the run fitted on validation
comes through accessors: :func:`val_outputs`, :func:`abstention_threshold`,
:func:`conformal_threshold` and :func:`ood_rule`.

:func:`infer` is the one inference loop of a finished run: the evaluation
step (:class:`ols_jax.parallel.DataParallel`) over a data source (the
evaluation's input path) or over preprocessed image batches (predict's),
each batch padded to the global batch and masked. ``predict``,
:func:`split_logits` and :func:`ols_jax.shift_run.evaluate_run` all run it.
Nothing here imports the training loop.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import math
import os
import pathlib
import zipfile
from typing import Any, Callable, Iterator, Optional, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ols_jax import checkpointing
from ols_jax import config as config_lib
from ols_jax import conformal
from ols_jax import data as data_lib
from ols_jax import evaluation
from ols_jax import models
from ols_jax import ood as ood_lib
from ols_jax import parallel
from ols_jax import run_files
from ols_jax import selective
from ols_jax.config import ConfigError

# OOD scores a rule can use (predict's --ood_score choices), the default first.
OOD_SCORES = ("mahalanobis", "energy", "msp")


# ----------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FinishedRun:
  """A finished run's workdir, restored for inference.

  Attributes:
    workdir: the run's folder.
    config: its ``config.json``.
    results: its ``results.json``.
    class_names: the dataset's class names (from ``results.json``).
    variables: the selected checkpoint's ``params`` (and ``batch_stats``),
      host arrays.
    apply_fn: the model's ``apply``.
    checkpoint: the selected checkpoint's folder.
  """
  workdir: pathlib.Path
  config: ml_collections.ConfigDict
  results: dict[str, Any]
  class_names: tuple[str, ...]
  variables: dict[str, Any]
  apply_fn: Callable[..., Any]
  checkpoint: pathlib.Path

  @property
  def num_classes(self) -> int:
    """The number of classes (logits)."""
    return len(self.class_names)

  @property
  def temperature(self) -> float:
    """The temperature the run fitted on validation."""
    return float(self.results["temperature"])


def _read_json(path: pathlib.Path) -> Any:
  try:
    return json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ConfigError(f"{path}: unreadable ({e})") from None


def read_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """A run's ``config.json``, migrated to today's fields (:func:`ols_jax.config.migrate`).

  Args:
    workdir: the run's workdir.

  Returns:
    The config.

  Raises:
    ConfigError: the file is unreadable or not a JSON object.
  """
  path = pathlib.Path(workdir) / run_files.CONFIG
  saved = _read_json(path)
  if not isinstance(saved, dict):
    raise ConfigError(f"{path}: expected a JSON object of config fields")
  return config_lib.migrate(saved)


def restore_model(workdir: str | os.PathLike, config: ml_collections.ConfigDict,
                  num_classes: int, *, channels: Optional[int] = None,
                  role: str = "run") -> tuple[nn.Module, dict[str, Any], pathlib.Path]:
  """A run's model and the variables of its selected checkpoint.

  Args:
    workdir: the run's workdir.
    config: its config (:func:`read_config`).
    num_classes: the class count expected of the checkpoint.
    channels: input channels of the model (None: ``config.channels``).
    role: ``'run'`` or ``'teacher'``: how errors are worded
      (:func:`ols_jax.checkpointing.restore_selected_variables`).

  Returns:
    ``(model, variables, checkpoint folder)``.

  Raises:
    ConfigError: no checkpoint, or one of another class count or model.
  """
  model = models.from_config(config, num_classes)
  channels = config.channels if channels is None else channels
  shape = (1, config.image_size, config.image_size, channels)
  abstract = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros(shape, jnp.float32), train=False))
  variables, path = checkpointing.restore_selected_variables(
      pathlib.Path(workdir), abstract, num_classes, role=role)
  return model, variables, path


def load(workdir: str | os.PathLike) -> FinishedRun:
  """Restores a finished run: its config, results and selected checkpoint.

  Args:
    workdir: the run's workdir (with ``config.json``, ``results.json`` and
      ``checkpoints/``).

  Returns:
    A :class:`FinishedRun`.

  Raises:
    ConfigError: the folder does not hold a finished run.
  """
  workdir = pathlib.Path(workdir)
  if not workdir.is_dir():
    raise ConfigError(f"workdir {workdir}: not found")
  if not (workdir / run_files.CONFIG).is_file():
    raise ConfigError(f"workdir {workdir}: no config.json (not a training run)")
  if not (workdir / run_files.RESULTS).is_file():
    raise ConfigError(f"workdir {workdir}: no results.json (the run has not "
                      f"finished; rerun its training command to finish it)")
  config = read_config(workdir)
  results = _read_json(workdir / run_files.RESULTS)
  for key in ("class_names", "temperature"):
    if not isinstance(results, dict) or key not in results:
      raise ConfigError(f"{workdir / 'results.json'}: no {key!r} (not the "
                        f"results of a finished run)")
  names = tuple(str(n) for n in results["class_names"])
  model, variables, path = restore_model(workdir, config, len(names))
  return FinishedRun(workdir=workdir, config=config, results=results, class_names=names,
                     variables=variables, apply_fn=model.apply, checkpoint=path)


# ----------------------------------------------------------------------------
# What the run fitted on validation.
# ----------------------------------------------------------------------------


def val_outputs(run: FinishedRun) -> Optional[tuple[np.ndarray, np.ndarray]]:
  """The run's saved validation ``(logits, labels)``, or None if it saved none.

  Raises:
    ConfigError: the file is there but unreadable.
  """
  path = run.workdir / run_files.VAL_OUTPUTS
  if not path.is_file():
    return None
  try:
    with np.load(path) as z:
      return np.asarray(z["logits"]), np.asarray(z["label"])
  except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
    raise ConfigError(f"{path}: unreadable ({e})") from None


def abstention_threshold(run: FinishedRun, *, temperature: bool = True,
                         target_accuracy: Optional[float] = None
                         ) -> tuple[float, float, Optional[str]]:
  """The threshold for the confidences that predict reports.

  The run's stored threshold (chosen on validation with temperature-scaled
  probabilities) when that is what is asked for; otherwise a new one chosen
  with the same rule on the validation outputs the run saved
  (:data:`ols_jax.run_files.VAL_OUTPUTS`).

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
                      f"outputs ({run_files.VAL_OUTPUTS}) to choose a threshold for "
                      f"raw confidences; pass --no_abstain too")
  note = (f"note: workdir {run.workdir} saved no validation outputs "
          f"({run_files.VAL_OUTPUTS}) to choose a threshold for a target accuracy "
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


def conformal_threshold(run: FinishedRun, *, method: str = "aps",
                        alpha: Optional[float] = None, temperature: bool = True
                        ) -> tuple[float, float]:
  """``qhat`` of split-conformal sets for the probabilities predict publishes.

  Calibrated on the run's saved validation outputs
  (:data:`ols_jax.run_files.VAL_OUTPUTS`) with the same temperature as the
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
                    f"({run_files.VAL_OUTPUTS}) to calibrate {method.upper()} prediction "
                    f"sets at alpha {alpha}{what}, and results.json holds no matching "
                    f"qhat; pass --no_sets")


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


def ood_rule(run: FinishedRun, score: Optional[str] = None) -> OodRule:
  """The OOD score and threshold for a run.

  With the run's :data:`run_files.OOD_FIT` (saved by the final evaluation): its
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
  path = run.workdir / run_files.OOD_FIT
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
    return OodRule(score=score, threshold=float(saved[key]), source=run_files.OOD_FIT, fit=fit)
  if score == "mahalanobis":
    raise ConfigError(f"--ood_score=mahalanobis: workdir {run.workdir} has no {run_files.OOD_FIT} "
                      f"(a run from before OOD scores); use --ood_score=energy or msp")
  val = val_outputs(run)
  if val is None:
    raise ConfigError(f"workdir {run.workdir}: neither {run_files.OOD_FIT} nor "
                      f"{run_files.VAL_OUTPUTS} to set an OOD threshold from; pass --no_ood")
  threshold = ood_lib.threshold_at_tpr(ood_scores(score, val[0]), evaluation.OOD_TPR)
  return OodRule(score=score, threshold=threshold, source=run_files.VAL_OUTPUTS)


def ood_scores(score: str, logits: np.ndarray, embeddings: Optional[np.ndarray] = None,
               fit: Optional[dict[str, np.ndarray]] = None) -> np.ndarray:
  """``(N,)`` OOD scores (higher = in-distribution) of raw logits / embeddings."""
  if score == "msp":
    return ood_lib.msp(logits)
  if score == "energy":
    return ood_lib.energy(logits)
  return ood_lib.mahalanobis_score(embeddings, fit)


# ----------------------------------------------------------------------------
# The one inference loop.
# ----------------------------------------------------------------------------


@flax.struct.dataclass
class InferenceState:
  """What the evaluation step reads of a state: the model and its variables.

  Attributes:
    params: the model's parameters.
    batch_stats: BatchNorm statistics (``{}`` for models without BN).
    apply_fn: the model's ``apply`` (static).
  """
  params: Any
  batch_stats: Any
  apply_fn: Callable[..., Any] = flax.struct.field(pytree_node=False)

  def variables(self) -> dict[str, Any]:
    """The variable dict for ``apply_fn`` (as :meth:`TrainState.variables`)."""
    out = {"params": self.params}
    if self.batch_stats:
      out["batch_stats"] = self.batch_stats
    return out


@dataclasses.dataclass(frozen=True)
class OnDevices:
  """A finished run's model on devices: the compiled evaluation step and its state.

  Attributes:
    run: the run.
    dp: the evaluation step on the devices (jit over a mesh).
    state: the device-side :class:`InferenceState`.
  """
  run: FinishedRun
  dp: parallel.DataParallel
  state: Any

  @property
  def num_devices(self) -> int:
    """How many devices a global batch is split over."""
    return len(self.dp.devices)


@dataclasses.dataclass(frozen=True)
class Outputs:
  """A pass of a finished run's model, in input order, padding removed.

  Attributes:
    logits: ``(N, K)`` float32 logits.
    embeddings: ``(N, D)`` float32 penultimate features.
    labels: ``(N,)`` int64 labels of a data source, or None (image batches).
  """
  logits: np.ndarray
  embeddings: np.ndarray
  labels: Optional[np.ndarray]


def on_devices(run: FinishedRun, devices: Optional[Sequence[Any]] = None) -> OnDevices:
  """Places a finished run's model on devices (compiled once, on first use).

  Args:
    run: from :func:`load`.
    devices: the devices (default: all).

  Returns:
    :class:`OnDevices` for :func:`infer`.
  """
  devices = list(jax.devices() if devices is None else devices)
  # Inference builds no loss (spec=None): workdirs of every method load, retired
  # method names (an old ``tfkd``) included.
  dp = parallel.DataParallel("jit", None, devices, num_bins=int(run.config.num_bins))
  state = InferenceState(params=run.variables["params"],
                         batch_stats=run.variables.get("batch_stats", {}),
                         apply_fn=run.apply_fn)
  return OnDevices(run=run, dp=dp, state=dp.to_device(state))


def global_batch_size(run: FinishedRun, batch_size: int, num_devices: int) -> int:
  """A global batch size rounded up to a multiple of the device count.

  Args:
    run: the run.
    batch_size: the requested size (0: the run's ``eval_batch_size``).
    num_devices: the device count.

  Returns:
    The global batch size.

  Raises:
    ConfigError: a size below 1.
  """
  size = int(batch_size or run.config.eval_batch_size)
  if size < 1:
    raise ConfigError(f"batch size: expected a positive integer, got {size}")
  return -(-size // num_devices) * num_devices


def _padded(images: Iterator[np.ndarray], size: int, image_size: int,
            channels: int) -> Iterator[dict[str, np.ndarray]]:
  """Host batches of ``size`` rows from image batches of at most ``size``."""
  for x in images:
    if not 0 < len(x) <= size:
      raise ValueError(f"image batch of {len(x)} rows; expected 1 to {size}")
    batch = {"image": np.zeros((size, image_size, image_size, channels), np.float32),
             "label": np.zeros(size, np.int32),
             "mask": np.zeros(size, np.float32)}
    batch["image"][:len(x)] = x
    batch["mask"][:len(x)] = 1.0
    yield batch


def infer(model: FinishedRun | OnDevices, data: Any, *, batch_size: int = 0,
          num_workers: Optional[int] = None,
          on_step: Optional[Callable[[int], None]] = None) -> Outputs:
  """Runs a finished run's model over a data source or over image batches.

  Every global batch goes through the evaluation step on all the devices of
  ``model``, padded to ``batch_size`` rows and masked; padding rows are
  dropped from the outputs.

  Args:
    model: the run (placed on all devices here) or :func:`on_devices` of it
      (compiled once, for several passes).
    data: either a data source (``len(src)``, ``src[i] -> {'image',
      'label'}``) read through the evaluation's input path
      (:func:`ols_jax.data.eval_iterator`), or an iterator of preprocessed
      float32 image batches ``(b, S, S, C)``, ``1 <= b <= batch_size``
      (:func:`ols_jax.data.augment.preprocess`).
    batch_size: the global batch (0: the run's ``eval_batch_size``), rounded up
      to a multiple of the device count.
    num_workers: input workers of a data source (None: the run's
      ``num_workers``).
    on_step: called with the 1-based batch number after each batch.

  Returns:
    :class:`Outputs` (labels only for a data source).
  """
  placed = model if isinstance(model, OnDevices) else on_devices(model)
  config = placed.run.config
  size = global_batch_size(placed.run, batch_size, placed.num_devices)
  from_source = not isinstance(data, collections.abc.Iterator)
  if from_source:
    batches = data_lib.eval_iterator(
        data, global_batch_size=size, image_size=config.image_size,
        channels=config.channels,
        num_workers=int(config.num_workers if num_workers is None else num_workers))
  else:
    batches = _padded(data, size, config.image_size, config.channels)
  logits, embeddings, labels = [], [], []
  try:
    for step, batch in enumerate(batches, start=1):
      _, out = placed.dp.evaluate(placed.state, batch, with_outputs=True)
      keep = np.asarray(batch["mask"]) > 0
      logits.append(np.asarray(out["logits"])[keep])
      embeddings.append(np.asarray(out["embedding"])[keep])
      labels.append(np.asarray(batch["label"])[keep])
      if on_step is not None:
        on_step(step)
  finally:
    if from_source:
      batches.close()
  if not logits:
    k = placed.run.num_classes
    return Outputs(logits=np.zeros((0, k), np.float32),
                   embeddings=np.zeros((0, 0), np.float32),
                   labels=np.zeros(0, np.int64) if from_source else None)
  return Outputs(logits=np.concatenate(logits), embeddings=np.concatenate(embeddings),
                 labels=np.concatenate(labels).astype(np.int64) if from_source else None)


def split_logits(workdir: str | os.PathLike, split: str = "test", batch_size: int = 512,
                 devices: Optional[Sequence[Any]] = None) -> tuple[np.ndarray, np.ndarray]:
  """Logits and labels of one of a finished run's splits under its selected checkpoint.

  The dataset is loaded as the run loaded it (:func:`ols_jax.data.load_for_config`,
  so a calibration-split run gives the same halves) and read through the
  evaluation's input path (no augmentation, padded last batch).

  Args:
    workdir: the finished run.
    split: ``'train'``, ``'val'`` or ``'test'`` (or another split the dataset has).
    batch_size: the global batch.
    devices: the devices (default: the default device only).

  Returns:
    ``(logits, labels)``: ``(N, K)`` float32 and ``(N,)`` int64.
  """
  run = load(workdir)
  dataset = data_lib.load_for_config(run.config)
  out = infer(on_devices(run, jax.devices()[:1] if devices is None else devices),
              dataset.splits[split], batch_size=batch_size, num_workers=0)
  return out.logits, out.labels
