"""Deterministic, resumable, process-sharded input pipelines on grain.

Epoch order: ``np.random.default_rng([seed, epoch]).permutation(N)``.
The crop offsets and flips of global batch ``t`` of an epoch come from
``np.random.default_rng([seed, epoch, t])`` (drawn for the whole global batch,
applied vectorised), per-example geometry of the example at global position
``g`` from ``np.random.default_rng([seed, epoch, g])``. All are independent of
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


@dataclasses.dataclass(frozen=True, eq=False)
class _Batch:
  """Builds this process's rows of global batch ``step`` of an epoch.

  Rows are read (a vectorised gather for in-memory arrays stored at the
  target size, else decoded and resized one by one), then pad-and-cropped and
  flipped as one batch. The crop offsets and flip decisions of the whole
  *global* batch come from ``default_rng([seed, epoch, step])`` and each
  process takes its rows, so the per-process shards concatenate to the
  single-process batch; per-example geometry (random-resized crop, rotation)
  uses ``default_rng([seed, epoch, position])``. A flipped example of a
  lateral class takes its mirrored label (``flip_labels``).
  """
  source: Any
  order: np.ndarray | None  # None: identity order.
  image_size: int
  channels: int
  augment: str
  seed: int
  epoch: int
  start_step: int
  global_batch_size: int
  local_batch_size: int
  process_index: int
  flip_labels: np.ndarray | None  # None: no lateral classes.

  def _rows(self, positions: np.ndarray):
    """uint8 working images and labels of the valid ``positions``."""
    index = positions if self.order is None else self.order[positions]
    stored = getattr(self.source, "images", None)
    if (isinstance(stored, np.ndarray) and stored.dtype == np.uint8
        and stored.ndim in (3, 4) and stored.shape[1] == stored.shape[2]
        == self.image_size and self.augment in _BATCH_ONLY):
      images = augment_lib.to_working_batch(stored[index], self.channels)
      return images, np.asarray(self.source.labels)[index].astype(np.int32)
    images, labels = [], []
    for position, i in zip(positions, index):
      record = self.source[int(i)]
      rng = (np.random.default_rng([self.seed, self.epoch, int(position)])
             if self.augment in _PER_EXAMPLE else None)
      images.append(augment_lib.working_image(
          np.asarray(record["image"]), image_size=self.image_size,
          channels=self.channels, augment=self.augment, rng=rng))
      labels.append(record["label"])
    return np.stack(images), np.asarray(labels, np.int32)

  def __call__(self, local_step: int) -> dict[str, np.ndarray]:
    step = self.start_step + int(local_step)
    first = step * self.global_batch_size
    lo = self.process_index * self.local_batch_size
    positions = first + lo + np.arange(self.local_batch_size)
    valid = positions < len(self.source)
    if not valid.any():  # a process's share of the padded last eval batch.
      return {"image": np.zeros((self.local_batch_size, self.image_size,
                                 self.image_size, self.channels), np.float32),
              "label": np.zeros(self.local_batch_size, np.int32),
              "mask": np.zeros(self.local_batch_size, np.float32)}
    images, labels = self._rows(positions[valid])
    if self.augment != "none":
      rng = np.random.default_rng([self.seed, self.epoch, step])
      pad = self.image_size // 8
      offsets = rng.integers(0, 2 * pad + 1, size=(self.global_batch_size, 2))
      flips = rng.random(self.global_batch_size) < 0.5
      rows = slice(lo, lo + self.local_batch_size)
      if self.augment in augment_lib.CROPPING:
        images = augment_lib.batch_crop(images, pad, offsets[rows][valid])
      if self.augment in augment_lib.FLIPPING:
        flip = flips[rows][valid]
        images = augment_lib.batch_flip(images, flip)
        if self.flip_labels is not None:
          labels = np.where(flip, self.flip_labels[labels], labels)
    out = augment_lib.finish_batch(images, self.channels)
    if valid.all():
      mask = np.ones(self.local_batch_size, np.float32)
      return {"image": out, "label": labels.astype(np.int32), "mask": mask}
    full = np.zeros((self.local_batch_size,) + out.shape[1:], np.float32)
    full[valid] = out
    full_labels = np.zeros(self.local_batch_size, np.int32)
    full_labels[valid] = labels
    return {"image": full, "label": full_labels,
            "mask": valid.astype(np.float32)}


# Augmentations done entirely on the batch, and those with per-example geometry.
_BATCH_ONLY = frozenset({"none", "crop", "crop_flip"})
_PER_EXAMPLE = frozenset({"rrc_flip", "crop_flip_rotate"})


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
           seed, epoch, num_workers, flip_labels=None) -> BatchIterator:
  """Global steps -> this process's batches -> (multi-process) iterator."""
  if channels not in (1, 3):
    raise DataError(f"channels must be 1 or 3, got {channels}")
  if augment not in augment_lib.AUGMENTATIONS:
    raise DataError(f"unknown augment {augment!r}; choose from "
                    f"{augment_lib.AUGMENTATIONS}")
  local = _check_sharding(global_batch_size, process_index, process_count)
  if not 0 <= start_step <= num_steps:
    raise DataError(f"start_step={start_step} outside [0, {num_steps}]")
  if flip_labels is not None:
    flip_labels = np.asarray(flip_labels, np.int32)
    if np.array_equal(flip_labels, np.arange(len(flip_labels))):
      flip_labels = None
  make_batch = _Batch(source, order, int(image_size), int(channels), augment,
                      int(seed), int(epoch), int(start_step),
                      int(global_batch_size), local, int(process_index),
                      flip_labels)
  ds = grain.MapDataset.range(num_steps - start_step).map(make_batch)
  ds = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=1, prefetch_buffer_size=_PREFETCH_BATCHES))
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
                   drop_remainder: bool = True,
                   flip_labels: np.ndarray | None = None) -> BatchIterator:
  """One shuffled, augmented epoch of this process's batch shards.

  Yields ``{'image': float32 (B_local, S, S, C) in [-1, 1], 'label': int32,
  'mask': float32}``, ``B_local = global_batch_size // process_count``. With
  ``drop_remainder=False`` the last batch is padded with ``mask == 0`` rows.
  ``flip_labels`` (see :func:`ols_jax.data.laterality.flip_label_map`) maps
  the label of a horizontally flipped example; None means no class is
  lateral.
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
                seed=seed, epoch=epoch, num_workers=num_workers,
                flip_labels=flip_labels)


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
