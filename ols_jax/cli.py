"""Command-line glue shared by the entry points: clean one-line errors."""

from __future__ import annotations

import sys
from typing import Any, Callable

from ols_jax import config as config_lib
from ols_jax import data as data_lib
from ols_jax import train

# Errors a user can fix; shown as one line without a traceback.
USER_ERRORS = (config_lib.ConfigError, data_lib.DataError, train.TrainingDivergedError,
               ValueError, OSError)


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
    if debug:
      raise
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
