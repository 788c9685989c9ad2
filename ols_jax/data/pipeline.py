"""Deterministic, resumable, process-sharded input pipelines on grain.

Epoch order: ``np.random.default_rng([seed, epoch]).permutation(N)``.
Augmentation of the example at global position ``g`` of an epoch uses
``np.random.default_rng([seed, epoch, g])``. Both are independent of
``start_step``, worker count and process count, so restarting at
``start_step=k`` replays batches ``k, k+1, ...`` exactly, and the per-process
shards of a global batch concatenate to the single-process batch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator

from absl import flags
import grain
import numpy as np

from ols_jax.data import augment as augment_lib
from ols_jax.data.errors import DataError

_PREFETCH_BATCHES = 4


def steps_per_epoch(num_examples: int, global_batch_size: int,
                    drop_remainder: bool = True) -> int:
  """Number of global batches in one pass over ``num_examples``."""
  if global_batch_size <= 0:
    raise DataError(f"global_batch_size must be positive, got "
                    f"{global_batch_size}")
  if drop_remainder:
    return num_examples // global_batch_size
  return math.ceil(num_examples / global_batch_size)


@dataclasses.dataclass(frozen=True)
class _Positions:
  """Global epoch positions read by one process, batch-major."""
  num_steps: int
  start_step: int
  global_batch_size: int
  local_batch_size: int
  process_index: int

  def __len__(self) -> int:
    return (self.num_steps - self.start_step) * self.local_batch_size

  def __getitem__(self, j: int) -> int:
    step, row = divmod(int(j), self.local_batch_size)
    return ((self.start_step + step) * self.global_batch_size
            + self.process_index * self.local_batch_size + row)


@dataclasses.dataclass(frozen=True, eq=False)
class _Example:
  """Maps a global position to a preprocessed example (or a padding row)."""
  source: Any
  order: np.ndarray | None  # None: identity order.
  image_size: int
  channels: int
  augment: str
  seed: int
  epoch: int

  def __call__(self, position: int) -> dict[str, np.ndarray]:
    if position >= len(self.source):
      return {"image": np.zeros((self.image_size, self.image_size,
                                 self.channels), np.float32),
              "label": np.int32(0), "mask": np.float32(0)}
    index = position if self.order is None else int(self.order[position])
    record = self.source[index]
    rng = (None if self.augment == "none" else
           np.random.default_rng([self.seed, self.epoch, position]))
    image = augment_lib.preprocess(
        np.asarray(record["image"]), image_size=self.image_size,
        channels=self.channels, augment=self.augment, rng=rng)
    return {"image": image, "label": np.int32(record["label"]),
            "mask": np.float32(1)}


class BatchIterator:
  """Iterator over numpy batch dicts with ``len`` and grain state."""

  def __init__(self, dataset: grain.IterDataset, num_batches: int):
    self._iter = iter(dataset)
    self.num_batches = num_batches

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._iter)

  def __len__(self) -> int:
    return self.num_batches

  def get_state(self) -> dict[str, Any]:
    return self._iter.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    self._iter.set_state(state)

  def close(self) -> None:
    close = getattr(self._iter, "close", None)
    if close is not None:
      close()


def _check_sharding(global_batch_size, process_index, process_count):
  if process_count <= 0 or not 0 <= process_index < process_count:
    raise DataError(f"bad process_index={process_index} for "
                    f"process_count={process_count}")
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise DataError(f"global_batch_size={global_batch_size} must be a "
                    f"positive multiple of process_count={process_count}")
  return global_batch_size // process_count


def _build(source, order, *, num_steps, start_step, global_batch_size,
           process_index, process_count, image_size, channels, augment,
           seed, epoch, num_workers) -> BatchIterator:
  """Positions -> examples -> local batches -> (multi-process) iterator."""
  if channels not in (1, 3):
    raise DataError(f"channels must be 1 or 3, got {channels}")
  if augment not in augment_lib.AUGMENTATIONS:
    raise DataError(f"unknown augment {augment!r}; choose from "
                    f"{augment_lib.AUGMENTATIONS}")
  local = _check_sharding(global_batch_size, process_index, process_count)
  if not 0 <= start_step <= num_steps:
    raise DataError(f"start_step={start_step} outside [0, {num_steps}]")
  positions = _Positions(num_steps, start_step, global_batch_size, local,
                         process_index)
  example = _Example(source, order, int(image_size), int(channels), augment,
                     int(seed), int(epoch))
  ds = (grain.MapDataset.source(positions).map(example)
        .batch(local, drop_remainder=False))
  ds = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=1 if num_workers > 0 else 2,
      prefetch_buffer_size=_PREFETCH_BATCHES))
  if num_workers > 0:
    # grain's worker processes read absl flags; outside absl.app (pytest,
    # notebooks) they are unparsed, so accept their defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=2))
  return BatchIterator(ds, num_steps - start_step)


def train_iterator(source, *, global_batch_size: int, image_size: int,
                   channels: int, seed: int, augment: str = "crop_flip",
                   epoch: int = 0, start_step: int = 0,
                   process_index: int = 0, process_count: int = 1,
                   num_workers: int = 0,
                   drop_remainder: bool = True) -> BatchIterator:
  """One shuffled, augmented epoch of this process's batch shards.

  Yields ``{'image': float32 (B_local, S, S, C) in [-1, 1], 'label': int32,
  'mask': float32}``, ``B_local = global_batch_size // process_count``. With
  ``drop_remainder=False`` the last batch is padded with ``mask == 0`` rows.
  """
  n = len(source)
  num_steps = steps_per_epoch(n, global_batch_size, drop_remainder)
  if num_steps == 0:
    raise DataError(f"{n} examples make no full batch of "
                    f"{global_batch_size}; lower the batch size or set "
                    f"drop_remainder=False")
  if seed < 0 or epoch < 0:
    raise DataError(f"seed and epoch must be >= 0, got {seed}, {epoch}")
  order = np.random.default_rng([seed, epoch]).permutation(n)
  return _build(source, order, num_steps=num_steps, start_step=start_step,
                global_batch_size=global_batch_size,
                process_index=process_index, process_count=process_count,
                image_size=image_size, channels=channels, augment=augment,
                seed=seed, epoch=epoch, num_workers=num_workers)


def eval_iterator(source, *, global_batch_size: int, image_size: int,
                  channels: int, process_index: int = 0,
                  process_count: int = 1,
                  num_workers: int = 0) -> BatchIterator:
  """Every example once, in order; the last batch padded with mask 0."""
  num_steps = steps_per_epoch(len(source), global_batch_size,
                              drop_remainder=False)
  return _build(source, None, num_steps=num_steps, start_step=0,
                global_batch_size=global_batch_size,
                process_index=process_index, process_count=process_count,
                image_size=image_size, channels=channels, augment="none",
                seed=0, epoch=0, num_workers=num_workers)
