"""Orbax checkpoints of the TrainState plus the loop's position.

Two managers under ``<workdir>/checkpoints``: ``last`` (the newest two, saved
at epoch ends and optionally every N steps) and ``best`` (the best by the
validation metric). Orbax writes each checkpoint to a temporary folder and
renames it when complete, so a checkpoint interrupted while being written is
never picked up (leftover temporary folders are removed on the next start).
Saves are synchronous: when ``save_*`` returns, the checkpoint is on disk. A
state with a non-finite value is never written. The model variables of a
finished run's selected checkpoint (for inference or as a KD teacher) come
from :func:`restore_selected_variables`.
"""

from __future__ import annotations

import errno
import os
import pathlib
import re
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from ols_jax.config import ConfigError
from ols_jax import run_files

def _os_error_code(e: Exception) -> Optional[int]:
  """The errno of a failed write (tensorstore reports it inside a ValueError)."""
  if isinstance(e, OSError):
    return e.errno or errno.EIO
  match = re.search(r"os_error_code='?(\d+)", str(e))
  return int(match.group(1)) if match else None


def _check_finite_tree(tree, step: int) -> None:
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    leaf = np.asarray(leaf)
    if np.issubdtype(leaf.dtype, np.inexact) and not np.all(np.isfinite(leaf)):
      raise ValueError(f"refusing to write checkpoint {step}: "
                       f"{jax.tree_util.keystr(path)} has non-finite values")


def _savable(state) -> dict[str, Any]:
  """The pytree that is written: everything in the TrainState but functions."""
  return {"step": state.step, "params": state.params,
          "batch_stats": state.batch_stats, "opt_state": state.opt_state,
          "ols": {"soft_labels": state.ols.soft_labels,
                  "prob_sums": state.ols.prob_sums, "counts": state.ols.counts},
          "rng": state.rng}


def _with_restored(state, tree):
  return state.replace(
      step=tree["step"], params=tree["params"], batch_stats=tree["batch_stats"],
      opt_state=tree["opt_state"], rng=tree["rng"],
      ols=state.ols.replace(**tree["ols"]))


def _abstract(state):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
      if not isinstance(x, jax.ShapeDtypeStruct) else x,
      _savable(jax.device_get(state)))


class Checkpointer:
  """Saves and restores ``(TrainState, meta)`` in a workdir."""

  def __init__(self, workdir: pathlib.Path):
    root = pathlib.Path(workdir).resolve() / run_files.CHECKPOINTS
    self._root = root
    self._last = ocp.CheckpointManager(
        root / "last", options=ocp.CheckpointManagerOptions(
            max_to_keep=2, create=True, enable_async_checkpointing=False,
            cleanup_tmp_directories=True))
    self._best = ocp.CheckpointManager(
        root / "best", options=ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, enable_async_checkpointing=False,
            cleanup_tmp_directories=True))

  def _save(self, manager, step: int, state, meta: dict) -> None:
    tree = _savable(jax.device_get(state))
    _check_finite_tree(tree, step)
    try:
      if step in manager.all_steps():
        manager.delete(step)
      manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)))
      manager.wait_until_finished()
    except (OSError, ValueError) as e:
      code = _os_error_code(e)
      if code is None:
        raise
      raise OSError(code, f"cannot write checkpoint {manager.directory / str(step)}: "
                    f"{os.strerror(code)}; the previous checkpoint is kept") from None

  def save_last(self, step: int, state, meta: dict) -> None:
    self._save(self._last, step, state, meta)

  def save_best(self, step: int, state, meta: dict) -> None:
    self._save(self._best, step, state, meta)

  def _restore(self, manager, step: int, like):
    abstract = _abstract(like)
    out = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract),
        meta=ocp.args.JsonRestore()))
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(out["state"]),
                                 jax.tree_util.tree_leaves(abstract)):
      if np.shape(got) != tuple(want.shape):
        raise ValueError(f"{jax.tree_util.keystr(path)} has shape {np.shape(got)} "
                         f"in the checkpoint, {tuple(want.shape)} configured")
    return _with_restored(like, out["state"]), dict(out["meta"])

  def restore_last(self, like) -> Optional[tuple[Any, dict]]:
    """``(state, meta)`` of the newest complete checkpoint, or None."""
    step = self._last.latest_step()
    if step is None:
      return None
    try:
      return self._restore(self._last, step, like)
    except (ValueError, KeyError, TypeError) as e:
      raise ConfigError(
          f"checkpoint {self._root / 'last' / str(step)} does not match the "
          f"configured model or class count ({type(e).__name__}: "
          f"{str(e).splitlines()[0][:200]})") from None

  def restore_best(self, like):
    """The best-validation state (falls back to the newest one)."""
    step = self._best.latest_step()
    if step is None:
      restored = self.restore_last(like)
      return like if restored is None else restored[0]
    return self._restore(self._best, step, like)[0]

  def wait(self) -> None:
    self._last.wait_until_finished()
    self._best.wait_until_finished()

  def close(self) -> None:
    self._last.close()
    self._best.close()


