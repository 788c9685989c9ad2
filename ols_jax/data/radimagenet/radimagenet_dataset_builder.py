"""RadImageNet (Mei et al., 2022) as a TFDS builder; needs no TensorFlow.

Images are stored as grayscale PNG at their stored resolution, in
``array_record`` files, so ``tfds.data_source`` reads them without TF.
"""

from __future__ import annotations

import collections
import csv
import io
import pathlib
from typing import Iterator

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from ols_jax.data.errors import DataError

CSV_FILES = {"train": "RadiologyAI_train.csv", "val": "RadiologyAI_val.csv",
             "test": "RadiologyAI_test.csv"}
ROOT = "radiology_ai"
MODALITIES = ("CT", "MR", "US")
VAL_FRACTION = 0.1
TEST_FRACTION = 0.1

_INSTRUCTIONS = """\
RadImageNet is available on request only (https://www.radimagenet.com/).
Extract `radimagenet.tar.gz` into the manual dir so that it holds
`<manual_dir>/radiology_ai/{CT,MR}/<anatomy>/<pathology>/*.png` and
`<manual_dir>/radiology_ai/US/<label>/*.png`, and copy the official split
files `RadiologyAI_train.csv`, `RadiologyAI_val.csv`, `RadiologyAI_test.csv`
(header `filename,label`) next to `radiology_ai/`. Without the CSVs, labels
come from the folders and a seeded stratified 80/10/10 split is made.
"""

Item = collections.namedtuple("Item", "path rel label modality anatomy")


def _one_line(text: str) -> str:
  return " ".join(text.split())


def read_split_csv(path: pathlib.Path) -> list[tuple[int, str, str]]:
  """Rows ``(line_number, filename, label)`` of one official CSV."""
  try:
    with open(path, newline="", encoding="utf-8") as f:
      reader = csv.reader(f)
      header = next(reader, None)
      if header is None or [h.strip() for h in header] != ["filename",
                                                          "label"]:
        raise DataError(f"{path}: expected header 'filename,label', got "
                        f"{','.join(header or [])!r}")
      rows = []
      for line, row in enumerate(reader, start=2):
        if not row:
          continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
          raise DataError(f"{path}, line {line}: expected 'filename,label', "
                          f"got {','.join(row)!r}")
        rows.append((line, row[0].strip(), row[1].strip()))
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise DataError(f"cannot read {path}: {e}") from e
  return rows


def _modality_anatomy(rel: str, label: str, where: str) -> tuple[str, str]:
  parts = rel.split("/")
  if len(parts) < 3 or parts[0] != ROOT or parts[1] not in MODALITIES:
    raise DataError(f"{where}: file name {rel!r} is not of the form "
                    f"'{ROOT}/<CT|MR|US>/...'")
  return parts[1], label.split("-")[0]


def items_from_csvs(manual_dir: pathlib.Path
                    ) -> tuple[list[str], dict[str, list[Item]]]:
  """Class names and per-split items from the official CSVs."""
  rows = {s: read_split_csv(manual_dir / f) for s, f in CSV_FILES.items()}
  classes = sorted({label for _, _, label in rows["train"]})
  if not classes:
    raise DataError(f"{manual_dir / CSV_FILES['train']} has no rows")
  known = set(classes)
  splits = {}
  for split, split_rows in rows.items():
    items = []
    for line, rel, label in split_rows:
      where = f"{manual_dir / CSV_FILES[split]}, line {line}"
      if label not in known:
        raise DataError(f"{where}: label {label!r} does not occur in "
                        f"{CSV_FILES['train']}")
      path = manual_dir / rel
      if not path.is_file():
        raise DataError(f"{where}: file {path} does not exist")
      modality, anatomy = _modality_anatomy(rel, label, where)
      items.append(Item(path, rel, label, modality, anatomy))
    splits[split] = items
  return classes, splits


def folder_label(rel: str) -> tuple[str, str, str]:
  """``(label, modality, anatomy)`` from a path under ``radiology_ai/``.

  CT/MR: ``<anatomy>-<pathology>-<modality>`` (e.g. ``lung-normal-CT``);
  US: the folder name (e.g. ``liver``); anatomy = first hyphen token.
  """
  parts = rel.split("/")
  modality = parts[1]
  if modality == "US":
    if len(parts) != 4:
      raise DataError(f"unexpected US path {rel!r} (want "
                      f"{ROOT}/US/<label>/<file>)")
    label = parts[2]
  else:
    if len(parts) != 5:
      raise DataError(f"unexpected {modality} path {rel!r} (want "
                      f"{ROOT}/{modality}/<anatomy>/<pathology>/<file>)")
    label = f"{parts[2]}-{parts[3]}-{modality}"
  return label, modality, label.split("-")[0]


