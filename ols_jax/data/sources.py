"""Random-access sources: ``len(src)`` and ``src[i] -> {'image', 'label'}``.

Images are uint8 ``(H, W)`` (grayscale) or ``(H, W, C)`` (colour); labels are
Python ints. Sources are cheap to pickle, so grain workers can rebuild them.
"""

from __future__ import annotations

import functools
import os
import pathlib
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ols_jax.data.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def squeeze_gray(image: np.ndarray) -> np.ndarray:
  """``(H, W, 1)`` -> ``(H, W)``; other shapes unchanged."""
  if image.ndim == 3 and image.shape[-1] == 1:
    return image[..., 0]
  return image


def check_channels(img: Image.Image, path: str | os.PathLike) -> None:
  """Raises DataError unless ``img`` has 1 (gray/palette) or 3 channels."""
  bands = img.getbands()
  if len(bands) not in (1, 3):
    raise DataError(f"image {path}: expected 1 (grayscale) or 3 (RGB) "
                    f"channels, got {len(bands)} (mode {img.mode})")


def check_image_file(path: str | os.PathLike) -> None:
  """Cheap up-front check of one file: readable header, 1 or 3 channels.

  PNG files are also verified end to end (chunk CRCs), which catches
  truncated files without decoding them.
  """
  try:
    with Image.open(path) as img:
      check_channels(img, path)
      if img.format == "PNG":
        img.verify()
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    if isinstance(e, DataError):
      raise
    raise DataError(f"cannot decode image {path}: {e}") from None


def read_image(path: str | os.PathLike) -> np.ndarray:
  """Decodes an image file to uint8 ``(H, W)`` or ``(H, W, 3)``."""
  try:
    with Image.open(path) as img:
      check_channels(img, path)
      img.load()
      if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = max(float(arr.max()), 1.0)
        return np.round(arr * (255.0 / top)).astype(np.uint8)
      if img.mode not in ("L", "RGB"):
        img = img.convert("RGB" if img.mode in ("P", "YCbCr", "HSV", "LAB")
                          else "L")
      return np.asarray(img, dtype=np.uint8)
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    if isinstance(e, DataError):
      raise
    raise DataError(f"cannot decode image {path}: {e}") from e


class ArraySource:
  """In-memory images ``(N, H, W[, C])`` uint8 and labels ``(N,)``."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    labels = np.asarray(labels).reshape(len(labels), -1)
    if labels.shape[1] != 1:
      raise DataError(f"expected one label per image, got shape {labels.shape}")
    if len(images) != len(labels):
      raise DataError(f"{len(images)} images but {len(labels)} labels")
    self.images = images
    self.labels = labels[:, 0].astype(np.int64)

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {"image": self.images[index], "label": int(self.labels[index])}


class NpzSplitSource:
  """One split of a MedMNIST-layout npz file, loaded on first access."""

  def __init__(self, path: str | os.PathLike, split: str):
    self.path = str(path)
    self.split = split

  @functools.cached_property
  def _arrays(self) -> ArraySource:
    try:
      with np.load(self.path) as z:
        return ArraySource(z[f"{self.split}_images"], z[f"{self.split}_labels"])
    except (OSError, KeyError, ValueError) as e:
      raise DataError(f"cannot read split {self.split!r} of {self.path}: {e}"
                      ) from e

  def __getstate__(self):
    return {"path": self.path, "split": self.split}

  def __len__(self) -> int:
    return len(self._arrays)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self._arrays[index]

  @property
  def images(self) -> np.ndarray:
    return self._arrays.images

  @property
  def labels(self) -> np.ndarray:
    return self._arrays.labels


class FileListSource:
  """Image files decoded with PIL on access."""

  def __init__(self, files: Sequence[str], labels: Sequence[int]):
    if len(files) != len(labels):
      raise DataError(f"{len(files)} files but {len(labels)} labels")
    self.files = [str(f) for f in files]
    self.labels = np.asarray(labels, dtype=np.int64)

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {"image": read_image(self.files[index]),
            "label": int(self.labels[index])}


class TfdsSource:
  """Wraps a ``tfds.data_source`` split into the common record format."""

  def __init__(self, source: Any, label_key: str = "label"):
    self.source = source
    self.label_key = label_key

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = self.source[int(index)]
    return {"image": squeeze_gray(np.asarray(record["image"])),
            "label": int(record[self.label_key])}


def list_image_files(folder: pathlib.Path) -> list[pathlib.Path]:
  """Image files directly under ``folder``, sorted by name."""
  return sorted(p for p in folder.iterdir()
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class SubsetSource:
  """The rows ``indices`` of another source, in that order.

  In-memory sources stay in memory (``images`` / ``labels`` are the gathered
  arrays), so the pipeline's vectorised path still applies.
  """

  def __init__(self, source: Any, indices: Sequence[int]):
    self.source = source
    self.indices = np.asarray(indices, dtype=np.int64)
    stored = getattr(source, "images", None)
    self.images = stored[self.indices] if isinstance(stored, np.ndarray) else None
    self.labels = source_labels(source)[self.indices]

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> dict[str, Any]:
    if self.images is not None:
      return {"image": self.images[index], "label": int(self.labels[index])}
    return self.source[int(self.indices[index])]


def source_labels(source: Any) -> np.ndarray:
  """Every label of a source as int64 (read record by record if not stored)."""
  labels = getattr(source, "labels", None)
  if labels is not None:
    return np.asarray(labels, dtype=np.int64)
  return np.asarray([source[i]["label"] for i in range(len(source))], dtype=np.int64)
