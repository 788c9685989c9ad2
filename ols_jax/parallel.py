"""Data parallelism: ``jax.jit`` over a device mesh (the main path) and
``jax.pmap`` (the second path), single- or multi-host.

Multi-host: call :func:`initialize_distributed` first in every process (it wraps
``jax.distributed.initialize()``, which reads the coordinator address, process
count and id from the cluster environment, e.g. SLURM or Cloud TPU, or from the
arguments). Every process then builds the same mesh over *all* devices and feeds
only its own rows of the global batch; :func:`put_batch` assembles them into one
global ``jax.Array`` with ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ols_jax import losses
from ols_jax import steps

DATA_AXIS = "data"
PMAP_AXIS = "batch"


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None,
                           auto: bool = False) -> None:
  """Joins a multi-host run.

  A no-op when there is one process and no arguments, unless ``auto``: then
  ``jax.distributed.initialize()`` detects everything from the cluster
  environment (SLURM, Open MPI, Cloud TPU, ...).

  Args:
    coordinator_address: ``host:port`` of process 0, or None to auto-detect.
    num_processes: total processes, or None to auto-detect.
    process_id: this process's index, or None to auto-detect.
    auto: initialise even without arguments.
  """
  if not auto and coordinator_address is None and num_processes in (None, 1):
    return
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes,
                             process_id=process_id)


def usable_cores() -> int:
  """CPU cores this process may run on (its affinity mask, not the machine)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def cpu_device_count(requested: int, batch_sizes: Sequence[int],
                     cores: Optional[int] = None) -> int:
  """How many XLA CPU devices to split the host into.

  XLA CPU runs each convolution of a step on one thread, so on a multi-core
  host a single CPU device leaves cores idle; data parallelism over several
  host devices (one per core) runs the per-device convolutions concurrently.
  ``requested`` 0 means one device per usable core, reduced to the largest
  count that divides every batch size; any other value is taken as is.

  Args:
    requested: the wanted count, or 0 for automatic.
    batch_sizes: global batch sizes that must split evenly over the devices.
    cores: usable cores (default: :func:`usable_cores`).

  Returns:
    The device count, >= 1.
  """
  if requested < 0:
    raise ValueError(f"cpu_devices: expected >= 0, got {requested}")
  if requested:
    return requested
  n = max(1, usable_cores() if cores is None else cores)
  while n > 1 and any(b % n for b in batch_sizes):
    n -= 1
  return n


def configure_cpu_devices(requested: int, batch_sizes: Sequence[int]) -> int:
  """Splits the host CPU into XLA devices before JAX starts its backends.

  Leaves everything alone (and returns 0) when the count was already fixed
  through ``XLA_FLAGS`` (``--xla_force_host_platform_device_count``) or when
  XLA's CPU threads were limited (``--xla_cpu_multi_thread_eigen=false``, as
  the study driver does for runs that share the cores). Accelerator back-ends are not
  affected: ``jax.devices()`` still lists the GPUs or TPUs.

  Returns:
    The number of CPU devices configured, or 0 if left to XLA.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if ("xla_force_host_platform_device_count" in flags
      or "xla_cpu_multi_thread_eigen=false" in flags):
    return 0
  n = cpu_device_count(requested, batch_sizes)
  jax.config.update("jax_num_cpu_devices", n)
  return n


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D mesh with axis ``'data'`` over ``devices`` (default: all).

  The axis type is Auto so XLA propagates shardings through the gathers and
  scatters of the OLS update.
  """
  devices = list(jax.devices() if devices is None else devices)
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


def jit_train_step(spec: losses.LossSpec, mesh: Mesh,
                   teacher_apply: Optional[Callable[..., Any]] = None,
                   donate: bool = True):
  """``train_step`` compiled for the mesh: state replicated and donated, batch
  sharded on ``'data'``; BatchNorm statistics are over the global batch."""
  repl, data = replicated_sharding(mesh), data_sharding(mesh)
  fn = functools.partial(steps.train_step, spec=spec, teacher_apply=teacher_apply)
  in_shardings = (repl, data, repl) if spec.needs_teacher else (repl, data)
  return jax.jit(fn, in_shardings=in_shardings, out_shardings=(repl, repl),
                 donate_argnums=(0,) if donate else ())


def jit_eval_step(mesh: Mesh, num_bins: int = 15, with_outputs: bool = True):
  repl, data = replicated_sharding(mesh), data_sharding(mesh)
  fn = functools.partial(steps.eval_step, num_bins=num_bins,
                         with_outputs=with_outputs)
  return jax.jit(fn, in_shardings=(repl, data),
                 out_shardings=(repl, data))


