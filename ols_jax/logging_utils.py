"""Metrics file and progress display (process 0 only in a multi-process run)."""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time
from typing import Any, Optional, TextIO

import jax

from ols_jax import fileio


def is_main_process() -> bool:
  """Whether this process writes the run's files and shows its progress.

  Process 0 of a multi-process run; every other process computes the same
  values and stays quiet.
  """
  return jax.process_index() == 0


class MetricWriter:
  """Appends one JSON object per line to ``metrics.jsonl``.

  On resume, lines logged after the restored step (written by the interrupted
  run after its last checkpoint) are dropped, so the file matches an
  uninterrupted run. Disabled (``enabled`` None: on processes other than 0),
  it neither reads nor writes the file. With ``tensorboard_dir`` (and
  tensorboardX installed), every record also goes to TensorBoard event files
  there, from this one place (:mod:`ols_jax.tensorboard_log`); ``events`` is
  then that writer.
  """

  def __init__(self, path: pathlib.Path, truncate_after_step: Optional[int] = None,
               tensorboard_dir: Optional[pathlib.Path] = None,
               enabled: Optional[bool] = None):
    self._path = pathlib.Path(path)
    self.events = None
    self.enabled = is_main_process() if enabled is None else enabled
    if not self.enabled:
      return
    if tensorboard_dir is not None:
      from ols_jax import tensorboard_log  # pylint: disable=import-outside-toplevel
      if tensorboard_log.available():
        resumed = truncate_after_step is not None and self._path.exists()
        self.events = tensorboard_log.EventWriter(
            tensorboard_dir, purge_step=truncate_after_step + 1 if resumed else None)
    if truncate_after_step is not None and self._path.exists():
      kept = []
      for line in self._path.read_text().splitlines():
        try:
          rec = json.loads(line)
        except json.JSONDecodeError:
          continue  # a line cut by a crash
        if rec.get("step", 0) <= truncate_after_step:
          kept.append(line)
      fileio.atomic_write_text(self._path, "".join(l + "\n" for l in kept))
    self._path.touch()

  def write(self, record: dict[str, Any]) -> None:
    if not self.enabled:
      return
    clean = {k: (float(v) if hasattr(v, "__float__") and not isinstance(v, (int, str))
                 else v) for k, v in record.items()}
    # Opened per line, so no handle is left open when a run stops on an error.
    with open(self._path, "a", encoding="utf-8") as f:
      f.write(json.dumps(clean, sort_keys=True) + "\n")
    if self.events is not None and "step" in clean:
      self.events.scalars(clean)

  def close(self) -> None:
    if self.events is not None:
      self.events.close()


def read_metrics(path: pathlib.Path) -> list[dict[str, Any]]:
  """All records of a metrics.jsonl file."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def _fmt_time(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
  """A progress bar with steps/s, images/s and ETA on a terminal; plain
  periodic lines (every ~10 s) otherwise; silent on processes other than 0."""

  def __init__(self, total_steps: int, *, enabled: bool = True,
               stream: TextIO = sys.stderr, interval_s: float = 10.0,
               quiet_start: bool = False):
    """With ``quiet_start``, nothing is shown during the first interval, so
    a short job prints no progress at all."""
    self.total = max(total_steps, 1)
    self.enabled = enabled and is_main_process()
    self.stream = stream
    self.tty = enabled and hasattr(stream, "isatty") and stream.isatty()
    self.interval = 0.5 if self.tty else interval_s
    self._quiet_start = quiet_start
    self._t0 = None
    self._first_step = None
    self._last_print = 0.0
    self._images = 0

  def update(self, step: int, batch_size: int) -> None:
    now = time.time()
    if self._t0 is None:
      # The first step includes compilation: time from its end.
      self._t0, self._first_step = now, step
      if self._quiet_start:
        self._last_print = now
      return
    self._images += batch_size
    if not self.enabled or now - self._last_print < self.interval:
      return
    self._last_print = now
    done = step - self._first_step
    rate = done / max(now - self._t0, 1e-9)
    eta = (self.total - step) / rate if rate > 0 else float("inf")
    ips = self._images / max(now - self._t0, 1e-9)
    text = (f"step {step}/{self.total} ({100 * step / self.total:5.1f}%) "
            f"{rate:6.2f} steps/s {ips:8.1f} img/s ETA {_fmt_time(eta)}")
    if self.tty:
      width = 24
      filled = int(width * step / self.total)
      self.stream.write("\r[" + "#" * filled + "." * (width - filled) + "] " + text)
    else:
      self.stream.write(text + "\n")
    self.stream.flush()

  def message(self, text: str) -> None:
    if not self.enabled:
      return
    if self.tty:
      self.stream.write("\r\033[K")
    self.stream.write(text + "\n")
    self.stream.flush()

  def close(self) -> None:
    if self.enabled and self.tty:
      self.stream.write("\n")
      self.stream.flush()
