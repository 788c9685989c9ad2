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
import sys
import time
from typing import Any, Mapping, Optional, Sequence, TextIO

import numpy as np


def available() -> bool:
  """Whether tensorboardX can be imported."""
  return importlib.util.find_spec("tensorboardX") is not None


class EventWriter:
  """Scalars and images of one run in ``logdir``, written synchronously.

  The event file is only created by the first write, so a run that logs
  nothing (e.g. a rerun of a finished run) leaves the folder untouched. With
  ``purge_step`` (a resumed run), events at or after that step written by an
  interrupted run are hidden by TensorBoard, as ``metrics.jsonl`` drops them.
  TensorBoard is a by-product: a failed write (e.g. a full disk) prints one
  warning and turns it off for the rest of the run instead of stopping it.
  """

  def __init__(self, logdir: str | pathlib.Path, purge_step: Optional[int] = None,
               stream: TextIO = sys.stderr):
    self.logdir = pathlib.Path(logdir)
    self._purge_step = purge_step
    self._stream = stream
    self._writer = None
    self.failed = False

  def _write(self, step: int, values: list) -> None:
    """One event holding ``values`` (``Summary.Value`` protos) at ``step``."""
    if self.failed:
      return
    from tensorboardX.event_file_writer import EventsWriter  # pylint: disable=import-outside-toplevel
    from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
    from tensorboardX.proto import summary_pb2  # pylint: disable=import-outside-toplevel
    try:
      if self._writer is None:
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._writer = EventsWriter(str(self.logdir / "events"))
        if self._purge_step is not None:
          self._writer.write_event(event_pb2.Event(
              step=self._purge_step, wall_time=time.time(),
              session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
      self._writer.write_event(event_pb2.Event(
          step=int(step), wall_time=time.time(), summary=summary_pb2.Summary(value=values)))
      self._writer.flush()
    except OSError as e:
      self.failed = True
      self._stream.write(f"warning: TensorBoard logging to {self.logdir} stopped: "
                         f"{e.strerror or e}\n")
      self._stream.flush()

  def scalars(self, record: Mapping[str, Any]) -> None:
    """Every numeric field of a ``metrics.jsonl`` record at its ``step``."""
    from tensorboardX import summary  # pylint: disable=import-outside-toplevel
    values = []
    for key, value in record.items():
      if key == "step" or isinstance(value, (bool, str)) or value is None:
        continue
      try:
        value = float(value)
      except (TypeError, ValueError):
        continue
      values.extend(summary.scalar(key, value).value)
    self._write(int(record["step"]), values)

  def image(self, tag: str, png: bytes, step: int) -> None:
    """A PNG image (bytes) at ``step``."""
    from PIL import Image  # pylint: disable=import-outside-toplevel
    from tensorboardX import summary  # pylint: disable=import-outside-toplevel
    with Image.open(io.BytesIO(png)) as img:
      array = np.asarray(img.convert("RGB"))
    self._write(int(step), list(summary.image(tag, array, dataformats="HWC").value))

  def close(self) -> None:
    if self._writer is not None:
      try:
        self._writer.close()
      except OSError:
        pass
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
