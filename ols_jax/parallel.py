"""Data parallelism: ``jax.jit`` over a device mesh (the main path) and
``jax.pmap`` (the second path), single- or multi-host.

Multi-host: every process first joins the run
(:func:`ols_jax.distributed.initialize_distributed`; the process start-up,
including the split of a host CPU into devices, is :mod:`ols_jax.distributed`).
Every process then builds the same mesh over *all* devices, process 0's first,
and feeds only its own rows of the global batch; :func:`put_batch` assembles
them into one global ``jax.Array`` with ``jax.make_array_from_process_local_data``.
Replicated results (state, metric sums) are read on every process;
batch-sharded outputs are gathered with :func:`global_rows`.

The training steps (:mod:`ols_jax.steps`, and through them the losses) are
imported only by the builders of a train step or epoch boundary, so an
inference-only :class:`DataParallel` (``spec=None``) loads no loss code.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ols_jax import inference

if TYPE_CHECKING:
  from ols_jax import losses

DATA_AXIS = "data"
PMAP_AXIS = "batch"


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D mesh with axis ``'data'`` over ``devices`` (default: all).

  Devices are ordered by process, so process ``i``'s rows of a global batch
  (see :mod:`ols_jax.data.pipeline`) land on its own devices. The axis type is
  Auto so XLA propagates shardings through the gathers and scatters of the OLS
  update.
  """
  devices = sorted(jax.devices() if devices is None else devices,
                   key=lambda d: (d.process_index, d.id))
  return Mesh(np.asarray(devices), (DATA_AXIS,),
              axis_types=(jax.sharding.AxisType.Auto,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(global_batch_size: int, num_devices: int) -> None:
  """Raises a clear error when the batch does not split evenly."""
  if global_batch_size % num_devices:
    raise ValueError(f"batch_size: expected a multiple of the device count "
                     f"{num_devices}, got {global_batch_size}")


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Places this process's rows of a global batch on the mesh.

  Args:
    batch: host arrays holding this process's consecutive rows.
    mesh: the device mesh.

  Returns:
    Global arrays sharded along ``'data'``.
  """
  sharding = data_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def replicate_on_mesh(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, replicated_sharding(mesh))


def global_rows(tree: Any) -> Any:
  """Host numpy copies of whole global batches, on every process.

  A batch-sharded ``jax.Array`` that spans other processes is all-gathered; a
  numpy array is taken as this process's consecutive rows and concatenated
  with the other processes' rows in process order (the global batch order).
  With one process this is ``jax.device_get``.
  """
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, jax.device_get(tree))

  def one(x):
    if isinstance(x, jax.Array) and x.is_fully_replicated:
      return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(one, tree)


def jit_train_step(spec: losses.LossSpec, mesh: Mesh,
                   teacher_apply: Optional[Callable[..., Any]] = None,
                   donate: bool = True):
  """``train_step`` compiled for the mesh: state replicated and donated, batch
  sharded on ``'data'``; BatchNorm statistics are over the global batch."""
  repl, data = replicated_sharding(mesh), data_sharding(mesh)
  from ols_jax import steps  # pylint: disable=import-outside-toplevel
  fn = functools.partial(steps.train_step, spec=spec, teacher_apply=teacher_apply)
  in_shardings = (repl, data, repl) if spec.needs_teacher else (repl, data)
  return jax.jit(fn, in_shardings=in_shardings, out_shardings=(repl, repl),
                 donate_argnums=(0,) if donate else ())


def jit_eval_step(mesh: Mesh, num_bins: int = 15, with_outputs: bool = True):
  repl, data = replicated_sharding(mesh), data_sharding(mesh)
  fn = functools.partial(inference.eval_step, num_bins=num_bins,
                         with_outputs=with_outputs)
  return jax.jit(fn, in_shardings=(repl, data),
                 out_shardings=(repl, data))


def jit_epoch_boundary(mesh: Mesh, freeze_threshold: Optional[float] = None,
                       momentum: float = 0.0):
  repl = replicated_sharding(mesh)
  from ols_jax import steps  # pylint: disable=import-outside-toplevel
  fn = functools.partial(steps.epoch_boundary, freeze_threshold=freeze_threshold,
                         momentum=momentum)
  return jax.jit(fn, in_shardings=(repl,), out_shardings=repl, donate_argnums=(0,))


# ----------------------------------------------------------------------------
# pmap path.
# ----------------------------------------------------------------------------


def pmap_train_step(spec: losses.LossSpec,
                    teacher_apply: Optional[Callable[..., Any]] = None,
                    donate: bool = True):
  """``train_step`` under ``jax.pmap`` over axis ``'batch'``.

  The model must be created with ``bn_axis_name='batch'`` so BatchNorm
  averages its statistics across devices. OLS sums stay per device until
  :func:`pmap_epoch_boundary`.
  """
  from ols_jax import steps  # pylint: disable=import-outside-toplevel
  fn = functools.partial(steps.train_step, spec=spec, teacher_apply=teacher_apply,
                         axis_name=PMAP_AXIS)
  return jax.pmap(fn, axis_name=PMAP_AXIS, donate_argnums=(0,) if donate else ())


def pmap_eval_step(num_bins: int = 15, with_outputs: bool = True):
  fn = functools.partial(inference.eval_step, num_bins=num_bins,
                         axis_name=PMAP_AXIS, with_outputs=with_outputs)
  return jax.pmap(fn, axis_name=PMAP_AXIS)


def pmap_epoch_boundary(freeze_threshold: Optional[float] = None,
                        momentum: float = 0.0):
  from ols_jax import steps  # pylint: disable=import-outside-toplevel
  fn = functools.partial(steps.epoch_boundary, freeze_threshold=freeze_threshold,
                         momentum=momentum, axis_name=PMAP_AXIS)
  return jax.pmap(fn, axis_name=PMAP_AXIS)


def _stack_on(rows: Sequence[np.ndarray], devices: Sequence[jax.Device]) -> jax.Array:
  """``rows[i]`` on ``devices[i]``, as one array with a leading device axis."""
  sharding = NamedSharding(Mesh(np.asarray(devices), (PMAP_AXIS,)), P(PMAP_AXIS))
  return jax.device_put(np.stack(rows), sharding)


def replicate(tree: Any, devices: Optional[Sequence[jax.Device]] = None) -> Any:
  """Copies a pytree onto each local device (leading device axis)."""
  devices = list(jax.local_devices() if devices is None else devices)
  return jax.tree.map(lambda x: _stack_on([np.asarray(x)] * len(devices), devices),
                      tree)


def unreplicate(tree: Any) -> Any:
  """Takes replica 0 of a replicated pytree."""
  return jax.tree.map(lambda x: x[0], tree)


def replicate_state(tree: Any, devices: Sequence[jax.Device]) -> Any:
  """:func:`replicate`, but a TrainState's OLS sums go to replica 0 only.

  The inverse of :func:`unreplicate_state`: the other replicas start from
  zero, so the psum at the epoch boundary adds the restored sums once.
  """
  out = replicate(tree, devices)
  acc = getattr(tree, "ols", None)
  if acc is None:
    return out

  def first_only(x):
    x = np.asarray(x)
    return _stack_on([x] + [np.zeros_like(x)] * (len(devices) - 1), devices)
  return out.replace(ols=out.ols.replace(prob_sums=first_only(acc.prob_sums),
                                         counts=first_only(acc.counts)))


def unreplicate_state(tree: Any) -> Any:
  """:func:`unreplicate`, but a TrainState's OLS sums are added over replicas.

  Under pmap each replica accumulates the sums of its own rows until the epoch
  boundary adds them up; a mid-epoch checkpoint of replica 0 alone would lose
  the others' share of the epoch.
  """
  out = unreplicate(tree)
  acc = getattr(tree, "ols", None)
  if acc is None:
    return out
  return out.replace(ols=out.ols.replace(prob_sums=np.sum(acc.prob_sums, axis=0),
                                         counts=np.sum(acc.counts, axis=0)))


def split_for_pmap(batch: dict[str, np.ndarray], num_devices: int) -> dict[str, np.ndarray]:
  """Reshapes ``(B, ...)`` host arrays to ``(num_devices, B / num_devices, ...)``."""
  check_batch_size(next(iter(batch.values())).shape[0], num_devices)
  return jax.tree.map(
      lambda x: x.reshape((num_devices, x.shape[0] // num_devices) + x.shape[1:]),
      batch)


# ----------------------------------------------------------------------------
# One interface over both paths, for the training loop.
# ----------------------------------------------------------------------------


def _inference_only(*_, **__):
  raise TypeError("this DataParallel was built for inference (spec=None): it has no "
                  "train step or epoch boundary")


class DataParallel:
  """The compiled steps of one data-parallel mode behind one interface.

  ``train(state, host_batch, *teacher)``, ``evaluate(state, host_batch)`` and
  ``boundary(state)`` take and return device-side state; ``to_device`` /
  ``to_host`` convert a plain (single-copy) TrainState. Metrics come back as
  global sums and eval outputs as host ``(B, ...)`` arrays of the whole global
  batch (on every process) in both modes. ``spec=None`` builds the evaluation
  steps only (inference: no loss is constructed).
  """

  def __init__(self, mode: str, spec: Optional[losses.LossSpec],
               devices: Sequence[jax.Device], *, num_bins: int = 15,
               teacher_apply: Optional[Callable[..., Any]] = None):
    if mode not in ("jit", "pmap"):
      raise ValueError(f"parallel: expected 'jit' or 'pmap', got {mode!r}")
    self.mode = mode
    self.devices = list(devices)
    n = len(self.devices)
    if mode == "jit":
      if jax.process_count() > 1 and n != jax.device_count():
        raise ValueError(f"num_devices: a multi-process run uses every device of "
                         f"every process ({jax.device_count()}), got {n}")
      self.mesh = make_mesh(self.devices)
      self._eval = jit_eval_step(self.mesh, num_bins, with_outputs=False)
      self._eval_out = jit_eval_step(self.mesh, num_bins, with_outputs=True)
      if spec is not None:
        self._train = jit_train_step(spec, self.mesh, teacher_apply)
        self._boundary = jit_epoch_boundary(self.mesh, spec.freeze_threshold,
                                            spec.ols_momentum)
    else:
      if jax.process_count() > 1:
        raise ValueError("parallel: the pmap path runs on one host; use 'jit' "
                         "across hosts")
      self.mesh = None
      self._eval = pmap_eval_step(num_bins, with_outputs=False)
      self._eval_out = pmap_eval_step(num_bins, with_outputs=True)
      if spec is not None:
        self._train = pmap_train_step(spec, teacher_apply)
        self._boundary = pmap_epoch_boundary(spec.freeze_threshold, spec.ols_momentum)
    if spec is None:  # inference only: no loss, no train step, no epoch boundary
      self._train = self._boundary = _inference_only
    self._n = n

  def to_device(self, tree: Any) -> Any:
    if self.mode == "jit":
      return replicate_on_mesh(tree, self.mesh)
    return replicate_state(tree, self.devices)

  def to_host(self, tree: Any) -> Any:
    """A host copy (on every process); under pmap the OLS sums of all replicas."""
    tree = jax.device_get(tree)
    return tree if self.mode == "jit" else unreplicate_state(tree)

  def _batch(self, batch):
    if self.mode == "jit":
      if all(isinstance(x, jax.Array) for x in jax.tree.leaves(batch)):
        return batch  # already placed by prefetch()
      return put_batch(batch, self.mesh)
    return split_for_pmap(batch, self._n)

  def train(self, state, batch, *teacher):
    state, metrics = self._train(state, self._batch(batch), *teacher)
    if self.mode == "pmap":
      metrics = jax.tree.map(lambda x: x[0], metrics)
    return state, metrics

  def evaluate(self, state, batch, with_outputs: bool = False):
    fn = self._eval_out if with_outputs else self._eval
    sums, outputs = fn(state, self._batch(batch))
    if self.mode == "pmap":
      sums = jax.tree.map(lambda x: x[0], sums)
      outputs = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), outputs)
    return sums, global_rows(outputs)

  def boundary(self, state):
    return self._boundary(state)

  def prefetch(self, batches, size: int = 2):
    """Host batches placed on the devices ``size`` steps ahead (jit path)."""
    if self.mode == "jit":
      return prefetch_to_device(batches, self.mesh, size)
    return iter(batches)

  def step(self, state) -> int:
    """The state's step as a Python int (fetches one scalar)."""
    step = jax.device_get(state.step)
    return int(step if self.mode == "jit" else step[0])

  def soft_labels(self, state) -> np.ndarray:
    s = jax.device_get(state.ols.soft_labels)
    return np.asarray(s if self.mode == "jit" else s[0])


def prefetch_to_device(batches, mesh: Mesh, size: int = 2):
  """Yields ``put_batch(batch, mesh)`` for each host batch, ``size`` ahead.

  ``jax.device_put`` is asynchronous, so keeping a couple of batches already
  placed (with the data sharding) overlaps the host-to-device copies with the
  running step; on accelerators this removes the copy from the step time.
  Nothing here blocks on device results.

  Args:
    batches: an iterator of host batch dicts.
    mesh: the device mesh.
    size: number of batches placed ahead (>= 1).

  Yields:
    Global, sharded batches in the input order.
  """
  import collections  # pylint: disable=import-outside-toplevel
  queue = collections.deque()
  it = iter(batches)
  for batch in it:
    queue.append(put_batch(batch, mesh))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()