def items_from_folders(manual_dir: pathlib.Path
                       ) -> tuple[list[str], dict[str, list[Item]]]:
  """Folder-derived labels and a deterministic stratified split.

  For each class in sorted order, with one ``np.random.default_rng(0)``
  shared by all classes, ``rng.permutation(n)`` over the class's files sorted
  by path: the first ``round(0.1 n)`` go to test, the next ``round(0.1 n)``
  to val, the rest to train.
  """
  root = manual_dir / ROOT
  by_class = collections.defaultdict(list)
  for modality in MODALITIES:
    base = root / modality
    if not base.is_dir():
      continue
    for path in sorted(base.rglob("*.png")):
      rel = path.relative_to(manual_dir).as_posix()
      label, mod, anatomy = folder_label(rel)
      by_class[label].append(Item(path, rel, label, mod, anatomy))
  if not by_class:
    raise DataError(f"no PNG files under {root}/{{CT,MR,US}}/")
  classes = sorted(by_class)
  rng = np.random.default_rng(0)
  splits = {"train": [], "val": [], "test": []}
  for label in classes:
    items = sorted(by_class[label], key=lambda it: it.rel)
    n = len(items)
    n_test, n_val = round(TEST_FRACTION * n), round(VAL_FRACTION * n)
    perm = rng.permutation(n)
    splits["test"] += [items[i] for i in perm[:n_test]]
    splits["val"] += [items[i] for i in perm[n_test:n_test + n_val]]
    splits["train"] += [items[i] for i in perm[n_test + n_val:]]
  for split in splits:
    splits[split].sort(key=lambda it: it.rel)
  return classes, splits


def encode_png(path: pathlib.Path) -> bytes:
  """Grayscale PNG bytes of an image file (8-bit gray PNGs pass through)."""
  try:
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as img:
      if len(img.getbands()) not in (1, 3):
        raise DataError(f"image {path}: expected 1 (grayscale) or 3 (RGB) "
                        f"channels, got {len(img.getbands())} (mode "
                        f"{img.mode})")
      img.load()
      if img.format == "PNG" and img.mode == "L":
        return data
      if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        gray = Image.fromarray(np.round(
            arr * (255.0 / max(float(arr.max()), 1.0))).astype(np.uint8))
      else:
        gray = img.convert("L")
    out = io.BytesIO()
    gray.save(out, format="PNG")
    return out.getvalue()
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    if isinstance(e, DataError):
      raise
    raise DataError(f"cannot decode image {path}: {e}") from e


class Builder(tfds.core.GeneratorBasedBuilder):
  """RadImageNet: 2D CT, MR and US images with 165 anatomy-pathology labels."""

  name = "radimagenet"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release (grayscale PNG, array_record)."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS

  def __init__(self, *, file_format=None, **kwargs):
    super().__init__(file_format=file_format or "array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="RadImageNet 2D radiology images (grayscale).",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 1),
                                         encoding_format="png"),
            "label": tfds.features.ClassLabel(),
            "modality": tfds.features.ClassLabel(names=list(MODALITIES)),
            "anatomy": tfds.features.Text(),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage="https://www.radimagenet.com/",
        citation=("Mei et al., RadImageNet: An Open Radiologic Deep Learning "
                  "Research Dataset for Effective Transfer Learning, "
                  "Radiology: Artificial Intelligence 4(5):e210315, 2022."),
    )

  def _split_generators(self, dl_manager):
    try:
      manual_dir = pathlib.Path(dl_manager.manual_dir)
    except AssertionError as e:
      raise DataError(_one_line(f"RadImageNet manual dir "
                                f"{dl_manager._manual_dir} does not exist or "  # pylint: disable=protected-access
                                f"is empty. {_INSTRUCTIONS}")) from e
    csvs = [manual_dir / f for f in CSV_FILES.values()]
    present = [p.is_file() for p in csvs]
    if any(present) and not all(present):
      missing = [str(p) for p, ok in zip(csvs, present) if not ok]
      raise DataError(f"split CSV missing: {', '.join(missing)} (give all "
                      f"three CSVs or none)")
    if not (manual_dir / ROOT).is_dir():
      raise DataError(_one_line(f"{manual_dir / ROOT} not found. "
                                f"{_INSTRUCTIONS}"))
    if all(present):
      classes, splits = items_from_csvs(manual_dir)
    else:
      classes, splits = items_from_folders(manual_dir)
    self.info.features["label"].names = classes
    return {split: self._generate_examples(items)
            for split, items in splits.items()}

  def _generate_examples(self, items) -> Iterator[tuple[str, dict]]:
    for item in items:
      yield item.rel, {
          "image": encode_png(item.path),
          "label": item.label,
          "modality": item.modality,
          "anatomy": item.anatomy,
          "file_name": item.rel,
      }
