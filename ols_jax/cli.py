"""The main job's command line, and glue shared by the entry points (clean
one-line errors).

  python -m ols_jax.cli --config=experiments/configs/smoke.py --workdir=runs/smoke

trains and evaluates one method / model / dataset (``experiments/radimagenet.py``
is this same command). Every config field can be overridden
(``--config.method=ce --config.seed=1 ...``); rerunning the same command on the
same workdir resumes the run. Several processes (hosts), each running the same
command: ``--distributed`` (SLURM, Open MPI, Cloud TPU: auto-detected) or
``--distributed --coordinator_address=HOST:PORT --num_processes=N --process_id=I``.

The main job's flags are defined by :func:`define_flags` only, so the other
entry points, which import this module for :func:`call_or_exit`, define flags
of the same names without a clash.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any, Callable

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ols_jax import config as config_lib
from ols_jax import data as data_lib
from ols_jax import distributed
from ols_jax import models
from ols_jax import train

# Errors a user can fix; shown as one line without a traceback. Anything else
# (a ValueError or TypeError from inside the library, say) is a bug and keeps
# its traceback.
USER_ERRORS = (config_lib.ConfigError, data_lib.DataError, train.TrainingDivergedError,
               models.UnknownOptionError, OSError)


def error_line(e: BaseException) -> str:
  """The ``error: ...`` line of a user error (its first line, no errno prefix)."""
  message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
  if isinstance(e, OSError) and e.strerror:  # no "[Errno N]" prefix
    message = e.strerror + (f": {e.filename}" if e.filename else "")
  return f"error: {message}"


def call_or_exit(fn: Callable[..., Any], *args, debug: bool = False, **kwargs) -> Any:
  """Calls ``fn``; a user error becomes one ``error: ...`` line and exit code 2."""
  try:
    return fn(*args, **kwargs)
  except USER_ERRORS as e:  # pylint: disable=catching-non-exception
    if debug or (isinstance(e, OSError) and e.errno is None):
      raise  # an OSError without errno is raised by code, not by the file system
    print(error_line(e), file=sys.stderr)
    sys.exit(2)


def run_main(config, workdir: str, *, debug: bool = False, hooks=None) -> int:
  """Runs ``train_and_evaluate`` and turns user errors into exit code 2.

  Args:
    config: the run's config.
    workdir: its output folder.
    debug: raise user errors (full traceback) instead of one line.
    hooks: passed to ``train_and_evaluate`` (:class:`ols_jax.hooks.Hooks`).

  Returns:
    0 (a user error exits with status 2).
  """
  _, summary = call_or_exit(train.train_and_evaluate, config, workdir, hooks=hooks,
                            debug=debug)
  test = summary["test"]
  print(f"done: {summary['method']} / {summary['model']} on {summary['dataset']}: "
        f"test top-1 error {100 * test['top1_error']:.2f}%, ECE {100 * test['ece']:.2f}%, "
        f"NLL {test['nll']:.4f} -> {workdir}/report.md")
  return 0


# ----------------------------------------------------------------------------
# The main job: python -m ols_jax.cli (and experiments/radimagenet.py).
# ----------------------------------------------------------------------------

# The main job's flag holders, by name; filled by define_flags().
_FLAGS: dict[str, Any] = {}


def define_flags() -> None:
  """Defines the main job's absl flags (once per process); :func:`main` reads them."""
  if _FLAGS:
    return
  _FLAGS.update(
      config=config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                             lock_config=True),
      workdir=flags.DEFINE_string("workdir", None,
                                  "Output folder (resumed if it holds a run)."),
      debug=flags.DEFINE_bool("debug", False, "Show full tracebacks on errors."),
      distributed=flags.DEFINE_bool(
          "distributed", False,
          "Multi-process run: call jax.distributed.initialize() first. Coordinator, "
          "process count and id come from the flags below or, where not given, from "
          "the cluster environment (SLURM, Open MPI, Cloud TPU)."),
      coordinator_address=flags.DEFINE_string(
          "coordinator_address", None, "With --distributed: HOST:PORT of process 0."),
      num_processes=flags.DEFINE_integer(
          "num_processes", None, "With --distributed: how many processes take part."),
      process_id=flags.DEFINE_integer(
          "process_id", None, "With --distributed: this process's index, 0 .. N-1."),
      distributed_timeout_s=flags.DEFINE_float(
          "distributed_timeout_s", 300.0,
          "With --distributed: seconds allowed for every process to join; after that "
          "the run stops with an error instead of waiting."),
      cpu_devices=flags.DEFINE_integer(
          "cpu_devices", 0,
          "On a CPU-only host: split the CPU into this many XLA devices for data "
          "parallelism (XLA runs each convolution on one thread). 0 = one per usable "
          "core, reduced to a count that divides the batch sizes; 1 = a single device. "
          "Per process in a --distributed run. Ignored when XLA_FLAGS already fixes "
          "the host device count or thread count."),
  )


def main(argv, hooks=None) -> int:
  """Runs the main job from the flags of :func:`define_flags` (``absl.app.run``).

  Args:
    argv: the remaining command line (unused).
    hooks: passed to ``train_and_evaluate`` (``tests/fault_entry.py`` injects
      faults through them).

  Returns:
    0 (errors exit with status 2, or the failed process's status in a
    ``--distributed`` run).
  """
  del argv
  f = {name: holder.value for name, holder in _FLAGS.items()}
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  if not f["debug"]:
    # Orbax logs a traceback for a failed write that it also raises; the raised
    # error is reported on one line (--debug shows everything).
    logging.get_absl_logger().addFilter(
        lambda r: r.levelno < logging.converter.STANDARD_ERROR or "orbax" not in r.pathname)
  config = f["config"]
  given = [name for name in ("coordinator_address", "num_processes", "process_id")
           if f[name] is not None]
  if given and not f["distributed"]:
    return _fail(f"--{given[0]} needs --distributed")
  distributed.configure_cpu_devices(f["cpu_devices"],
                                    (config.batch_size, config.eval_batch_size),
                                    processes=f["num_processes"] or 1)
  if not f["distributed"]:
    return run_main(config, f["workdir"], debug=f["debug"], hooks=hooks)
  try:
    distributed.initialize_distributed(
        f["coordinator_address"], f["num_processes"], f["process_id"], auto=True,
        timeout_s=f["distributed_timeout_s"])
  except ValueError as e:
    if f["debug"]:
      raise
    return _fail(str(e))
  try:
    return run_main(config, f["workdir"], debug=f["debug"], hooks=hooks)
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


def run() -> None:
  """The main job from the command line: defines the flags, then ``absl.app.run``."""
  define_flags()
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)


if __name__ == "__main__":
  run()
