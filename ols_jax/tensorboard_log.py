"""TensorBoard event files written without TensorFlow (through tensorboardX).

:class:`ols_jax.logging_utils.MetricWriter` forwards every record it appends
to ``metrics.jsonl`` to an :class:`EventWriter`, so the scalars in TensorBoard
are those of the file. Per epoch, the training loop adds the validation
reliability diagram and, for OLS, the soft-label matrix as images
(:func:`log_epoch_figures`). Everything here is skipped when tensorboardX is
not installed.

View with ``tensorboard --logdir runs/``.
"""

from __future__ import annotations

import importlib.util
import io
import pathlib
from typing import Any, Mapping, Optional, Sequence

import numpy as np


def available() -> bool:
  """Whether tensorboardX can be imported."""
  return importlib.util.find_spec("tensorboardX") is not None


class EventWriter:
  """Scalars and images of one run in ``logdir``.

  The event file is only created by the first write, so a run that logs
  nothing (e.g. a rerun of a finished run) leaves the folder untouched. With
  ``purge_step`` (a resumed run), events at or after that step written by an
  interrupted run are hidden by TensorBoard, as ``metrics.jsonl`` drops them.
  """

  def __init__(self, logdir: str | pathlib.Path, purge_step: Optional[int] = None):
    self.logdir = pathlib.Path(logdir)
    self._purge_step = purge_step
    self._writer = None

  def _get(self):
    if self._writer is None:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._writer = SummaryWriter(str(self.logdir), purge_step=self._purge_step,
                                   flush_secs=30)
    return self._writer

  def scalars(self, record: Mapping[str, Any]) -> None:
    """Every numeric field of a ``metrics.jsonl`` record at its ``step``."""
    step = int(record["step"])
    writer = self._get()
    for key, value in record.items():
      if key == "step" or isinstance(value, (bool, str)) or value is None:
        continue
      try:
        value = float(value)
      except (TypeError, ValueError):
        continue
      writer.add_scalar(key, value, step)
    writer.flush()

  def image(self, tag: str, png: bytes, step: int) -> None:
    """A PNG image (bytes) at ``step``."""
    from PIL import Image  # pylint: disable=import-outside-toplevel
    with Image.open(io.BytesIO(png)) as img:
      array = np.asarray(img.convert("RGB"))
    writer = self._get()
    writer.add_image(tag, array, int(step), dataformats="HWC")
    writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def _png(draw) -> bytes:
  buf = io.BytesIO()
  draw(buf)
  return buf.getvalue()


def epoch_figures(val_sums: Optional[Mapping[str, Any]], *,
                  soft_labels: Optional[np.ndarray] = None,
                  class_names: Optional[Sequence[str]] = None,
                  epoch: int = 0) -> dict[str, bytes]:
  """PNG images of one epoch: validation reliability diagram and S.

  Args:
    val_sums: the validation split's :func:`ols_jax.metrics.eval_sums` totals.
    soft_labels: the ``(K, K)`` OLS soft labels after the epoch, or None.
    class_names: ``K`` names for the heatmap.
    epoch: the epoch number (1-based) for the titles.

  Returns:
    ``{tag: png bytes}``.
  """
  from ols_jax import plots  # pylint: disable=import-outside-toplevel
  out = {}
  if val_sums is not None and float(np.asarray(val_sums["count"])) > 0:
    out["eval/reliability"] = _png(lambda f: plots.reliability_diagram(
        val_sums, f, title=f"Validation reliability, epoch {epoch}"))
  if soft_labels is not None and np.all(np.isfinite(soft_labels)):
    out["ols/soft_labels"] = _png(lambda f: plots.soft_label_heatmap(
        soft_labels, class_names, f, title=f"OLS soft labels after epoch {epoch}"))
  return out


def log_epoch_figures(writer, step: int, val_sums: Optional[Mapping[str, Any]], *,
                      soft_labels: Optional[np.ndarray] = None,
                      class_names: Optional[Sequence[str]] = None,
                      epoch: int = 0) -> None:
  """Adds :func:`epoch_figures` to a MetricWriter's events (if it has any)."""
  events = getattr(writer, "events", None)
  if events is None:
    return
  for tag, png in epoch_figures(val_sums, soft_labels=soft_labels,
                                class_names=class_names, epoch=epoch).items():
    events.image(tag, png, int(step))
