"""``load_dataset``: one entry point for every dataset the trainer uses."""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import numpy as np

from ols_jax import paths
from ols_jax.data import local
from ols_jax.data import medmnist_info
from ols_jax.data import sources
from ols_jax.data.errors import DataError


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the trainer needs to know about a dataset."""
  name: str
  num_classes: int
  class_names: tuple[str, ...]
  channels: int
  image_size: int | None  # Stored square size; None when sizes vary.
  split_sizes: dict[str, int]
  # Where the images came from: 'shared', 'embedded' (the packaged copy),
  # 'tfds' or 'folder'; recorded in results.json.
  origin: str = ""


@dataclasses.dataclass(frozen=True)
class Dataset:
  """``info`` plus random-access ``splits`` ({'train', 'val', 'test'})."""
  info: DatasetInfo
  splits: dict[str, Any]


def dataset_names() -> tuple[str, ...]:
  """Every name ``load_dataset`` accepts (folder datasets as a pattern)."""
  return (tuple(sorted(local.SHARED)) + ("radimagenet",)
          + tuple(f"medmnist/{s}" for s in medmnist_info.SUBSETS)
          + ("folder:<path>",))


def _make(name, class_names, channels, image_size, splits,
          origin="") -> Dataset:
  info = DatasetInfo(
      name=name, num_classes=len(class_names),
      class_names=tuple(class_names), channels=int(channels),
      image_size=image_size,
      split_sizes={s: len(src) for s, src in splits.items()}, origin=origin)
  return Dataset(info=info, splits=dict(splits))


def _load_shared(name, image_size, data_dir) -> Dataset:
  root = pathlib.Path(data_dir).expanduser() if data_dir else paths.data_root()
  path = local.shared_npz_path(name, image_size, root)
  spec = local.SHARED[name]
  class_names, channels, size, splits = local.load_npz(path, name,
                                                       spec.class_names)
  origin = ("embedded" if path.parent == local.EMBEDDED_DIR else "shared")
  return _make(name, class_names, channels, size, splits, origin)


def _load_tfds(name, config, data_dir, manual_dir) -> tuple[Any, dict]:
  """Prepares (if needed) and opens a TFDS builder without TensorFlow."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from ols_jax.data import medmnist  # pylint: disable=g-import-not-at-top,unused-import
  from ols_jax.data import radimagenet  # pylint: disable=g-import-not-at-top,unused-import
  full = f"{name}/{config}" if config else name
  kwargs = {"data_dir": os.fspath(data_dir)} if data_dir else {}
  builder = tfds.builder(full, file_format="array_record", **kwargs)
  if not builder.is_prepared():
    how = ""
    if name == "radimagenet":
      how = " " + " ".join(radimagenet.Builder.MANUAL_DOWNLOAD_INSTRUCTIONS.split())
    if manual_dir is not None:
      manual = pathlib.Path(manual_dir).expanduser()
      if not manual.is_dir() or not any(manual.iterdir()):
        raise DataError(f"{full}: manual_dir {manual} does not exist or is "
                        f"empty.{how}")
    elif name == "radimagenet":
      raise DataError(
          f"radimagenet is not prepared in {builder.data_dir} and no "
          f"manual_dir was given (see docs/DATA.md).{how}")
    config_ = tfds.download.DownloadConfig(
        manual_dir=os.fspath(manual_dir) if manual_dir else None)
    builder.download_and_prepare(download_config=config_)
  return builder, builder.as_data_source()


def _load_radimagenet(data_dir, manual_dir) -> Dataset:
  builder, splits = _load_tfds("radimagenet", None, data_dir, manual_dir)
  names = builder.info.features["label"].names
  return _make("radimagenet", names, 1, None,
               {s: sources.TfdsSource(src) for s, src in splits.items()},
               "tfds")


def _load_medmnist(spec, image_size, data_dir, manual_dir) -> Dataset:
  subset, _, size = spec.partition("_")
  if subset not in medmnist_info.SUBSETS:
    raise DataError(f"unknown MedMNIST subset {subset!r}; choose from "
                    f"{sorted(medmnist_info.SUBSETS)}")
  size = int(size) if size else int(image_size or 28)
  if size not in medmnist_info.SIZES:
    raise DataError(f"MedMNIST size {size} not in {medmnist_info.SIZES}")
  info = medmnist_info.SUBSETS[subset]
  if info.multi_label:
    raise DataError(f"medmnist/{subset} is multi-label ({info.task}); the "
                    f"classification pipeline needs one label per image")
  _, splits = _load_tfds("medmnist", f"{subset}_{size}", data_dir,
                         manual_dir)
  return _make(f"medmnist/{subset}", info.labels, info.channels, size,
               {s: sources.TfdsSource(src) for s, src in splits.items()},
               "tfds")