def jit_epoch_boundary(mesh: Mesh, freeze_threshold: Optional[float] = None):
  repl = replicated_sharding(mesh)
  fn = functools.partial(steps.epoch_boundary, freeze_threshold=freeze_threshold)
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
  fn = functools.partial(steps.train_step, spec=spec, teacher_apply=teacher_apply,
                         axis_name=PMAP_AXIS)
  return jax.pmap(fn, axis_name=PMAP_AXIS, donate_argnums=(0,) if donate else ())


def pmap_eval_step(num_bins: int = 15, with_outputs: bool = True):
  fn = functools.partial(steps.eval_step, num_bins=num_bins,
                         axis_name=PMAP_AXIS, with_outputs=with_outputs)
  return jax.pmap(fn, axis_name=PMAP_AXIS)


def pmap_epoch_boundary(freeze_threshold: Optional[float] = None):
  fn = functools.partial(steps.epoch_boundary, freeze_threshold=freeze_threshold,
                         axis_name=PMAP_AXIS)
  return jax.pmap(fn, axis_name=PMAP_AXIS)


def replicate(tree: Any, devices: Optional[Sequence[jax.Device]] = None) -> Any:
  """Copies a pytree onto each local device (leading device axis)."""
  devices = list(jax.local_devices() if devices is None else devices)
  sharding = NamedSharding(Mesh(np.asarray(devices), (PMAP_AXIS,)), P(PMAP_AXIS))
  return jax.tree.map(
      lambda x: jax.device_put(np.stack([np.asarray(x)] * len(devices)), sharding),
      tree)


def unreplicate(tree: Any) -> Any:
  """Takes replica 0 of a replicated pytree."""
  return jax.tree.map(lambda x: x[0], tree)


def split_for_pmap(batch: dict[str, np.ndarray], num_devices: int) -> dict[str, np.ndarray]:
  """Reshapes ``(B, ...)`` host arrays to ``(num_devices, B / num_devices, ...)``."""
  check_batch_size(next(iter(batch.values())).shape[0], num_devices)
  return jax.tree.map(
      lambda x: x.reshape((num_devices, x.shape[0] // num_devices) + x.shape[1:]),
      batch)


# ----------------------------------------------------------------------------
# One interface over both paths, for the training loop.
# ----------------------------------------------------------------------------


class DataParallel:
  """The compiled steps of one data-parallel mode behind one interface.

  ``train(state, host_batch, *teacher)``, ``evaluate(state, host_batch)`` and
  ``boundary(state)`` take and return device-side state; ``to_device`` /
  ``to_host`` convert a plain (single-copy) TrainState. Metrics come back as
  global sums and eval outputs as ``(B, ...)`` arrays in both modes.
  """

  def __init__(self, mode: str, spec: losses.LossSpec,
               devices: Sequence[jax.Device], *, num_bins: int = 15,
               teacher_apply: Optional[Callable[..., Any]] = None):
    if mode not in ("jit", "pmap"):
      raise ValueError(f"parallel: expected 'jit' or 'pmap', got {mode!r}")
    self.mode = mode
    self.devices = list(devices)
    n = len(self.devices)
    if mode == "jit":
      self.mesh = make_mesh(self.devices)
      self._train = jit_train_step(spec, self.mesh, teacher_apply)
      self._eval = jit_eval_step(self.mesh, num_bins, with_outputs=False)
      self._eval_out = jit_eval_step(self.mesh, num_bins, with_outputs=True)
      self._boundary = jit_epoch_boundary(self.mesh, spec.freeze_threshold)
    else:
      if jax.process_count() > 1:
        raise ValueError("parallel: the pmap path runs on one host; use 'jit' "
                         "across hosts")
      self.mesh = None
      self._train = pmap_train_step(spec, teacher_apply)
      self._eval = pmap_eval_step(num_bins, with_outputs=False)
      self._eval_out = pmap_eval_step(num_bins, with_outputs=True)
      self._boundary = pmap_epoch_boundary(spec.freeze_threshold)
    self._n = n

  def to_device(self, tree: Any) -> Any:
    if self.mode == "jit":
      return replicate_on_mesh(tree, self.mesh)
    return replicate(tree, self.devices)

  def to_host(self, tree: Any) -> Any:
    tree = jax.device_get(tree)
    return tree if self.mode == "jit" else unreplicate(tree)

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
    return sums, outputs

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
