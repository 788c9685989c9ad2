"""Train and evaluate one method/model/dataset: the project's main job.

  python experiments/radimagenet.py --config=experiments/configs/smoke.py --workdir=runs/smoke

Every config field can be overridden: --config.method=ce --config.seed=1 ...
Rerunning the same command on the same workdir resumes the run.

Several processes (hosts), each running the same command:
  ... --distributed                       # SLURM, Open MPI, Cloud TPU: auto-detected
  ... --distributed --coordinator_address=HOST:PORT --num_processes=N --process_id=I
experiments/launch_local.py starts N such processes on this machine.
"""

import os
import sys
import traceback

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ols_jax import cli
from ols_jax import parallel

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (resumed if it holds a run).")
_DEBUG = flags.DEFINE_bool("debug", False, "Show full tracebacks on errors.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Multi-process run: call jax.distributed.initialize() first. Coordinator, "
    "process count and id come from the flags below or, where not given, from "
    "the cluster environment (SLURM, Open MPI, Cloud TPU).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "With --distributed: HOST:PORT of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "With --distributed: how many processes take part.")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "With --distributed: this process's index, 0 .. N-1.")
_DISTRIBUTED_TIMEOUT = flags.DEFINE_float(
    "distributed_timeout_s", 300.0,
    "With --distributed: seconds allowed for every process to join; after that "
    "the run stops with an error instead of waiting.")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", 0,
    "On a CPU-only host: split the CPU into this many XLA devices for data "
    "parallelism (XLA runs each convolution on one thread). 0 = one per usable "
    "core, reduced to a count that divides the batch sizes; 1 = a single device. "
    "Per process in a --distributed run. Ignored when XLA_FLAGS already fixes "
    "the host device count or thread count.")


def main(argv, hooks=None):
  """Runs the job; ``hooks`` go to ``train_and_evaluate`` (tests/fault_entry.py)."""
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  if not _DEBUG.value:
    # Orbax logs a traceback for a failed write that it also raises; the raised
    # error is reported on one line (--debug shows everything).
    logging.get_absl_logger().addFilter(
        lambda r: r.levelno < logging.converter.STANDARD_ERROR or "orbax" not in r.pathname)
  config = _CONFIG.value
  given = [f.name for f in (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID)
           if f.value is not None]
  if given and not _DISTRIBUTED.value:
    return _fail(f"--{given[0]} needs --distributed")
  parallel.configure_cpu_devices(_CPU_DEVICES.value,
                                 (config.batch_size, config.eval_batch_size),
                                 processes=_NUM_PROCESSES.value or 1)
  if not _DISTRIBUTED.value:
    return cli.run_main(config, _WORKDIR.value, debug=_DEBUG.value, hooks=hooks)
  try:
    parallel.initialize_distributed(
        _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, auto=True,
        timeout_s=_DISTRIBUTED_TIMEOUT.value)
  except ValueError as e:
    if _DEBUG.value:
      raise
    return _fail(str(e))
  try:
    return cli.run_main(config, _WORKDIR.value, debug=_DEBUG.value, hooks=hooks)
  except BaseException as e:  # pylint: disable=broad-except
    # A failed process leaves at once, without JAX's shutdown barrier (which
    # would wait for the others and then abort with a native trace); the
    # others stop on their next collective.
    code = e.code if isinstance(e, SystemExit) else 1
    if not code:
      raise
    if not isinstance(e, SystemExit):
      traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 1)  # pylint: disable=protected-access


def _fail(message: str) -> int:
  """Prints ``error: message`` and exits with status 2."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
