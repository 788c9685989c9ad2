"""Logits of a finished run on one of its dataset's splits."""

from __future__ import annotations

import pathlib

import jax
import numpy as np

from ols_jax import data as data_lib
from ols_jax import predict


def split_logits(workdir: str | pathlib.Path, split: str = "test",
                 batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
  """Logits and labels of one split under the run's selected checkpoint.

  The run is restored by :func:`ols_jax.predict.load_run`; the input path is
  training's evaluation path (no augmentation, padded last batch), on the
  default device.
  """
  run = predict.load_run(workdir)
  config = run.config
  dataset = data_lib.load_for_config(config)
  apply = jax.jit(lambda v, x: run.apply_fn(v, x, train=False))
  logits, labels = [], []
  for batch in data_lib.eval_iterator(dataset.splits[split], global_batch_size=batch_size,
                                      image_size=config.image_size,
                                      channels=config.channels):
    keep = batch["mask"] > 0
    logits.append(np.asarray(apply(run.variables, batch["image"]))[keep])
    labels.append(batch["label"][keep])
  return np.concatenate(logits), np.concatenate(labels).astype(np.int64)