def stratified_halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Splits row indices into two halves, stratified by label.

  For each class in label order, one ``numpy.random.default_rng(seed)``
  (shared by all classes) permutes that class's rows; the first ``n // 2`` go
  to the first half, the rest to the second (a class of one row lands in the
  second). Both halves are returned sorted.

  Args:
    labels: ``(N,)`` integer labels.
    seed: the generator's seed.

  Returns:
    ``(first, second)`` index arrays; disjoint, together ``0..N-1``.
  """
  labels = np.asarray(labels, dtype=np.int64)
  rng = np.random.default_rng(seed)
  first, second = [], []
  for c in np.unique(labels):
    rows = np.flatnonzero(labels == c)
    rows = rows[rng.permutation(len(rows))]
    first.append(rows[:len(rows) // 2])
    second.append(rows[len(rows) // 2:])
  return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


def calibration_split(dataset: Dataset, seed: int = 0) -> Dataset:
  """A hospital's calibration sample: half of the test split as validation.

  The test split is halved once (:func:`stratified_halves`): the first half
  becomes ``val`` (selection, temperature, thresholds, conformal sets), the
  second half ``test``; the dataset's own validation split is kept as
  ``val_dataset`` (scored, never fitted on). Calibrating on a sample of the
  same source as the reported test split makes the two exchangeable, which
  the dataset's own val split (often another source folder) need not be.

  Args:
    dataset: a loaded dataset with ``val`` and ``test`` splits.
    seed: the split's seed.

  Returns:
    The dataset with ``val``, ``test`` and ``val_dataset`` replaced or added.
  """
  test = dataset.splits["test"]
  cal, rest = stratified_halves(sources.source_labels(test), seed)
  splits = dict(dataset.splits)
  splits["val_dataset"] = splits["val"]
  splits["val"] = sources.SubsetSource(test, cal)
  splits["test"] = sources.SubsetSource(test, rest)
  info = dataclasses.replace(dataset.info,
                             split_sizes={s: len(src) for s, src in splits.items()})
  return Dataset(info=info, splits=splits)


def load_dataset(name: str, *, image_size: int | None = None,
                 data_dir: str | os.PathLike | None = None,
                 manual_dir: str | os.PathLike | None = None) -> Dataset:
  """Loads a dataset by name.

  Args:
    name: a shared dataset (``'brain_tumor_mri'``, ``'radmix'``, ...) found
      under ``data_dir`` or ``paths.data_root()``; ``'radimagenet'`` or
      ``'medmnist/<subset>[_<size>]'`` (TFDS builders; ``data_dir`` is the TFDS
      data dir, ``manual_dir`` the raw files); or ``'folder:<path>'``.
    image_size: stored size to pick where several exist (default: smallest).
    data_dir: see ``name``.
    manual_dir: raw files for the TFDS builders.

  Returns:
    A ``Dataset`` with ``info`` and ``splits``.
  """
  if name in local.SHARED:
    return _load_shared(name, image_size, data_dir)
  if name.startswith("folder:"):
    path = name[len("folder:"):]
    class_names, channels, splits = local.load_folder(path)
    return _make(name, class_names, channels, None, splits, "folder")
  if name == "radimagenet":
    return _load_radimagenet(data_dir, manual_dir)
  if name.startswith("medmnist/"):
    return _load_medmnist(name[len("medmnist/"):], image_size, data_dir,
                          manual_dir)
  raise DataError(f"unknown dataset {name!r}; valid names: "
                  f"{', '.join(dataset_names())}")


def load_for_config(config) -> Dataset:
  """The dataset a run config trains and evaluates on.

  Loads ``config.dataset`` and, with ``config.calibration_split ==
  'test_half'``, applies :func:`calibration_split` (so every reader of a run,
  training or later, sees the same val and test).

  Raises:
    DataError: it cannot be loaded, or a split is missing or empty.
  """
  dataset = load_dataset(config.dataset, image_size=config.image_size,
                         data_dir=config.data_dir or None,
                         manual_dir=config.manual_dir or None)
  for split in ("train", "val", "test"):
    if split not in dataset.splits or len(dataset.splits[split]) == 0:
      raise DataError(f"dataset {dataset.info.name}: split {split!r} is missing or empty")
  if config.get("calibration_split", "dataset") == "test_half":
    dataset = calibration_split(dataset, int(config.get("calibration_split_seed", 0)))
    for split in ("val", "test"):
      if len(dataset.splits[split]) == 0:
        raise DataError(f"dataset {dataset.info.name}: the test split is too small to "
                        f"halve (its {split} half is empty)")
  return dataset
