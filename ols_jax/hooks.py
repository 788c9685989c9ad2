"""Named points of the training loop where a caller may step in.

``train_and_evaluate(config, workdir, hooks=...)`` calls these methods; the
base class does nothing, which is what every real run uses. Tests subclass it
to inject faults at exact points (``tests/fault_entry.py``: a kill after a
step or at an epoch end, a NaN batch), without test code in the library.
"""

from __future__ import annotations

from typing import Any


class Hooks:
  """No-op callbacks at the loop's named points; subclass to act at them."""

  def batch(self, global_step: int, batch: dict[str, Any]) -> dict[str, Any]:
    """The input batch of ``global_step`` (1-based), before the train step.

    Args:
      global_step: the step this batch is for.
      batch: the batch as the loop holds it (host or device arrays).

    Returns:
      The batch to train on; here ``batch`` itself.
    """
    del global_step
    return batch

  def after_step(self, global_step: int) -> None:
    """After train step ``global_step`` and its logging and checkpoint."""

  def at_epoch_end(self, epoch: int) -> None:
    """After epoch ``epoch`` (1-based) is validated and logged, before its
    checkpoints are written."""

  def before_final_write(self) -> None:
    """After the report is written, before ``results.json`` (which marks the
    run as finished)."""
