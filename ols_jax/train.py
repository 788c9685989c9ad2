"""Training and evaluation loop: ``train_and_evaluate(config, workdir, hooks=None)``.

One loop for every method (see :data:`ols_jax.losses.METHODS`). Model
selection uses the validation split only; the test split is evaluated once, at
the end, with the selected checkpoint. A rerun on the same workdir resumes
exactly where the last checkpoint left off (the checkpoint holds the
TrainState, including S and the OLS sums, and the :class:`LoopState`: the
input position and the running epoch metrics).

The run, in named steps:
  :func:`prepare`      validate, load, build and restore (nothing is written
                       to the workdir before every input is valid);
  :func:`train_epoch`  one epoch from the loop's position: steps, log lines,
                       mid-epoch checkpoints, then the epoch boundary (next
                       S), validation, selection and the epoch's checkpoints;
  :func:`ols_jax.evaluation.final`  the selected checkpoint on val and test;
  :func:`write_outputs`  report, figures and ``results.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import sys
import time
from typing import Any, NamedTuple, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ols_jax import checkpointing
from ols_jax import config as config_lib
from ols_jax import data as data_lib
from ols_jax import evaluation
from ols_jax import fileio
from ols_jax import hooks as hooks_lib
from ols_jax import host
from ols_jax import losses
from ols_jax import models
from ols_jax.models import torchvision_weights as tv_weights
from ols_jax import ols
from ols_jax import parallel
from ols_jax import report as report_lib
from ols_jax import run_files
from ols_jax import runs
from ols_jax import selective
from ols_jax import shift as shift_lib
from ols_jax import tensorboard_log
from ols_jax import train_state as train_state_lib
from ols_jax.data import cross_source as cross_lib
from ols_jax.logging_utils import is_main_process, MetricWriter, Progress
from ols_jax.loop_state import LoopState


class TrainingDivergedError(RuntimeError):
  """The loss or gradient norm became non-finite."""


# ----------------------------------------------------------------------------
# Building blocks.
# ----------------------------------------------------------------------------


def learning_rate_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """Warm-up then cosine, step (x0.1 at 50% and 75%) or constant."""
  total = config.num_epochs * steps_per_epoch
  warmup = int(round(config.warmup_epochs * steps_per_epoch))
  base = config.learning_rate
  if config.schedule == "cosine":
    main = optax.cosine_decay_schedule(base, max(total - warmup, 1))
  elif config.schedule == "step":
    main = optax.piecewise_constant_schedule(
        base, {int(0.5 * total) - warmup: 0.1, int(0.75 * total) - warmup: 0.1})
  else:
    main = optax.constant_schedule(base)
  if warmup == 0:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, base, warmup), main], [warmup])


def make_optimizer(config, schedule: optax.Schedule) -> optax.GradientTransformation:
  """SGD (momentum, coupled L2 weight decay as in PyTorch) or AdamW.

  With ``config.freeze_backbone`` only the classifier head
  (``models.HEAD_NAMES``) is updated; with ``config.backbone_lr_multiplier``
  != 1 every other parameter's update is scaled by it (a PyTorch parameter
  group with ``lr * multiplier``: weight decay and momentum included), via
  ``optax.multi_transform``.
  """
  if config.optimizer == "sgd":
    base = optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(schedule, momentum=config.momentum or None,
                  nesterov=bool(config.nesterov)))
  else:
    base = optax.adamw(schedule, weight_decay=config.weight_decay)
  multiplier = float(config.get("backbone_lr_multiplier", 1.0))
  frozen = bool(config.get("freeze_backbone", False))
  if not frozen and multiplier == 1.0:
    return base
  if frozen or multiplier == 0.0:
    backbone = optax.set_to_zero()
  else:
    backbone = optax.chain(base, optax.scale(multiplier))
  head = models.HEAD_NAMES[config.model]
  return optax.multi_transform(
      {"head": base, "backbone": backbone},
      lambda params: {k: jax.tree.map(lambda _, k=k: "head" if k == head else "backbone", v)
                      for k, v in params.items()})


def _dataset(config) -> data_lib.Dataset:
  """The configured dataset (:func:`ols_jax.data.load_for_config`).

  Raises:
    DataError: it cannot be loaded, or a split is missing or empty.
  """
  return data_lib.load_for_config(config)


def _ood_sources(config) -> dict[str, Any]:
  """The test split of each far-OOD set in ``config.ood_sets``, by name.

  Loaded at the run's image size where the set stores it, else at its
  smallest size (the evaluation resizes).

  Raises:
    DataError: a set cannot be loaded.
  """
  return {name: _extra_dataset(config, name).splits["test"]
          for name in filter(None, (n.strip() for n in str(config.ood_sets).split(",")))}


def _extra_dataset(config, name: str) -> data_lib.Dataset:
  """Another shared dataset (far-OOD, cross-source): at the run's image size
  where it stores it, else at its smallest (the evaluation resizes)."""
  try:
    return data_lib.load_dataset(name, image_size=config.image_size,
                                 data_dir=config.data_dir or None)
  except data_lib.DataError:
    return data_lib.load_dataset(name, data_dir=config.data_dir or None)


def _cross_source(config, info) -> Optional[evaluation.CrossSource]:
  """``config.cross_source``'s test split in the run's class space, or None.

  Loaded like a far-OOD set (the run's size where stored, else the smallest),
  converted to working images; classes without a counterpart are dropped.

  Raises:
    DataError: the set cannot be loaded or mapped.
  """
  name = str(config.get("cross_source", "") or "")
  if not name:
    return None
  ds = _extra_dataset(config, name)
  lmap = cross_lib.label_map(name, info.name, ds.info.class_names, info.class_names)
  images, labels = shift_lib.working_array(ds.splits["test"], image_size=config.image_size,
                                           channels=config.channels)
  keep, mapped = cross_lib.mapped_subset(labels, lmap)
  return evaluation.CrossSource(name, cross_lib.description(name, info.name), images[keep],
                                mapped, int(len(labels)))


def _flip_labels(config, info) -> Optional[np.ndarray]:
  """The flipped-label map when ``config.augment`` mirrors images, else None.

  Raises:
    ConfigError: the dataset has lateral classes that cannot be mapped.
  """
  if config.augment not in data_lib.FLIPPING:
    return None
  try:
    return data_lib.flip_label_map(info.class_names, info.name)
  except data_lib.DataError as e:
    raise config_lib.ConfigError(f"config.augment={config.augment!r}: {e}") from None


def _check_workdir(workdir: pathlib.Path) -> None:
  """Creates the workdir; ConfigError if it cannot be written to."""
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / f".write_probe{jax.process_index()}"
    probe.write_bytes(b"0" * 4096)
    probe.unlink()
  except OSError as e:
    raise config_lib.ConfigError(
        f"workdir {workdir}: not writable ({e.strerror or e})") from None


def _save_npy_atomic(path: pathlib.Path, array: np.ndarray) -> None:
  """Writes ``array`` to ``path`` atomically (process 0 only)."""
  if jax.process_index():  # every process holds the same array; one writes it.
    return
  path.parent.mkdir(exist_ok=True)
  fileio.atomic_save_npy(path, array)


def _write_json_atomic(path: pathlib.Path, obj: Any) -> None:
  """Writes ``obj`` as JSON atomically (process 0 only); NumPy values as numbers."""
  if jax.process_index():  # every process holds the same object; one writes it.
    return
  fileio.atomic_write_json(path, obj, indent=2, sort_keys=True)


def _check_config_against_workdir(config, workdir: pathlib.Path,
                                  write: bool = True) -> None:
  """Refuses a workdir whose saved config differs in a result-changing field.

  With ``write``, then saves the current config as ``config.json``.
  """
  path = workdir / run_files.CONFIG
  current = json.loads(config.to_json_best_effort())
  if path.exists():
    try:
      saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
      raise config_lib.ConfigError(f"{path}: unreadable ({e})") from None
    diff = config_lib.result_affecting_differences(saved, current)
    if diff and not config.allow_config_change:
      detail = ", ".join(f"{k} ({saved.get(k)!r} -> {current.get(k)!r})" for k in diff)
      raise config_lib.ConfigError(
          f"workdir {workdir} holds a run with a different config: {detail}; "
          f"use a new workdir or pass --config.allow_config_change=True")
  if write:
    _write_json_atomic(path, current)


# ----------------------------------------------------------------------------
# Teacher for KD.
# ----------------------------------------------------------------------------


def load_teacher(config, num_classes: int, channels: int):
  """Restores the selected checkpoint of another run as a KD teacher.

  Only the teacher's ``config.json`` and checkpoints are read
  (:func:`ols_jax.runs.restore_model`, as inference restores a finished run);
  its ``results.json`` is not needed.

  Args:
    config: the student's config (``teacher_workdir``).
    num_classes: the student's class count; the teacher must have as many.
    channels: the student's input channels.

  Returns:
    ``(teacher_apply, teacher_variables)``.

  Raises:
    ConfigError: no ``config.json`` or checkpoint, or a teacher of another
      class count or model.
  """
  tdir = pathlib.Path(config.teacher_workdir)
  if not (tdir / run_files.CONFIG).exists():
    raise config_lib.ConfigError(
        f"config.teacher_workdir: no config.json in {tdir} (expected a finished run)")
  model, variables, _ = runs.restore_model(tdir, runs.read_config(tdir), num_classes,
                                           channels=channels, role="teacher")
  return model.apply, variables


# ----------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunContext:
  """What the loop works with, built once by :func:`prepare`.

  A run in progress; a finished one is read by :mod:`ols_jax.runs`.

  Attributes:
    config: the run config.
    workdir: the output folder.
    dataset: the loaded splits and their info.
    devices: the devices the run uses.
    spec: the method's loss (:class:`ols_jax.losses.LossSpec`).
    schedule: the learning rate per step.
    steps_per_epoch: train steps per epoch.
    flip_labels: the label map of mirrored images, or None.
    dp: the compiled steps of the data-parallel mode.
    train_args: extra train step arguments (the KD teacher's variables).
    checkpointer: the workdir's checkpoints.
    writer: ``metrics.jsonl`` (and TensorBoard).
    progress: the progress display.
    hooks: the caller's hooks at the loop's named points.
    start_time: ``time.time()`` when the run started, moved back by the
      seconds earlier processes spent on it (so ``time.time() - start_time``
      is the run's wall-clock summed over resumes).
    ood_sources: the far-OOD sets of the final evaluation, by name.
    cross_source: the cross-source test images (``config.cross_source``), or None.
    init_from: what ``config.init_from`` copied (``results.json['init_from']``), or None.
  """
  config: ml_collections.ConfigDict
  workdir: pathlib.Path
  dataset: data_lib.Dataset
  devices: tuple[jax.Device, ...]
  spec: losses.LossSpec
  schedule: optax.Schedule
  steps_per_epoch: int
  flip_labels: Optional[np.ndarray]
  dp: parallel.DataParallel
  train_args: tuple[Any, ...]
  checkpointer: checkpointing.Checkpointer
  writer: MetricWriter
  progress: Progress
  hooks: hooks_lib.Hooks
  start_time: float
  ood_sources: dict[str, Any] = dataclasses.field(default_factory=dict)
  cross_source: Optional[evaluation.CrossSource] = None
  init_from: Optional[dict[str, Any]] = None


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str | os.PathLike,
                       hooks: Optional[hooks_lib.Hooks] = None):
  """Trains, selects on validation, tests once, and writes every artifact.

  Args:
    config: an experiment config (see :mod:`ols_jax.config`).
    workdir: output folder; an existing run there is resumed.
    hooks: called at the loop's named points (:class:`ols_jax.hooks.Hooks`);
      None: no-ops.

  Returns:
    ``(state, summary)``: the selected (best-validation) TrainState and the
    dict written to ``results.json``.
  """
  run, state, loop = prepare(config, workdir, hooks or hooks_lib.Hooks())
  while not loop.finished:
    state, loop = train_epoch(run, state, loop)
  run.progress.close()
  run.checkpointer.wait()
  final_step = run.dp.step(state)
  best_state = run.checkpointer.restore_best(run.dp.to_host(state))
  summary = _finished_summary(run.workdir, final_step)
  if summary is None:
    evaluated = evaluation.final(
        run.dp, run.dp.to_device(best_state), run.dataset.splits, config,
        run_fields=_run_fields(run, loop, final_step), start_time=run.start_time,
        soft_labels=run.dp.soft_labels(state), ood_sources=run.ood_sources,
        cross_source=run.cross_source, log=run.progress.message)
    write_outputs(run, evaluated)
    summary = evaluated.summary
  run.writer.close()
  return best_state, summary


def prepare(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
            hooks: hooks_lib.Hooks) -> tuple[RunContext, Any, LoopState]:
  """Validates and loads everything, then opens the workdir and restores.

  Nothing is written to the workdir before the config, the data, the devices
  and a KD teacher are all valid.

  Args:
    config: the run config.
    workdir: the output folder (created; an existing run there is resumed).
    hooks: the loop's hooks.

  Returns:
    ``(run, state, loop)``: the :class:`RunContext`, the device-side TrainState
    and the :class:`LoopState` (both restored from the newest checkpoint, if any).

  Raises:
    ConfigError, DataError: invalid config, data, devices or workdir.
  """
  start_time = time.time()
  config_lib.validate(config)
  workdir = pathlib.Path(workdir)
  _use_compilation_cache(config)
  dataset = _dataset(config)
  ood_sources = _ood_sources(config)
  cross_source = _cross_source(config, dataset.info)
  devices = _device_setup(config)
  _check_existing_workdir(config, workdir)
  flip_labels = _flip_labels(config, dataset.info)
  steps_per_epoch = _steps_per_epoch(config, len(dataset.splits["train"]))
  k = dataset.info.num_classes
  spec = config_lib.loss_spec(config, k)
  schedule = learning_rate_schedule(config, steps_per_epoch)
  state = _initial_state(config, k, schedule)
  state, init_record = _init_from(config, state)
  teacher_apply, teacher_vars = (load_teacher(config, k, config.channels)
                                 if spec.needs_teacher else (None, None))
  dp = parallel.DataParallel(config.parallel, spec, devices, num_bins=config.num_bins,
                             teacher_apply=teacher_apply)
  train_args = (dp.to_device(teacher_vars),) if spec.needs_teacher else ()
  # Everything is validated and loaded: only now is the workdir written to.
  _check_workdir(workdir)
  checkpointer = checkpointing.Checkpointer(workdir)
  state, loop = _restore(checkpointer, state, config, k)
  start_time -= loop.elapsed_s
  _check_config_against_workdir(config, workdir)
  writer = MetricWriter(workdir / run_files.METRICS, truncate_after_step=int(state.step),
                        tensorboard_dir=workdir / run_files.TENSORBOARD if config.tensorboard else None)
  state = dp.to_device(state)
  if not (run_files.soft_labels_file(workdir, 0)).exists():
    _save_npy_atomic(run_files.soft_labels_file(workdir, 0),
                     dp.soft_labels(state))
  progress = Progress(steps_per_epoch * config.num_epochs, enabled=config.progress,
                      stream=sys.stderr)
  if init_record and loop.epoch == 0:
    progress.message(f"init_from {config.init_from}: kept fresh "
                     f"{init_record['kept_fresh'] or 'nothing'}"
                     + "".join(f"; {a}" for a in init_record.get("adapted", [])))
  run = RunContext(config=config, workdir=workdir, dataset=dataset,
                   devices=tuple(devices), spec=spec, schedule=schedule,
                   steps_per_epoch=steps_per_epoch, flip_labels=flip_labels, dp=dp,
                   train_args=train_args, checkpointer=checkpointer, writer=writer,
                   progress=progress, hooks=hooks, start_time=start_time,
                   ood_sources=ood_sources, cross_source=cross_source,
                   init_from=init_record)
  return run, state, loop


def train_epoch(run: RunContext, state, loop: LoopState) -> tuple[Any, LoopState]:
  """Trains epoch ``loop.epoch`` from step ``loop.step_in_epoch`` and closes it.

  Args:
    run: the :class:`RunContext`.
    state: the device-side TrainState.
    loop: where the loop stands.

  Returns:
    ``(state, loop)`` after the epoch, its checkpoints written.

  Raises:
    TrainingDivergedError: a non-finite loss or gradient norm.
  """
  state, train_sums = _train_steps(run, state, loop)
  state, loop, soft_labels = _epoch_boundary(run, state, loop)
  val = _validate(run, state, loop, train_sums, soft_labels)
  run.hooks.at_epoch_end(loop.epoch + 1)
  return state, _select_and_save(run, state, loop, val[run.config.select_metric])


def write_outputs(run: RunContext, evaluated: evaluation.FinalEvaluation) -> None:
  """Writes the final outputs; ``results.json`` last, as it marks the run done.

  ``val_outputs.npz`` (for new abstention thresholds), ``report.md`` with the
  figures, then ``results.json``; only process 0 writes.
  """
  if is_main_process():
    selective.save_val_outputs(run.workdir, evaluated.val_outputs["logits"],
                               evaluated.val_outputs["label"])
    if evaluated.ood_fit is not None:
      fileio.atomic_save_npz(run.workdir / run_files.OOD_FIT, **evaluated.ood_fit)
  report_lib.write_report(run.workdir, run.config, evaluated)
  run.hooks.before_final_write()
  _write_json_atomic(run.workdir / run_files.RESULTS, evaluated.summary)


# ----------------------------------------------------------------------------
# Preparing a run.
# ----------------------------------------------------------------------------


def _use_compilation_cache(config) -> None:
  """Turns on JAX's persistent compilation cache if the config names a folder."""
  if config.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", config.compilation_cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _device_setup(config) -> list[jax.Device]:
  """The devices to use (``config.num_devices``, 0: all).

  Raises:
    ConfigError: too few devices, or a batch size they do not divide.
  """
  devices = jax.devices()
  if config.num_devices:
    if config.num_devices > len(devices):
      raise config_lib.ConfigError(
          f"config.num_devices: asked for {config.num_devices}, "
          f"only {len(devices)} available")
    devices = devices[:config.num_devices]
  for field in ("batch_size", "eval_batch_size"):
    if config[field] % len(devices):
      raise config_lib.ConfigError(
          f"config.{field}: expected a multiple of the device count "
          f"{len(devices)}, got {config[field]}")
  return devices


def _check_existing_workdir(config, workdir: pathlib.Path) -> None:
  """Refuses a workdir that is a file or holds a run of another config."""
  if workdir.exists() and not workdir.is_dir():
    raise config_lib.ConfigError(f"workdir {workdir}: exists and is not a folder")
  if workdir.is_dir():
    _check_config_against_workdir(config, workdir, write=False)


def _steps_per_epoch(config, num_train: int) -> int:
  """Train steps per epoch (full batches only); ConfigError if none fits."""
  steps = data_lib.steps_per_epoch(num_train, config.batch_size)
  if steps == 0:
    raise config_lib.ConfigError(
        f"config.batch_size: {config.batch_size} is larger than the training split "
        f"({num_train} examples)")
  return steps


def _initial_state(config, num_classes: int, schedule: optax.Schedule):
  """The freshly initialised host TrainState of the configured model."""
  model = models.from_config(config, num_classes, bn_axis_name=(
      parallel.PMAP_AXIS if config.parallel == "pmap" else None))
  return train_state_lib.create(
      model, make_optimizer(config, schedule),
      input_shape=(config.image_size, config.image_size, config.channels),
      num_classes=num_classes, rng=jax.random.PRNGKey(config.seed),
      ols_init=config.ols_init, ols_eps=config.ols_eps)


def merge_pretrained(fresh: Any, pretrained: Any) -> tuple[Any, list[str]]:
  """``fresh`` with every leaf of ``pretrained`` that has the same path and shape.

  Args:
    fresh: the freshly initialised variable tree (params or batch_stats).
    pretrained: the source run's tree of the same model.

  Returns:
    ``(merged, kept_fresh)``: the merged tree and the ``/``-joined paths of
    the leaves left at their fresh values (absent from the source, or of
    another shape: a classifier head of another class count, a stem of
    other input channels).
  """
  flat_src = flax.traverse_util.flatten_dict(flax.core.unfreeze(pretrained)) if pretrained else {}
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(fresh)) if fresh else {}
  kept = []
  for path, leaf in flat.items():
    src = flat_src.get(path)
    if src is not None and np.shape(src) == np.shape(leaf):
      flat[path] = jnp.asarray(src, jnp.asarray(leaf).dtype)
    else:
      kept.append("/".join(path))
  return (flax.traverse_util.unflatten_dict(flat) if flat else fresh), kept


def _init_from(config, state) -> tuple[Any, Optional[dict[str, Any]]]:
  """``state`` with the weights of ``config.init_from``.

  A finished run's workdir: every parameter and BatchNorm statistic of its
  selected checkpoint with the same path and shape is copied; the rest (a head
  of another class count) keeps its fresh value. A torchvision ``.pth`` /
  ``.safetensors`` file: :func:`ols_jax.models.torchvision_weights.load`.
  The optimiser state is rebuilt for the new parameters; S starts as
  configured.

  Returns:
    ``(state, record)``; the record goes into ``results.json['init_from']``.

  Raises:
    ConfigError: the source is not a finished run, or is another model.
  """
  source = str(config.get("init_from", "") or "")
  if not source:
    return state, None
  path = pathlib.Path(source)
  if tv_weights.is_weight_file(path):
    if float(config.width_multiplier) != 1.0:
      raise config_lib.ConfigError(
          f"config.init_from: {path.name} holds torchvision's width-1.0 weights; this run "
          f"has width_multiplier={config.width_multiplier} (set it to 1.0)")
    try:
      params, stats, record = tv_weights.load(
          path, config.model, state.params, state.batch_stats,
          small_input=bool(config.small_input))
    except tv_weights.WeightImportError as e:
      raise config_lib.ConfigError(f"config.init_from: {e}") from None
    state = state.replace(params=params, batch_stats=stats, opt_state=state.tx.init(params))
    return state, record
  src_config = runs.read_config(path)
  for key in ("model", "width_multiplier", "small_input"):
    if src_config.get(key) != config.get(key):
      raise config_lib.ConfigError(
          f"config.init_from: {path} has {key}={src_config.get(key)!r}, this run "
          f"{config.get(key)!r}; expected the same model")
  results_path = path / run_files.RESULTS
  if not results_path.is_file():
    raise config_lib.ConfigError(f"config.init_from: {path} has no results.json (not a "
                                 "finished run)")
  src_k = int(json.loads(results_path.read_text())["num_classes"])
  _, variables, ckpt = runs.restore_model(path, src_config, src_k, role="run")
  params, fresh_params = merge_pretrained(state.params, variables["params"])
  stats, fresh_stats = merge_pretrained(state.batch_stats, variables.get("batch_stats", {}))
  state = state.replace(params=params, batch_stats=stats, opt_state=state.tx.init(params))
  record = {"workdir": source, "checkpoint": ckpt.name, "source_num_classes": src_k,
            "source_dataset": src_config.get("dataset"),
            "kept_fresh": fresh_params + [f"batch_stats/{p}" for p in fresh_stats]}
  return state, record


def _restore(checkpointer: checkpointing.Checkpointer, state, config,
             num_classes: int) -> tuple[Any, LoopState]:
  """The newest checkpoint's state and loop position, else ``state`` at the start.

  A loop past the configured epochs counts as finished.
  """
  loop = LoopState()
  restored = checkpointer.restore_last(state)
  if restored is not None:
    state, meta = restored
    loop = LoopState.from_json(meta)
    checkpointing.check_compatible(state, model_name=config.model, num_classes=num_classes)
  if loop.epoch >= config.num_epochs:
    loop = dataclasses.replace(loop, finished=True)
  return state, loop


def _finished_summary(workdir: pathlib.Path, final_step: int) -> Optional[dict[str, Any]]:
  """The saved ``results.json`` if it belongs to this final step, else None."""
  path = workdir / run_files.RESULTS
  if not path.exists():
    return None
  summary = json.loads(path.read_text())
  return summary if summary.get("final_step") == final_step else None


def _run_fields(run: RunContext, loop: LoopState, final_step: int) -> dict[str, Any]:
  """What describes a finished run in its summary (besides its metrics)."""
  config, info = run.config, run.dataset.info
  return {
      "dataset": info.name, "data_origin": info.origin,
      "class_names": list(info.class_names),
      "num_classes": info.num_classes,
      "split_sizes": {s: len(src) for s, src in run.dataset.splits.items()},
      "calibration_split": config.calibration_split,
      "config": json.loads(config.to_json_best_effort()),
      "model": config.model, "method": config.method, "seed": config.seed,
      "num_epochs": config.num_epochs, "best_epoch": loop.best_epoch,
      "select_metric": config.select_metric, "final_step": final_step,
      "device_count": len(run.devices), "device_kind": run.devices[0].device_kind,
      "process_count": jax.process_count(), "host": host.describe(),
      "soft_label_row_entropy": [list(row) for row in loop.entropy_history],
      **({"init_from": run.init_from} if run.init_from else {}),
  }


# ----------------------------------------------------------------------------
# One epoch.
# ----------------------------------------------------------------------------


class _RunningSums(NamedTuple):
  """Train sums on device: the epoch's, the log window's, and the first
  non-finite global step (0: none yet)."""
  epoch: dict[str, jax.Array]
  window: dict[str, jax.Array]
  first_bad: jax.Array


def _train_steps(run: RunContext, state, loop: LoopState) -> tuple[Any, dict[str, Any]]:
  """The epoch's remaining steps, with their log lines and mid-epoch checkpoints.

  Returns:
    ``(state, sums)``: the state after the epoch's last step and the epoch's
    train sums on the host.

  Raises:
    TrainingDivergedError: a non-finite loss or gradient norm.
  """
  config, dp, steps = run.config, run.dp, run.steps_per_epoch
  it = data_lib.train_iterator(
      run.dataset.splits["train"], global_batch_size=config.batch_size,
      image_size=config.image_size, channels=config.channels, seed=config.seed,
      augment=config.augment, epoch=loop.epoch, start_step=loop.step_in_epoch,
      process_index=jax.process_index(), process_count=jax.process_count(),
      num_workers=config.num_workers, flip_labels=run.flip_labels)
  batches = dp.prefetch(it)
  # A mid-epoch checkpoint also holds the sums since the last log line, so
  # the next line after a resume equals that of an uninterrupted run.
  running = _RunningSums(_device_sums(loop.epoch_sums), _device_sums(loop.window_sums),
                         jnp.zeros((), jnp.int32))
  window_start, window_steps = time.time(), 0
  for step_in_epoch in range(loop.step_in_epoch, steps):
    global_step = loop.epoch * steps + step_in_epoch + 1
    batch = run.hooks.batch(global_step, next(batches))
    state, step_metrics = dp.train(state, batch, *run.train_args)
    running = _accumulate(running, step_metrics, global_step)
    window_steps += 1
    run.progress.update(global_step, config.batch_size)
    if config.log_every_steps and global_step % config.log_every_steps == 0:
      _log_window(run, running, global_step, loop.epoch + (step_in_epoch + 1) / steps,
                  window_steps, window_start)
      running = running._replace(window=_device_sums(None))
      window_start, window_steps = time.time(), 0
    if (config.checkpoint_every_steps and step_in_epoch + 1 < steps
        and global_step % config.checkpoint_every_steps == 0):
      _save_mid_epoch(run, state, dataclasses.replace(loop, step_in_epoch=step_in_epoch + 1),
                      running, global_step)
    run.hooks.after_step(global_step)
  it.close()
  sums = jax.device_get(running.epoch)
  _check_finite(sums, running.first_bad, dp.step(state), steps)
  return state, sums


def _log_window(run: RunContext, running: _RunningSums, global_step: int, epoch: float,
                window_steps: int, window_start: float) -> None:
  """Writes the metrics line of the steps since the last one.

  Raises:
    TrainingDivergedError: a step of the window was non-finite.
  """
  w = jax.device_get(running.window)
  _check_finite(w, running.first_bad, global_step, run.steps_per_epoch)
  dt = max(time.time() - window_start, 1e-9)
  run.writer.write({"step": global_step, "epoch": epoch,
                    "train/loss": w["loss_sum"] / max(w["count"], 1),
                    "train/accuracy": w["correct"] / max(w["count"], 1),
                    "learning_rate": float(run.schedule(global_step - 1)),
                    "steps_per_second": window_steps / dt,
                    "images_per_second": window_steps * run.config.batch_size / dt})


def _save_mid_epoch(run: RunContext, state, loop: LoopState, running: _RunningSums,
                    global_step: int) -> None:
  """Saves a ``last`` checkpoint inside the epoch, with the running sums.

  Raises:
    TrainingDivergedError: a step since the epoch began was non-finite.
  """
  epoch_sums = jax.device_get(running.epoch)
  _check_finite(epoch_sums, running.first_bad, global_step, run.steps_per_epoch)
  position = dataclasses.replace(loop, epoch_sums=epoch_sums,
                                 window_sums=jax.device_get(running.window),
                                 elapsed_s=time.time() - run.start_time)
  run.checkpointer.save_last(global_step, run.dp.to_host(state), position.to_json())


def _epoch_boundary(run: RunContext, state, loop: LoopState
                    ) -> tuple[Any, LoopState, Optional[np.ndarray]]:
  """OLS only: the next S from the epoch's sums, saved and its entropies kept.

  Returns:
    ``(state, loop, soft_labels)``: with OLS the new S (also in
    ``soft_labels/epoch_NNN.npy``) and its row entropies appended to the
    loop's history; otherwise the inputs and None.
  """
  if not run.spec.uses_ols:
    return state, loop, None
  state = run.dp.boundary(state)
  soft_labels = run.dp.soft_labels(state)
  _save_npy_atomic(run_files.soft_labels_file(run.workdir, loop.epoch + 1),
                   soft_labels)
  entropy = tuple(np.asarray(ols.row_entropy(soft_labels)).tolist())
  loop = dataclasses.replace(loop, entropy_history=loop.entropy_history + (entropy,))
  return state, loop, soft_labels


def _validate(run: RunContext, state, loop: LoopState, train_sums: dict[str, Any],
              soft_labels: Optional[np.ndarray]) -> dict[str, float]:
  """Evaluates on val; logs the epoch's line, figures and progress message.

  Returns:
    The validation metrics.
  """
  config, dp = run.config, run.dp
  val, val_out = evaluation.evaluate(dp, state, run.dataset.splits["val"], config,
                                     with_outputs=False, channels=config.channels)
  step = dp.step(state)
  record = {"step": step, "epoch": loop.epoch + 1,
            "train/loss": train_sums["loss_sum"] / max(train_sums["count"], 1),
            "train/accuracy": train_sums["correct"] / max(train_sums["count"], 1),
            "learning_rate": float(run.schedule(step - 1))}
  record.update({f"eval/{k}": v for k, v in val.items()})
  if run.spec.uses_ols:
    record["ols/mean_row_entropy"] = float(np.mean(loop.entropy_history[-1]))
  run.writer.write(record)
  tensorboard_log.log_epoch_figures(
      run.writer, step, val_out["sums"], class_names=run.dataset.info.class_names,
      soft_labels=soft_labels, epoch=loop.epoch + 1)
  run.progress.message(
      f"epoch {loop.epoch + 1}/{config.num_epochs}: train loss {record['train/loss']:.4f} "
      f"acc {record['train/accuracy']:.4f} | val top1 err {val['top1_error']:.4f} "
      f"ece {val['ece']:.4f} nll {val['nll']:.4f}")
  return val


def _select_and_save(run: RunContext, state, loop: LoopState, score: float) -> LoopState:
  """Closes the epoch: keeps ``score`` if best, writes ``best`` and ``last``.

  Returns:
    The loop at the start of the next epoch.
  """
  improved = loop.best is None or score < loop.best
  epoch = loop.epoch + 1
  loop = dataclasses.replace(loop, epoch=epoch, step_in_epoch=0, epoch_sums=None,
                             window_sums=None, finished=epoch >= run.config.num_epochs,
                             elapsed_s=time.time() - run.start_time)
  if improved:
    loop = dataclasses.replace(loop, best=float(score), best_epoch=epoch)
  host_state = run.dp.to_host(state)
  if improved:
    run.checkpointer.save_best(int(host_state.step), host_state, loop.to_json())
  run.checkpointer.save_last(int(host_state.step), host_state, loop.to_json())
  return loop


def _merge(a, b):
  """Adds two sets of train sums (``finite``: both finite)."""
  out = {k: a[k] + b[k] for k in ("loss_sum", "correct", "count")}
  out["finite"] = a["finite"] * b["finite"]
  return out


@jax.jit
def _device_sums(saved: Optional[dict]) -> dict[str, jax.Array]:
  """Running metric sums on device: restored from a checkpoint, or empty."""
  saved = saved or {"loss_sum": 0.0, "correct": 0.0, "count": 0.0, "finite": 1.0}
  return {k: jnp.asarray(v, jnp.float32) for k, v in saved.items()}


@jax.jit
def _accumulate(running: _RunningSums, m, global_step) -> _RunningSums:
  """Adds one step's metrics to the epoch and log-window sums.

  Also records the first step whose loss or gradient norm is non-finite.
  One compiled call per step (not a dozen eager ones), no host round-trip.
  """
  finite = jnp.isfinite(m["loss_sum"]) & jnp.isfinite(m["grad_norm"])
  step_sums = {"loss_sum": m["loss_sum"], "correct": m["correct"],
               "count": m["count"], "finite": finite.astype(jnp.float32)}
  first_bad = jnp.where((running.first_bad == 0) & ~finite, global_step,
                        running.first_bad)
  return _RunningSums(_merge(running.epoch, step_sums), _merge(running.window, step_sums),
                      first_bad)


def _check_finite(sums: dict, first_bad, step: int, steps_per_epoch: int) -> None:
  """Raises TrainingDivergedError if a step since the sums began was non-finite."""
  if float(sums["finite"]) > 0 and math.isfinite(float(sums["loss_sum"])):
    return
  bad = int(jax.device_get(first_bad)) or step
  raise TrainingDivergedError(
      f"non-finite loss or gradient norm at step {bad} "
      f"(epoch {(bad - 1) // steps_per_epoch + 1}, detected at step {step}); "
      f"nothing after the last good checkpoint was saved: lower the learning "
      f"rate and rerun with --config.allow_config_change=True")
