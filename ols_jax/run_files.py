"""The files of a run's workdir: one home for every name.

A workdir holds (``experiments/radimagenet.py --workdir=...``):

- ``config.json``: the run's config, written before the first step;
- ``metrics.jsonl``: one JSON line per log window and epoch (``tensorboard/``
  mirrors it when ``config.tensorboard``);
- ``checkpoints/``: orbax checkpoints (``last`` and the selected ``best``);
- ``soft_labels/epoch_NNN.npy``: S after each epoch (``epoch_000_initial.npy``:
  S0);
- ``results.json``: the final evaluation; it is written last and marks the
  run finished;
- ``val_outputs.npz``: the selection split's logits and labels (thresholds
  and temperatures refitted later);
- ``ood_fit.npz``: the far-OOD fit (Mahalanobis statistics, thresholds);
- ``report.md`` and ``figures/``: the human-readable report.
"""

from __future__ import annotations

import os
import pathlib

CONFIG = "config.json"
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
CHECKPOINTS = "checkpoints"
SOFT_LABELS = "soft_labels"
RESULTS = "results.json"
VAL_OUTPUTS = "val_outputs.npz"
OOD_FIT = "ood_fit.npz"
REPORT = "report.md"
FIGURES = "figures"


def soft_labels_file(workdir: str | os.PathLike, epoch: int) -> pathlib.Path:
  """The saved S after ``epoch`` epochs (``epoch = 0``: the initial S0)."""
  name = "epoch_000_initial.npy" if epoch == 0 else f"epoch_{epoch:03d}.npy"
  return pathlib.Path(workdir) / SOFT_LABELS / name


def is_finished(workdir: str | os.PathLike) -> bool:
  """Whether the run wrote its final ``results.json``."""
  return (pathlib.Path(workdir) / RESULTS).is_file()
