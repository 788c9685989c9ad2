"""The main job (``experiments/radimagenet.py``) with faults injected, for tests.

Run it exactly like the entry point; the environment says which fault:

  OLS_JAX_TEST_CRASH_AT=<point>:<n>  SIGKILL this process at
      step:<global step>      after that step (and its log line, checkpoint),
      epoch_end:<epoch>       after the epoch's validation line, before its
                              checkpoints,
      final:0                 after the report, before results.json,
      checkpoint_write:<step> after orbax has written the temporary folder of
                              checkpoint <step>, before renaming it.
  OLS_JAX_TEST_NAN_AT_STEP=<n>       the input images of global step n are NaN.

The faults are :class:`FaultHooks` (the loop's :class:`ols_jax.hooks.Hooks`)
and, for ``checkpoint_write``, a patch of orbax's rename (a private API, so it
lives here and not in the library). In-process tests use the hooks directly.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pathlib
import signal
from typing import Any, Mapping, Optional

import numpy as np

from ols_jax import hooks as hooks_lib

CRASH_ENV_VAR = "OLS_JAX_TEST_CRASH_AT"
NAN_ENV_VAR = "OLS_JAX_TEST_NAN_AT_STEP"
ENTRY = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "radimagenet.py"


def _kill_this_process() -> None:
  os.kill(os.getpid(), signal.SIGKILL)


class FaultHooks(hooks_lib.Hooks):
  """Kills the process at one named point and/or feeds one NaN batch.

  Args:
    crash_at: ``"<point>:<n>"`` with point ``step``, ``epoch_end`` or
      ``final`` (``checkpoint_write`` is not a loop point: see
      :func:`crash_in_checkpoint_write`); empty: no crash.
    nan_at_step: the global step whose images become NaN, or None.
  """

  def __init__(self, crash_at: str = "", nan_at_step: Optional[int] = None):
    self.crash_at = crash_at
    self.nan_at_step = nan_at_step

  def _crash_if(self, point: str, n: int) -> None:
    if self.crash_at == f"{point}:{int(n)}":
      _kill_this_process()

  def batch(self, global_step: int, batch: dict[str, Any]) -> dict[str, Any]:
    if global_step != self.nan_at_step:
      return batch
    return dict(batch, image=np.full_like(batch["image"], np.nan))

  def after_step(self, global_step: int) -> None:
    self._crash_if("step", global_step)

  def at_epoch_end(self, epoch: int) -> None:
    self._crash_if("epoch_end", epoch)

  def before_final_write(self) -> None:
    self._crash_if("final", 0)


def crash_in_checkpoint_write(step: int) -> None:
  """Makes orbax kill the process before it renames checkpoint ``step``.

  Patches orbax's atomic-rename finaliser (a private API) in this process: the
  temporary folder of that checkpoint is complete on disk, the rename that
  publishes it never happens.
  """
  from orbax.checkpoint._src.path import atomicity  # pylint: disable=import-outside-toplevel
  cls = atomicity.AtomicRenameTemporaryPath
  finalize = cls.finalize

  async def finalize_or_crash(self, *args, **kwargs):
    if self.get_final().name == str(step):
      _kill_this_process()
    return await finalize(self, *args, **kwargs)

  cls.finalize = finalize_or_crash


def hooks_from_env(environ: Mapping[str, str] = os.environ) -> FaultHooks:
  """The faults the environment asks for (orbax is patched here if asked).

  Args:
    environ: the environment (:data:`CRASH_ENV_VAR`, :data:`NAN_ENV_VAR`).

  Returns:
    The loop hooks to run with.
  """
  crash_at = environ.get(CRASH_ENV_VAR, "")
  point, _, n = crash_at.partition(":")
  if point == "checkpoint_write":
    crash_in_checkpoint_write(int(n))
  nan_at = environ.get(NAN_ENV_VAR)
  return FaultHooks(crash_at, int(nan_at) if nan_at else None)


def main() -> None:
  """Runs the entry point's ``main`` with the environment's faults."""
  from absl import app  # pylint: disable=import-outside-toplevel
  from absl import flags  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location("radimagenet_entry", ENTRY)
  entry = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(entry)  # defines the entry point's flags
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(functools.partial(entry.main, hooks=hooks_from_env()))


if __name__ == "__main__":
  main()
