"""Training and evaluation loop: ``train_and_evaluate(config, workdir)``.

One loop for every method (see :data:`ols_jax.losses.METHODS`). Model
selection uses the validation split only; the test split is evaluated once, at
the end, with the selected checkpoint. A rerun on the same workdir resumes
exactly where the last checkpoint left off (the checkpoint holds the
TrainState, including S and the OLS sums, the input position and the running
epoch metrics).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import sys
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ols_jax import calibration
from ols_jax import checkpointing
from ols_jax import config as config_lib
from ols_jax import data as data_lib
from ols_jax import embeddings as embeddings_lib
from ols_jax import hooks as hooks_lib
from ols_jax import metrics as metrics_lib
from ols_jax import models
from ols_jax import ols
from ols_jax import parallel
from ols_jax import report as report_lib
from ols_jax import selective
from ols_jax import tensorboard_log
from ols_jax import train_state as train_state_lib
from ols_jax.logging_utils import MetricWriter, Progress
from ols_jax.loop_state import LoopState


class TrainingDivergedError(RuntimeError):
  """The loss or gradient norm became non-finite."""


# ----------------------------------------------------------------------------
# Building blocks.
# ----------------------------------------------------------------------------


def make_model(config, num_classes: int, bn_axis_name: Optional[str] = None):
  """The configured model, given only the options it uses.

  Args:
    config: a run config (``model``, ``small_input``, ``width_multiplier``,
      ``dtype``, ``dropout_rate`` (< 0: the model's default),
      ``zero_init_residual``).
    num_classes: number of output logits.
    bn_axis_name: the pmap axis that BatchNorm averages over, or None.

  Returns:
    An unbound Flax module (:func:`ols_jax.models.create`).
  """
  options = {"small_input": bool(config.small_input),
             "width_multiplier": float(config.width_multiplier),
             "dtype": jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32,
             "zero_init_residual": bool(config.zero_init_residual),
             "bn_axis_name": bn_axis_name}
  if config.dropout_rate >= 0:
    options["dropout_rate"] = float(config.dropout_rate)
  used = models.used_options(config.model)
  return models.create(config.model, num_classes,
                       **{k: v for k, v in options.items() if k in used})


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
  """SGD (momentum, coupled L2 weight decay as in PyTorch) or AdamW."""
  if config.optimizer == "sgd":
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(schedule, momentum=config.momentum or None,
                  nesterov=bool(config.nesterov)))
  return optax.adamw(schedule, weight_decay=config.weight_decay)


def _dataset(config) -> data_lib.Dataset:
  return data_lib.load_dataset(
      config.dataset, image_size=config.image_size,
      data_dir=config.data_dir or None, manual_dir=config.manual_dir or None)


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
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / f".write_probe{jax.process_index()}"
    probe.write_bytes(b"0" * 4096)
    probe.unlink()
  except OSError as e:
    raise config_lib.ConfigError(
        f"workdir {workdir}: not writable ({e.strerror or e})") from None


def _save_npy_atomic(path: pathlib.Path, array: np.ndarray) -> None:
  if jax.process_index():  # every process holds the same array; one writes it.
    return
  path.parent.mkdir(exist_ok=True)
  tmp = path.with_name(path.name + ".tmp.npy")
  np.save(tmp, array)
  os.replace(tmp, path)


def _write_json_atomic(path: pathlib.Path, obj: Any) -> None:
  if jax.process_index():  # every process holds the same object; one writes it.
    return
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default))
  os.replace(tmp, path)


def _json_default(x):
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  raise TypeError(f"not JSON serialisable: {type(x)}")


def _check_config_against_workdir(config, workdir: pathlib.Path,
                                  write: bool = True) -> None:
  """Refuses a workdir whose saved config differs in a result-changing field.

  With ``write``, then saves the current config as ``config.json``.
  """
  path = workdir / "config.json"
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
# Evaluation.
# ----------------------------------------------------------------------------


def evaluate(dp: parallel.DataParallel, state, source, config, *, with_outputs: bool,
             channels: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  """Runs the eval step over a whole split.

  Returns:
    ``(metrics, outputs)``: finalised metrics, and ``outputs`` with the summed
    ``sums`` (:func:`ols_jax.metrics.eval_sums`) and, if requested,
    per-example ``logits``, ``embedding`` and ``label`` (padding removed).
  """
  it = data_lib.eval_iterator(
      source, global_batch_size=config.eval_batch_size,
      image_size=config.image_size, channels=channels,
      process_index=jax.process_index(), process_count=jax.process_count(),
      num_workers=config.num_workers)
  total = None
  logits, embs, labels = [], [], []
  for batch in it:
    host_labels, host_mask = batch["label"], batch["mask"]
    sums, out = dp.evaluate(state, batch, with_outputs=with_outputs)
    total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    if with_outputs:  # every process's rows, in order (outputs are already global).
      host_labels, host_mask = parallel.global_rows((host_labels, host_mask))
      keep = host_mask > 0
      logits.append(np.asarray(jax.device_get(out["logits"]))[keep])
      embs.append(np.asarray(jax.device_get(out["embedding"]))[keep])
      labels.append(host_labels[keep])
  it.close()
  host_total = jax.device_get(total)
  result = metrics_lib.finalize(host_total)
  outputs = {"sums": host_total}
  if with_outputs:
    outputs.update(logits=np.concatenate(logits), embedding=np.concatenate(embs),
                   label=np.concatenate(labels).astype(np.int64))
  return result, outputs


def full_metrics(logits: np.ndarray, labels: np.ndarray, num_bins: int,
                 temperature: float = 1.0) -> dict[str, float]:
  """Every metric from per-example logits (device sums + host-only ones)."""
  scaled = calibration.apply_temperature(logits, temperature)
  sums = jax.jit(metrics_lib.eval_sums, static_argnames="num_bins")(
      jnp.asarray(scaled), jnp.asarray(labels),
      jnp.ones(len(labels), jnp.float32), num_bins=num_bins)
  out = metrics_lib.finalize(jax.device_get(sums))
  probs = np.asarray(jax.nn.softmax(jnp.asarray(scaled, jnp.float32), axis=-1))
  host = metrics_lib.host_metrics(probs, labels, num_bins=num_bins)
  out.update({k: host[k] for k in ("adaptive_ece", "auroc_macro")})
  return {k: float(v) for k, v in out.items()}


# ----------------------------------------------------------------------------
# Teacher for KD.
# ----------------------------------------------------------------------------


def load_teacher(config, num_classes: int, channels: int):
  """Restores the selected checkpoint of another run as a KD teacher.

  Returns:
    ``(teacher_apply, teacher_variables)``.
  """
  tdir = pathlib.Path(config.teacher_workdir)
  cfg_path = tdir / "config.json"
  if not cfg_path.exists():
    raise config_lib.ConfigError(
        f"config.teacher_workdir: no config.json in {tdir} (expected a finished run)")
  tcfg = ml_collections.ConfigDict(json.loads(cfg_path.read_text()))
  teacher_model = make_model(tcfg, num_classes)
  abstract = jax.eval_shape(lambda: teacher_model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, tcfg.image_size, tcfg.image_size, channels)),
      train=False))
  variables = checkpointing.restore_teacher_variables(tdir, abstract, num_classes)
  return teacher_model.apply, variables


# ----------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------


def _device_setup(config):
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
  start_time = time.time()
  hooks = hooks or hooks_lib.Hooks()
  config_lib.validate(config)
  workdir = pathlib.Path(workdir)
  if config.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", config.compilation_cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

  dataset = _dataset(config)
  info = dataset.info
  k = info.num_classes
  channels = config.channels
  for split in ("train", "val", "test"):
    if split not in dataset.splits or len(dataset.splits[split]) == 0:
      raise data_lib.DataError(f"dataset {info.name}: split {split!r} is missing or empty")
  devices = _device_setup(config)
  if workdir.exists() and not workdir.is_dir():
    raise config_lib.ConfigError(f"workdir {workdir}: exists and is not a folder")
  if workdir.is_dir():
    _check_config_against_workdir(config, workdir, write=False)

  flip_labels = _flip_labels(config, info)
  n_train = len(dataset.splits["train"])
  steps_per_epoch = data_lib.steps_per_epoch(n_train, config.batch_size)
  if steps_per_epoch == 0:
    raise config_lib.ConfigError(
        f"config.batch_size: {config.batch_size} is larger than the training split "
        f"({n_train} examples)")
  total_steps = steps_per_epoch * config.num_epochs
  spec = config_lib.loss_spec(config, k)
  schedule = learning_rate_schedule(config, steps_per_epoch)
  model = make_model(config, k, bn_axis_name=(
      parallel.PMAP_AXIS if config.parallel == "pmap" else None))
  rng = jax.random.PRNGKey(config.seed)
  state = train_state_lib.create(
      model, make_optimizer(config, schedule),
      input_shape=(config.image_size, config.image_size, channels),
      num_classes=k, rng=rng, ols_init=config.ols_init, ols_eps=config.ols_eps)

  teacher_apply, teacher_vars = None, None
  if spec.needs_teacher:
    teacher_apply, teacher_vars = load_teacher(config, k, channels)
  dp = parallel.DataParallel(config.parallel, spec, devices, num_bins=config.num_bins,
                             teacher_apply=teacher_apply)
  if teacher_vars is not None:
    teacher_vars = dp.to_device(teacher_vars)

  # Everything is validated and loaded: only now is the workdir written to.
  _check_workdir(workdir)
  ckpt = checkpointing.Checkpointer(workdir)
  loop = LoopState()
  restored = ckpt.restore_last(state)
  if restored is not None:
    state, meta = restored
    loop = LoopState.from_json(meta)
    checkpointing.check_compatible(state, model_name=config.model, num_classes=k)
  _check_config_against_workdir(config, workdir)

  writer = MetricWriter(workdir / "metrics.jsonl", truncate_after_step=int(state.step),
                        tensorboard_dir=workdir / "tensorboard" if config.tensorboard else None)
  state = dp.to_device(state)
  soft_dir = workdir / "soft_labels"
  if not (soft_dir / "epoch_000_initial.npy").exists():
    _save_npy_atomic(soft_dir / "epoch_000_initial.npy",
                     dp.soft_labels(state))

  progress = Progress(total_steps, enabled=config.progress, stream=sys.stderr)
  epoch, start_step = loop.epoch, loop.step_in_epoch
  train_args = (teacher_vars,) if spec.needs_teacher else ()
  while epoch < config.num_epochs and not loop.finished:
    epoch_sums = _device_sums(loop.epoch_sums)
    it = data_lib.train_iterator(
        dataset.splits["train"], global_batch_size=config.batch_size,
        image_size=config.image_size, channels=channels, seed=config.seed,
        augment=config.augment, epoch=epoch, start_step=start_step,
        process_index=jax.process_index(), process_count=jax.process_count(),
        num_workers=config.num_workers, flip_labels=flip_labels)
    batches = dp.prefetch(it)
    # A mid-epoch checkpoint also holds the sums since the last log line, so
    # the next line after a resume equals that of an uninterrupted run.
    window = _device_sums(loop.window_sums)
    first_bad = jnp.zeros((), jnp.int32)  # first non-finite global step, 0: none.
    window_start = time.time()
    window_steps = 0
    for step_in_epoch in range(start_step, steps_per_epoch):
      global_step = epoch * steps_per_epoch + step_in_epoch + 1
      batch = hooks.batch(global_step, next(batches))
      state, m = dp.train(state, batch, *train_args)
      epoch_sums, window, first_bad = _accumulate(
          epoch_sums, window, first_bad, m, global_step)
      window_steps += 1
      progress.update(global_step, config.batch_size)
      last_in_epoch = step_in_epoch + 1 == steps_per_epoch
      if config.log_every_steps and global_step % config.log_every_steps == 0:
        w = jax.device_get(window)
        _check_finite(w, first_bad, global_step, steps_per_epoch)
        dt = max(time.time() - window_start, 1e-9)
        writer.write({"step": global_step, "epoch": epoch + (step_in_epoch + 1) / steps_per_epoch,
                      "train/loss": w["loss_sum"] / max(w["count"], 1),
                      "train/accuracy": w["correct"] / max(w["count"], 1),
                      "learning_rate": float(schedule(global_step - 1)),
                      "steps_per_second": window_steps / dt,
                      "images_per_second": window_steps * config.batch_size / dt})
        window = _device_sums(None)
        window_start, window_steps = time.time(), 0
      if (config.checkpoint_every_steps and not last_in_epoch
          and global_step % config.checkpoint_every_steps == 0):
        host_sums = jax.device_get(epoch_sums)
        _check_finite(host_sums, first_bad, global_step, steps_per_epoch)
        ckpt.save_last(global_step, dp.to_host(state), dataclasses.replace(
            loop, epoch=epoch, step_in_epoch=step_in_epoch + 1, epoch_sums=host_sums,
            window_sums=jax.device_get(window)).to_json())
      hooks.after_step(global_step)
    it.close()
    host_sums = jax.device_get(epoch_sums)
    _check_finite(host_sums, first_bad, dp.step(state), steps_per_epoch)

    # Epoch boundary: the next S from this epoch's sums.
    if spec.uses_ols:
      state = dp.boundary(state)
      soft = dp.soft_labels(state)
      _save_npy_atomic(soft_dir / f"epoch_{epoch + 1:03d}.npy", soft)
      loop = dataclasses.replace(loop, entropy_history=loop.entropy_history + (
          tuple(np.asarray(ols.row_entropy(soft)).tolist()),))
    val, val_out = evaluate(dp, state, dataset.splits["val"], config,
                            with_outputs=False, channels=channels)
    record = {"step": dp.step(state), "epoch": epoch + 1,
              "train/loss": host_sums["loss_sum"] / max(host_sums["count"], 1),
              "train/accuracy": host_sums["correct"] / max(host_sums["count"], 1),
              "learning_rate": float(schedule(dp.step(state) - 1))}
    record.update({f"eval/{k_}": v for k_, v in val.items()})
    if spec.uses_ols:
      record["ols/mean_row_entropy"] = float(np.mean(loop.entropy_history[-1]))
    writer.write(record)
    tensorboard_log.log_epoch_figures(
        writer, record["step"], val_out["sums"], class_names=info.class_names,
        soft_labels=soft if spec.uses_ols else None, epoch=epoch + 1)
    progress.message(
        f"epoch {epoch + 1}/{config.num_epochs}: train loss {record['train/loss']:.4f} "
        f"acc {record['train/accuracy']:.4f} | val top1 err {val['top1_error']:.4f} "
        f"ece {val['ece']:.4f} nll {val['nll']:.4f}")
    score = val[config.select_metric]
    improved = loop.best is None or score < loop.best
    hooks.at_epoch_end(epoch + 1)
    epoch += 1
    start_step = 0
    loop = dataclasses.replace(loop, epoch=epoch, step_in_epoch=0, epoch_sums=None,
                               window_sums=None, finished=epoch >= config.num_epochs)
    if improved:
      loop = dataclasses.replace(loop, best=float(score), best_epoch=epoch)
    host_state = dp.to_host(state)
    if improved:
      ckpt.save_best(int(host_state.step), host_state, loop.to_json())
    ckpt.save_last(int(host_state.step), host_state, loop.to_json())
  progress.close()
  ckpt.wait()

  # ---- Final evaluation with the selected checkpoint. ------------------------
  summary_path = workdir / "results.json"
  if summary_path.exists():
    summary = json.loads(summary_path.read_text())
    if summary.get("final_step") == dp.step(state):
      best_state = ckpt.restore_best(dp.to_host(state))
      writer.close()
      return best_state, summary
  last_soft = dp.soft_labels(state)
  best_state = ckpt.restore_best(dp.to_host(state))
  final_step = dp.step(state)
  state = dp.to_device(best_state)
  _, val_out = evaluate(dp, state, dataset.splits["val"], config,
                        with_outputs=True, channels=channels)
  temperature = calibration.fit_temperature(val_out["logits"], val_out["label"])
  _, test_out = evaluate(dp, state, dataset.splits["test"], config,
                         with_outputs=True, channels=channels)
  test = full_metrics(test_out["logits"], test_out["label"], config.num_bins)
  test_ts = full_metrics(test_out["logits"], test_out["label"], config.num_bins,
                         temperature)
  val_metrics = full_metrics(val_out["logits"], val_out["label"], config.num_bins)
  emb = embeddings_lib.embedding_metrics(test_out["embedding"], test_out["label"],
                                         seed=config.seed)
  summary = {
      "dataset": info.name, "class_names": list(info.class_names), "num_classes": k,
      "split_sizes": {s: len(dataset.splits[s]) for s in ("train", "val", "test")},
      "model": config.model, "method": config.method, "seed": config.seed,
      "num_epochs": config.num_epochs, "best_epoch": loop.best_epoch,
      "select_metric": config.select_metric, "final_step": final_step,
      "device_count": len(devices), "device_kind": devices[0].device_kind,
      "process_count": jax.process_count(),
      "wall_time_s": time.time() - start_time,
      "temperature": float(temperature),
      "val": val_metrics, "test": test, "test_ts": test_ts, "embedding": emb,
      "test_reliability": _curve_lists(test_out, config.num_bins, 1.0),
      "test_ts_reliability": _curve_lists(test_out, config.num_bins, temperature),
      "soft_label_row_entropy": [list(row) for row in loop.entropy_history],
  }
  selective.add_to_summary(summary, workdir, val_out, test_out, temperature=temperature,
                           target_accuracy=config.target_accuracy)
  report_lib.write_report(workdir, config, summary, test_out=test_out,
                          temperature=temperature, soft_labels=last_soft,
                          figures=config.figures, tsne_samples=config.tsne_samples)
  hooks.before_final_write()
  _write_json_atomic(summary_path, summary)
  writer.close()
  return best_state, summary


def _curve_lists(outputs, num_bins: int, temperature: float) -> dict[str, Any]:
  """The reliability curve of per-example outputs, JSON-ready."""
  scaled = calibration.apply_temperature(outputs["logits"], temperature)
  sums = metrics_lib.eval_sums(jnp.asarray(scaled), jnp.asarray(outputs["label"]),
                               None, num_bins=num_bins)
  curve = metrics_lib.reliability_curve(jax.device_get(sums))
  return {k: (np.asarray(v).tolist() if np.ndim(v) else float(v)) for k, v in curve.items()}


def _merge(a, b):
  out = {k: a[k] + b[k] for k in ("loss_sum", "correct", "count")}
  out["finite"] = a["finite"] * b["finite"]
  return out


@jax.jit
def _device_sums(saved: Optional[dict]) -> dict[str, jax.Array]:
  """Running metric sums on device: restored from a checkpoint, or empty."""
  saved = saved or {"loss_sum": 0.0, "correct": 0.0, "count": 0.0, "finite": 1.0}
  return {k: jnp.asarray(v, jnp.float32) for k, v in saved.items()}


@jax.jit
def _accumulate(epoch_sums, window, first_bad, m, global_step):
  """Adds one step's metrics to the epoch and log-window sums.

  Also records the first step whose loss or gradient norm is non-finite.
  One compiled call per step (not a dozen eager ones), no host round-trip.
  """
  finite = jnp.isfinite(m["loss_sum"]) & jnp.isfinite(m["grad_norm"])
  step_sums = {"loss_sum": m["loss_sum"], "correct": m["correct"],
               "count": m["count"], "finite": finite.astype(jnp.float32)}
  first_bad = jnp.where((first_bad == 0) & ~finite, global_step, first_bad)
  return _merge(epoch_sums, step_sums), _merge(window, step_sums), first_bad


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