def check_compatible(state, *, model_name: str, num_classes: int) -> None:
  """Raises when a restored state's S does not have ``num_classes`` rows."""
  k = state.ols.soft_labels.shape[-1]
  if k != num_classes:
    raise ConfigError(f"checkpoint has {k} classes, config's dataset has "
                      f"{num_classes} (model {model_name})")


def _restore_selected(workdir: pathlib.Path) -> Optional[tuple[pathlib.Path, dict]]:
  """``(folder, raw tree)`` of a run's best checkpoint (else its newest), or None."""
  root = pathlib.Path(workdir).resolve() / run_files.CHECKPOINTS
  for sub in ("best", "last"):
    path = root / sub
    if not path.is_dir():
      continue
    manager = ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(
        create=False, enable_async_checkpointing=False))
    step = manager.latest_step()
    if step is None:
      manager.close()
      continue
    out = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))["state"]
    manager.close()
    return path / str(step), out
  return None


def _model_variables(tree) -> dict[str, Any]:
  variables = {"params": tree["params"]}
  if tree.get("batch_stats"):
    variables["batch_stats"] = tree["batch_stats"]
  return variables


# What restore_selected_variables says, by who restores: a finished run for
# inference, or another run's checkpoint as a KD teacher.
_RESTORE_ERRORS = {
    "run": {
        "missing": "workdir {workdir}: no checkpoint under {root} (not a finished "
                   "training run)",
        "classes": "checkpoint {path}: {found} classes, but results.json names "
                   "{expected}",
        "model": "checkpoint {path} does not match the model of config.json",
    },
    "teacher": {
        "missing": "config.teacher_workdir: no checkpoint found under {root}",
        "classes": "config.teacher_workdir: teacher has {found} classes, the "
                   "student's dataset has {expected}",
        "model": "config.teacher_workdir: checkpoint in {path.parent} does not match "
                 "the teacher's config.json model",
    },
}


def restore_selected_variables(workdir: pathlib.Path, abstract_variables,
                               num_classes: int, *, role: str = "run"
                               ) -> tuple[dict[str, Any], pathlib.Path]:
  """Params and batch_stats of a run's selected checkpoint.

  The selected checkpoint is the best by validation, as in the run's final
  evaluation (the newest one when there is no best). Inference
  (:func:`ols_jax.runs.load`) and a KD teacher both restore through here.

  Args:
    workdir: the run's workdir.
    abstract_variables: ``jax.eval_shape`` of its model's init.
    num_classes: the class count the caller expects; the checkpoint's S must
      have as many.
    role: ``'run'`` (a finished run for inference) or ``'teacher'`` (a KD
      teacher); words the errors.

  Returns:
    ``(variables, checkpoint folder)``: host arrays.

  Raises:
    ConfigError: no checkpoint, another class count, or another model.
  """
  errors = _RESTORE_ERRORS[role]
  found = _restore_selected(workdir)
  if found is None:
    root = pathlib.Path(workdir).resolve() / run_files.CHECKPOINTS
    raise ConfigError(errors["missing"].format(workdir=workdir, root=root))
  path, out = found
  k = np.shape(out["ols"]["soft_labels"])[-1]
  if k != num_classes:
    raise ConfigError(errors["classes"].format(path=path, found=k, expected=num_classes))
  variables = _model_variables(out)
  if jax.tree.structure(variables) != jax.tree.structure(abstract_variables):
    raise ConfigError(errors["model"].format(path=path))
  for got, want in zip(jax.tree.leaves(variables), jax.tree.leaves(abstract_variables)):
    if np.shape(got) != tuple(want.shape):
      raise ConfigError(errors["model"].format(path=path) + (
          f" (a parameter of shape {np.shape(got)}, {tuple(want.shape)} configured)"))
  return jax.tree.map(np.asarray, variables), path
