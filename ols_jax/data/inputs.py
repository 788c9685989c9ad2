"""Predict's inputs: a folder tree or one file of images or DICOM, or an npz split.

:func:`collect_inputs` finds the images at a path (PNG / JPEG / TIFF / ...
files, DICOM files with or without the ``.dcm`` suffix, or one split of a
MedMNIST-layout npz) and returns :class:`Inputs`: their names, a reader per
index (files are decoded only when read) and the labels where the npz has
them. Every image read is checked by :func:`check_image` (1 or 3 channels,
uint8, at least :data:`MIN_SIDE` pixels a side); a bad one raises DataError
naming it.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import zipfile
from typing import Callable, Optional, Sequence

import numpy as np

from ols_jax.data import dicom
from ols_jax.data import sources
from ols_jax.data.errors import DataError

# The smallest image side accepted.
MIN_SIDE = 8


@dataclasses.dataclass(frozen=True)
class Inputs:
  """The images to classify: names, a reader per index, optional labels."""
  names: Sequence[str]
  read: Callable[[int], np.ndarray]  # uint8 (H, W) or (H, W, 3); DataError if bad.
  labels: Optional[np.ndarray] = None  # class index per image, if known.
  # What ``labels`` index: the npz's own ``class_names`` when it has them.
  label_names: Optional[tuple[str, ...]] = None

  def __len__(self) -> int:
    return len(self.names)


def check_image(image: np.ndarray, name: str) -> np.ndarray:
  """An image as ``(H, W)`` or ``(H, W, 3)`` uint8, or a DataError naming it."""
  image = sources.squeeze_gray(np.asarray(image))
  if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3):
    channels = image.shape[-1] if image.ndim == 3 else "?"
    raise DataError(f"image {name}: expected 1 (grayscale) or 3 (RGB) channels, "
                    f"got {channels} (shape {image.shape})")
  if image.dtype != np.uint8:
    raise DataError(f"image {name}: expected uint8 pixels, got {image.dtype}")
  h, w = image.shape[:2]
  if min(h, w) < MIN_SIDE:
    raise DataError(f"image {name}: too small ({h}x{w} pixels; at least "
                    f"{MIN_SIDE} per side)")
  return image


def read_input_file(path: str | os.PathLike) -> np.ndarray:
  """Decodes one image or DICOM file and checks it (see :func:`check_image`)."""
  if dicom.is_dicom(path):
    image = dicom.read_dicom(path)
  else:
    image = sources.read_image(path)
  return check_image(image, str(path))


def _is_input_file(path: pathlib.Path) -> bool:
  suffix = path.suffix.lower()
  if suffix in sources.IMAGE_SUFFIXES or suffix == ".dcm":
    return True
  return suffix == "" and dicom.is_dicom(path)


def list_input_files(folder: pathlib.Path) -> list[pathlib.Path]:
  """Image and DICOM files anywhere under ``folder``, sorted by relative path.

  Hidden files and folders are skipped, as are files of other types; a file
  without a suffix counts when it starts with the DICOM preamble.
  """
  found = []
  for path in folder.rglob("*"):
    rel = path.relative_to(folder)
    if any(part.startswith(".") for part in rel.parts) or not path.is_file():
      continue
    if _is_input_file(path):
      found.append(path)
  return sorted(found, key=lambda p: p.relative_to(folder).parts)


def _npz_inputs(path: pathlib.Path, split: str) -> Inputs:
  images_key, labels_key = f"{split}_images", f"{split}_labels"
  try:
    with np.load(path, allow_pickle=False) as z:
      keys = sorted(z.files)
      if images_key not in keys:
        raise DataError(
            f"npz {path}: no {images_key!r} array (keys: {', '.join(keys) or 'none'}); "
            f"expected the MedMNIST layout <split>_images[, <split>_labels]")
      images = z[images_key]
      labels = z[labels_key] if labels_key in keys else None
      label_names = (tuple(str(n) for n in z["class_names"])
                     if "class_names" in keys else None)
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    if isinstance(e, DataError):
      raise
    raise DataError(f"cannot read npz {path}: {e}") from None
  if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] in (1, 3))):
    raise DataError(f"npz {path}: {images_key} has shape {images.shape}; expected "
                    f"(N, H, W) or (N, H, W, 1 or 3)")
  if images.dtype != np.uint8:
    raise DataError(f"npz {path}: {images_key} holds {images.dtype}; expected uint8")
  if len(images) == 0:
    raise DataError(f"npz {path}: {images_key} is empty")
  if min(images.shape[1:3]) < MIN_SIDE:
    raise DataError(f"npz {path}: {images_key} too small ({images.shape[1]}x"
                    f"{images.shape[2]} pixels; at least {MIN_SIDE} per side)")
  if labels is not None:
    labels = np.asarray(labels)
    if labels.size != len(images) or not np.issubdtype(labels.dtype, np.integer):
      raise DataError(f"npz {path}: {labels_key} has shape {labels.shape} and dtype "
                      f"{labels.dtype}; expected one integer label per image")
    labels = labels.reshape(-1).astype(np.int64)
    if label_names is not None and len(labels) and (
        labels.min() < 0 or labels.max() >= len(label_names)):
      raise DataError(f"npz {path}: {labels_key} runs from {labels.min()} to "
                      f"{labels.max()}, but class_names has {len(label_names)} names")
  names = [f"npz:{split}:{i}" for i in range(len(images))]
  return Inputs(names=names, read=lambda i: images[i], labels=labels,
                label_names=label_names)


def collect_inputs(path: str | os.PathLike, *, split: str = "test") -> Inputs:
  """The images at ``path``: a folder tree, an image / DICOM file, or an npz.

  Args:
    path: the input.
    split: the npz split (``<split>_images``, optional ``<split>_labels``).

  Returns:
    :class:`Inputs` (files are decoded when read).
  """
  path = pathlib.Path(path)
  if path.is_dir():
    files = list_input_files(path)
    if not files:
      raise DataError(f"input folder {path}: no image or DICOM files "
                      f"({', '.join(sources.IMAGE_SUFFIXES)}, .dcm)")
    return Inputs(names=[str(f) for f in files],
                  read=lambda i: read_input_file(files[i]))
  if not path.exists():
    raise DataError(f"input {path}: not found")
  if path.suffix.lower() == ".npz":
    return _npz_inputs(path, split)
  if _is_input_file(path) or dicom.is_dicom(path):
    return Inputs(names=[str(path)], read=lambda i: read_input_file(path))
  raise DataError(f"input {path}: unsupported file type; expected an image "
                  f"({', '.join(sources.IMAGE_SUFFIXES)}), a DICOM file or a "
                  f"MedMNIST-layout .npz")
