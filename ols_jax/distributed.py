"""Process start-up: joining a multi-process run and splitting the host CPU
into XLA devices. Both happen before anything else touches JAX's back-ends.

Multi-host: :func:`initialize_distributed` wraps ``jax.distributed.initialize()``,
which reads the coordinator address, process count and id from the arguments or
the cluster environment (SLURM, Open MPI, Cloud TPU). On a CPU-only host,
:func:`configure_cpu_devices` sets how many XLA devices the data parallelism of
:mod:`ols_jax.parallel` gets.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Optional, Sequence

import jax


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None,
                           auto: bool = False,
                           timeout_s: float = 300.0) -> None:
  """Joins a multi-host run, or exits cleanly if that fails within ``timeout_s``.

  A no-op when there is one process and no arguments, unless ``auto``: then
  ``jax.distributed.initialize()`` detects what is not given from the cluster
  environment (SLURM, Open MPI, Cloud TPU, ...). On CPU, cross-process
  collectives use gloo. Call it before anything else touches JAX (set
  ``jax_num_cpu_devices`` first, see :func:`configure_cpu_devices`); it also
  starts the back-ends, which waits for every process.

  XLA aborts the whole process with a long native trace when the coordinator
  cannot be reached or a process never joins; a watchdog thread (the native
  call releases the GIL) fires first, prints one ``error: ...`` line and exits
  with status 2.

  Args:
    coordinator_address: ``host:port`` of process 0, or None to auto-detect.
    num_processes: total processes, or None to auto-detect.
    process_id: this process's index, or None to auto-detect.
    auto: initialise even without arguments.
    timeout_s: seconds allowed for every process to join.

  Raises:
    ValueError: bad arguments or nothing to auto-detect from (one line).
  """
  if not auto and coordinator_address is None and num_processes in (None, 1):
    return
  if timeout_s <= 0:
    raise ValueError(f"distributed_timeout_s: expected > 0, got {timeout_s}")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  where = coordinator_address or "the auto-detected coordinator"
  who = "this process" if process_id is None else f"process {process_id}"
  watchdog = _exit_later(
      timeout_s, f"error: distributed: {who} could not join the run at {where} "
      f"within {timeout_s:g} s (coordinator unreachable, or a process did not "
      f"start or died)")
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes,
                               process_id=process_id,
                               initialization_timeout=int(timeout_s) + 30)
    jax.devices()  # every process's devices: waits for all of them.
  except (RuntimeError, ValueError) as e:
    text = str(e).strip().splitlines()
    raise ValueError(f"distributed: {text[0] if text else type(e).__name__}") from None
  finally:
    watchdog.cancel()


def _exit_later(seconds: float, message: str):
  """A started daemon timer that prints ``message`` and exits with status 2."""
  def fire():
    sys.stdout.flush()
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    os._exit(2)  # pylint: disable=protected-access

  timer = threading.Timer(seconds, fire)
  timer.daemon = True
  timer.start()
  return timer


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


def configure_cpu_devices(requested: int, batch_sizes: Sequence[int],
                          processes: int = 1) -> int:
  """Splits the host CPU into XLA devices before JAX starts its backends.

  In a run of ``processes`` processes the count is per process, and the
  automatic count divides each process's share of the batch.

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
  n = cpu_device_count(requested, [max(b // processes, 1) for b in batch_sizes])
  jax.config.update("jax_num_cpu_devices", n)
  return n
