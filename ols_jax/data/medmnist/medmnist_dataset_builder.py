"""MedMNIST v2/v3 2D subsets as a TFDS builder (one config per subset/size).

The official npz comes from ``manual_dir`` when it is there (named as on
Zenodo, e.g. ``retinamnist.npz`` or ``pathmnist_64.npz``) and is downloaded
otherwise; either way its MD5 must match the official one. Images are stored
as PNG in ``array_record`` files, so neither building nor reading needs TF.
"""

from __future__ import annotations

import hashlib
import io
import pathlib
from typing import Iterator

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from ols_jax.data import medmnist_info
from ols_jax.data.errors import DataError

_INSTRUCTIONS = """\
Optional: put the official MedMNIST npz (e.g. `retinamnist.npz`,
`pathmnist_64.npz` from https://zenodo.org/records/10519652) in the manual
dir to build offline; otherwise it is downloaded. The MD5 is checked.
"""


def file_md5(path: pathlib.Path) -> str:
  digest = hashlib.md5()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def verify_md5(path: pathlib.Path, expected: str) -> None:
  actual = file_md5(path)
  if actual != expected:
    raise DataError(f"MD5 mismatch for {path}: got {actual}, expected "
                    f"{expected} (corrupt or not the official file)")


def png_bytes(image: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(image).save(out, format="PNG")
  return out.getvalue()


class MedmnistConfig(tfds.core.BuilderConfig):
  """One subset at one image size."""

  def __init__(self, *, subset: str, size: int, **kwargs):
    info = medmnist_info.SUBSETS[subset]
    super().__init__(name=f"{subset}_{size}",
                     description=f"{subset} at {size}x{size} ({info.task}).",
                     **kwargs)
    self.subset = subset
    self.size = size


class Builder(tfds.core.GeneratorBasedBuilder):
  """MedMNIST 2D (Yang et al., Scientific Data 2023)."""

  name = "medmnist"
  VERSION = tfds.core.Version("3.0.0")
  RELEASE_NOTES = {"3.0.0": "MedMNIST v3 files (Zenodo record 10519652)."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  BUILDER_CONFIGS = [MedmnistConfig(subset=s, size=z)
                     for s in medmnist_info.SUBSETS
                     for z in medmnist_info.SIZES]

  def __init__(self, *, file_format=None, **kwargs):
    super().__init__(file_format=file_format or "array_record", **kwargs)

  @property
  def _subset(self) -> medmnist_info.SubsetInfo:
    return medmnist_info.SUBSETS[self.builder_config.subset]

  def _info(self) -> tfds.core.DatasetInfo:
    info, size = self._subset, self.builder_config.size
    if info.multi_label:
      label = tfds.features.Tensor(shape=(len(info.labels),), dtype=np.uint8)
    else:
      label = tfds.features.ClassLabel(names=list(info.labels))
    return self.dataset_info_from_configs(
        description=f"MedMNIST {info.name} ({info.task}).",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(size, size, info.channels),
                                         encoding_format="png"),
            "label": label,
            "index": tfds.features.Scalar(
                dtype=np.int32, doc="Row of the image in the npz split."),
        }),
        supervised_keys=("image", "label"),
        homepage="https://medmnist.com/",
        license=info.license,
        citation=("J. Yang et al., MedMNIST v2 - A large-scale lightweight "
                  "benchmark for 2D and 3D biomedical image classification, "
                  "Scientific Data 10, 41 (2023)."),
    )

  def _npz_path(self, dl_manager) -> pathlib.Path:
    info, size = self._subset, self.builder_config.size
    manual = getattr(dl_manager, "_manual_dir", None)
    if manual is not None:
      candidate = pathlib.Path(manual) / info.file_name(size)
      if candidate.is_file():
        return candidate
    return pathlib.Path(dl_manager.download(info.url(size)))

  def _split_generators(self, dl_manager):
    info, size = self._subset, self.builder_config.size
    path = self._npz_path(dl_manager)
    verify_md5(path, info.md5[size])
    return {split: self._generate_examples(path, split)
            for split in ("train", "val", "test")}

  def _generate_examples(self, path, split) -> Iterator[tuple[str, dict]]:
    info, size = self._subset, self.builder_config.size
    with np.load(path) as z:
      images, labels = z[f"{split}_images"], z[f"{split}_labels"]
    if len(images) != info.split_sizes[split]:
      raise DataError(f"{path}: {split} has {len(images)} images, expected "
                      f"{info.split_sizes[split]}")
    if images.shape[1:3] != (size, size):
      raise DataError(f"{path}: images are {images.shape[1:3]}, expected "
                      f"{(size, size)}")
    for i, (image, label) in enumerate(zip(images, labels)):
      if image.ndim == 2:
        image = image[..., None]
      if info.multi_label:
        target = label.astype(np.uint8)
      else:
        target = int(label[0])
      yield f"{split}_{i}", {"image": png_bytes(np.squeeze(image, -1)
                                                if image.shape[-1] == 1
                                                else image),
                             "label": target, "index": i}
