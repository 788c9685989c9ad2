"""TFDS-free datasets: the shared npz files and plain image folders."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import zipfile

import numpy as np

from ols_jax.data import medmnist_info
from ols_jax.data import sources
from ols_jax.data.errors import DataError

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val",
                  "valid": "val", "validation": "val", "test": "test",
                  "testing": "test"}


@dataclasses.dataclass(frozen=True)
class SharedSpec:
  """Where a shared dataset lives and what its labels mean."""
  folder: str
  files: dict[int, str]  # stored image size -> npz file name.
  class_names: tuple[str, ...] | None = None  # used when the npz has none.


def _sizes(stem: str, sizes=(28, 64)) -> dict[int, str]:
  return {s: f"{stem}_{s}.npz" for s in sizes}


SHARED: dict[str, SharedSpec] = {
    "brain_tumor_mri": SharedSpec("brain_tumor_mri", _sizes("brain_tumor_mri")),
    "brain_tumor_44": SharedSpec("brain_tumor_44", _sizes("brain_tumor_44")),
    "alzheimer_mri": SharedSpec("alzheimer_mri", _sizes("alzheimer_mri")),
    "chest_ct": SharedSpec("chest_ct", _sizes("chest_ct")),
    "kidney_ct": SharedSpec("kidney_ct", _sizes("kidney_ct")),
    "radmix": SharedSpec("radmix", _sizes("radmix")),
    "breastmnist": SharedSpec("breastmnist", {28: "breastmnist_28.npz"},
                              ("malignant", "normal_or_benign")),
    "organamnist": SharedSpec(
        "organamnist", {28: "organamnist.npz"},
        medmnist_info.SUBSETS["organamnist"].labels),
    "pneumoniamnist": SharedSpec(
        "pneumoniamnist", {28: "pneumoniamnist_reassembled.npz"},
        medmnist_info.SUBSETS["pneumoniamnist"].labels),
    "retinamnist": SharedSpec(
        "retinamnist", {28: "retinamnist.npz"},
        medmnist_info.SUBSETS["retinamnist"].labels),
}


# The one dataset shipped inside the package (CC0 1.0; docs/DATA.md): used when
# the shared data folder does not hold it, so a clone anywhere runs the main job.
EMBEDDED_DIR = pathlib.Path(__file__).resolve().parent / "embedded"
EMBEDDED: dict[tuple[str, int], tuple[str, str]] = {
    ("brain_tumor_mri", 28): (
        "brain_tumor_mri_28.npz",
        "313995db22d786bb7bd40e547d53712b779bb2a1b86ddf1b7a2e02c6985a0da3"),
}


def embedded_npz(name: str, image_size: int) -> pathlib.Path | None:
  """The packaged copy of ``name`` at ``image_size`` px, or None if none ships."""
  entry = EMBEDDED.get((name, int(image_size)))
  return EMBEDDED_DIR / entry[0] if entry else None


def npz_array_shape(path: str | os.PathLike, key: str) -> tuple[int, ...]:
  """Shape of ``key`` in an npz file, read from its header only."""
  try:
    with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as f:
      version = np.lib.format.read_magic(f)
      if version == (1, 0):
        shape, _, _ = np.lib.format.read_array_header_1_0(f)
      else:
        shape, _, _ = np.lib.format.read_array_header_2_0(f)
      return tuple(shape)
  except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
    raise DataError(f"cannot read {key!r} from {path}: {e}") from e


def load_npz(path: pathlib.Path, name: str, fallback_names=None):
  """Builds ``(class_names, channels, image_size, splits)`` for an npz file."""
  if not path.is_file():
    raise DataError(f"dataset file {path} not found")
  splits = {s: sources.NpzSplitSource(path, s) for s in SPLITS}
  shape = npz_array_shape(path, "train_images")
  channels = shape[3] if len(shape) == 4 else 1
  image_size = shape[1] if shape[1] == shape[2] else None
  try:
    with np.load(path) as z:
      names = ([str(n) for n in z["class_names"]]
               if "class_names" in z.files else None)
      max_label = max(int(z[f"{s}_labels"].max(initial=0)) for s in SPLITS)
  except (OSError, KeyError, ValueError) as e:
    raise DataError(f"cannot read labels of {path}: {e}") from e
  if names is None:
    names = (list(fallback_names) if fallback_names
             else [str(i) for i in range(max_label + 1)])
  if max_label >= len(names):
    raise DataError(f"{path}: label {max_label} but only {len(names)} "
                    f"class names for {name!r}")
  return tuple(names), channels, image_size, splits


def shared_npz_path(name: str, image_size: int | None,
                    root: pathlib.Path) -> pathlib.Path:
  """Resolves the npz file of a shared dataset; DataError when impossible."""
  spec = SHARED[name]
  sizes = sorted(spec.files)
  size = sizes[0] if image_size is None else int(image_size)
  if size not in spec.files:
    raise DataError(f"dataset {name!r} has no {size} px file; stored sizes: "
                    f"{sizes}")
  folder = root / spec.folder
  if not folder.is_dir():
    packaged = embedded_npz(name, size)
    if packaged is not None and packaged.is_file():
      return packaged
    raise DataError(f"dataset folder {folder} not found (set OLS_JAX_DATA or "
                    f"data_dir to the folder holding the shared datasets; "
                    f"docs/DATA.md says how to get them)")
  return folder / spec.files[size]


def _split_dirs(root: pathlib.Path) -> dict[str, pathlib.Path]:
  found = {}
  for child in sorted(root.iterdir()):
    split = _SPLIT_ALIASES.get(child.name.lower())
    if child.is_dir() and split:
      if split in found:
        raise DataError(f"{root}: two folders for split {split!r}: "
                        f"{found[split].name}, {child.name}")
      found[split] = child
  return found


def load_folder(root: str | os.PathLike, probe: int = 8):
  """Image folder ``root/<split>/<class>/*.png|jpg``.

  Returns ``(class_names, channels, splits)``. Class names are the sorted
  class folders of ``train``; ``val``/``test`` are optional (also accepted as
  ``valid``/``validation``/``testing``). Every file's header is checked up
  front (PNG files fully verified): an unreadable file or one with neither 1
  nor 3 channels (e.g. RGBA) is a DataError naming it. Images may differ in
  size; the pipeline resizes them.
  """
  root = pathlib.Path(root).expanduser()
  if not root.is_dir():
    raise DataError(f"image folder {root} not found")
  dirs = _split_dirs(root)
  if "train" not in dirs:
    raise DataError(f"image folder {root} has no 'train' sub-folder "
                    f"(expected {root}/train/<class>/*.png)")
  class_names = tuple(sorted(d.name for d in dirs["train"].iterdir()
                             if d.is_dir()))
  if not class_names:
    raise DataError(f"{dirs['train']} holds no class folders")
  index = {c: i for i, c in enumerate(class_names)}
  splits = {}
  for split, split_dir in dirs.items():
    files, labels = [], []
    for class_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
      if class_dir.name not in index:
        raise DataError(f"class folder {class_dir} is not a train class "
                        f"(train classes: {list(class_names)})")
      for f in sources.list_image_files(class_dir):
        sources.check_image_file(f)
        files.append(f)
        labels.append(index[class_dir.name])
    if not files:
      raise DataError(f"split folder {split_dir} holds no images")
    splits[split] = sources.FileListSource(files, labels)
  train = splits["train"]
  channels = 1
  for i in np.linspace(0, len(train) - 1, min(probe, len(train))).astype(int):
    image = train[int(i)]["image"]
    if image.ndim == 3 and not (np.array_equal(image[..., 0], image[..., 1])
                                and np.array_equal(image[..., 0],
                                                   image[..., 2])):
      channels = 3
      break
  return class_names, channels, splits
