"""Where the training loop stands: saved beside the TrainState in every checkpoint.

A :class:`LoopState` is immutable; the loop makes the next one with
``dataclasses.replace``. In a checkpoint it is the JSON dict of
:meth:`LoopState.to_json`, the layout older runs saved as their untyped
``progress_meta``, so their checkpoints resume unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional


@dataclasses.dataclass(frozen=True)
class LoopState:
  """The loop's position and what it has gathered so far.

  Attributes:
    epoch: the epoch in progress, 0-based (equals the completed epochs).
    step_in_epoch: steps of ``epoch`` already taken (0 at an epoch boundary).
    best: the best validation ``select_metric`` so far (lower is better), or
      None before the first validation.
    best_epoch: the 1-based epoch that reached ``best``; -1 before.
    epoch_sums: train sums of the unfinished epoch (``loss_sum``,
      ``correct``, ``count``, ``finite``); None at an epoch boundary.
    window_sums: the same sums since the last metrics line; None at an epoch
      boundary.
    entropy_history: per finished OLS epoch, the entropy of each row of S.
    finished: every epoch is done.
    elapsed_s: wall-clock seconds of the run up to this checkpoint, summed
      over every process that worked on it (resumes included).
  """
  epoch: int = 0
  step_in_epoch: int = 0
  best: Optional[float] = None
  best_epoch: int = -1
  epoch_sums: Optional[Mapping[str, float]] = None
  window_sums: Optional[Mapping[str, float]] = None
  entropy_history: tuple[tuple[float, ...], ...] = ()
  finished: bool = False
  elapsed_s: float = 0.0

  def to_json(self) -> dict[str, Any]:
    """The JSON-ready dict a checkpoint holds.

    Returns:
      A dict with one key per attribute (sums as dicts, the entropy history
      as lists).
    """
    return {
        "epoch": self.epoch,
        "step_in_epoch": self.step_in_epoch,
        "best": self.best,
        "best_epoch": self.best_epoch,
        "epoch_sums": _sums_or_none(self.epoch_sums),
        "window_sums": _sums_or_none(self.window_sums),
        "entropy_history": [list(row) for row in self.entropy_history],
        "finished": self.finished,
        "elapsed_s": self.elapsed_s,
    }

  @classmethod
  def from_json(cls, meta: Mapping[str, Any]) -> LoopState:
    """The state a checkpoint's dict describes.

    Args:
      meta: :meth:`to_json`'s dict, or an older checkpoint's ``progress_meta``
        (same keys; the oldest lack ``window_sums``).

    Returns:
      A LoopState; missing keys take their defaults.

    Raises:
      ValueError: a key that is no attribute.
    """
    unknown = sorted(set(meta) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise ValueError(f"checkpoint loop state: unknown field(s) {unknown}")
    best = meta.get("best")
    return cls(
        epoch=int(meta.get("epoch", 0)),
        step_in_epoch=int(meta.get("step_in_epoch", 0)),
        best=None if best is None else float(best),
        best_epoch=int(meta.get("best_epoch", -1)),
        epoch_sums=_sums_or_none(meta.get("epoch_sums")),
        window_sums=_sums_or_none(meta.get("window_sums")),
        entropy_history=tuple(tuple(float(h) for h in row)
                              for row in meta.get("entropy_history") or ()),
        finished=bool(meta.get("finished", False)),
        elapsed_s=float(meta.get("elapsed_s", 0.0)))


def _sums_or_none(sums: Optional[Mapping[str, float]]) -> Optional[dict[str, float]]:
  """A plain ``{name: float}`` copy of running sums, or None."""
  return None if sums is None else {k: float(v) for k, v in sums.items()}
