"""TFDS builders: a miniature RadImageNet from real scans, and MedMNIST."""

import csv
import io
import pathlib
import shutil
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image
import tensorflow_datasets as tfds

from ols_jax import data
from ols_jax import paths

MR_CLASSES = ("glioma", "meningioma", "notumor", "pituitary")


def _need(*names):
  for name in names:
    if not paths.dataset_dir(name).is_dir():
      pytest.skip(f"real data {name!r} not found at {paths.dataset_dir(name)}"
                  f"; set {paths.ENV_VAR}")


def _save_png(path: pathlib.Path, image: np.ndarray):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(image).save(path)


def make_mini_radimagenet(root: pathlib.Path, with_csvs: bool = True,
                          us_per_class: int = 4):
  """~44 real scans in the RadImageNet layout; returns {split: rows}."""
  _need("brain_tumor_mri", "kidney_ct", "chest_ct", "breastmnist")
  files = []  # (rel, label)
  tar_path = (paths.dataset_dir("brain_tumor_mri")
              / "brain_tumor_mri_test_224_jpeg.tar")
  counts = dict.fromkeys(MR_CLASSES, 0)
  with tarfile.open(tar_path) as tar:
    for m in tar.getmembers():
      cls = m.name.split("/")[-2] if m.isfile() else None
      if cls in counts and counts[cls] < 5:
        counts[cls] += 1
        with Image.open(io.BytesIO(tar.extractfile(m).read())) as img:
          gray = np.asarray(img.convert("L"))
        rel = f"radiology_ai/MR/brain/{cls}/brain{cls}{counts[cls]:04d}.png"
        _save_png(root / rel, gray)
        files.append((rel, f"brain-{cls}"))
  sources = (("kidney_ct", "abd", ("Cyst", "Normal")),
             ("chest_ct", "lung", ("adenocarcinoma", "normal")))
  for name, anatomy, classes in sources:
    with np.load(paths.dataset_dir(name) / f"{name}_64.npz") as z:
      images, labels, names = (z["train_images"], z["train_labels"][:, 0],
                               list(z["class_names"]))
    for cls in classes:
      rows = np.flatnonzero(labels == names.index(cls))[:4]
      pathology = cls.lower()
      for k, r in enumerate(rows):
        rel = (f"radiology_ai/CT/{anatomy}/{pathology}/"
               f"{anatomy}-{pathology}{k:06d}.png")
        _save_png(root / rel, images[r])
        files.append((rel, f"{anatomy}-{pathology}"))
  with np.load(paths.dataset_dir("breastmnist") / "breastmnist_28.npz") as z:
    images, labels = z["train_images"], z["train_labels"][:, 0]
  for label, folder in ((0, "breast-malignant"), (1, "breast-benign")):
    for k, r in enumerate(np.flatnonzero(labels == label)[:us_per_class]):
      rel = f"radiology_ai/US/{folder}/usn{label}{k:05d}.png"
      _save_png(root / rel, images[r])
      files.append((rel, folder))
  splits = {"train": [], "val": [], "test": []}
  by_label = {}
  for rel, label in files:
    by_label.setdefault(label, []).append((rel, label))
  for rows in by_label.values():
    splits["val"].append(rows[0])
    splits["test"].append(rows[1])
    splits["train"].extend(rows[2:])
  if with_csvs:
    for split, rows in splits.items():
      write_csv(root / f"RadiologyAI_{split}.csv", rows)
  return splits


def write_csv(path, rows, header=("filename", "label")):
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)


def build(data_dir, manual_dir, name="radimagenet"):
  builder = tfds.builder(name, data_dir=str(data_dir))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual_dir)))
  return builder


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
  root = tmp_path_factory.mktemp("radimagenet_manual")
  splits = make_mini_radimagenet(root)
  data_dir = tmp_path_factory.mktemp("tfds")
  build(data_dir, root)
  return root, data_dir, splits


def test_radimagenet_round_trip(mini):
  root, data_dir, splits = mini
  source = tfds.data_source("radimagenet", data_dir=str(data_dir))
  builder = tfds.builder("radimagenet", data_dir=str(data_dir))
  assert builder.info.file_format.value == "array_record"
  assert "tensorflow" not in sys.modules  # built and read without TF.
  names = builder.info.features["label"].names
  expected_names = sorted({label for _, label in splits["train"]})
  assert names == expected_names and len(names) == 10
  for split, rows in splits.items():
    assert len(source[split]) == len(rows)
    by_file = {r["file_name"].decode() if isinstance(r["file_name"], bytes)
               else r["file_name"]: r for r in source[split]}
    assert sorted(by_file) == sorted(rel for rel, _ in rows)
    for rel, label in rows:
      record = by_file[rel]
      assert names[int(record["label"])] == label
      stored = np.asarray(Image.open(root / rel))
      np.testing.assert_array_equal(record["image"][..., 0], stored)
      modality = ("CT", "MR", "US")[int(record["modality"])]
      assert rel.split("/")[1] == modality
      anatomy = record["anatomy"]
      anatomy = anatomy.decode() if isinstance(anatomy, bytes) else anatomy
      assert anatomy == label.split("-")[0]
  mr = [r for r in source["train"] if r["image"].shape[0] == 224]
  assert len(mr) == 4 * 3


def test_radimagenet_load_dataset(mini):
  root, data_dir, splits = mini
  ds = data.load_dataset("radimagenet", data_dir=data_dir, manual_dir=root)
  assert ds.info.num_classes == 10 and ds.info.channels == 1
  assert ds.info.split_sizes == {s: len(r) for s, r in splits.items()}
  rec = ds.splits["val"][0]
  assert rec["image"].ndim == 2 and rec["image"].dtype == np.uint8
  it = data.train_iterator(ds.splits["train"], global_batch_size=8,
                           image_size=64, channels=3, seed=0,
                           augment="rrc_flip")
  assert next(it)["image"].shape == (8, 64, 64, 3)


def test_radimagenet_without_csvs(tmp_path):
  manual = tmp_path / "manual"
  make_mini_radimagenet(manual, with_csvs=False, us_per_class=10)
  build(tmp_path / "tfds", manual)
  builder = tfds.builder("radimagenet", data_dir=str(tmp_path / "tfds"))
  names = builder.info.features["label"].names
  assert "brain-glioma-MR" in names and "abd-cyst-CT" in names
  assert "breast-malignant" in names and len(names) == 10
  sizes = {s: builder.info.splits[s].num_examples
           for s in ("train", "val", "test")}
  # round(0.1 * n) per class: 0 for the 4- and 5-image classes (Python
  # rounds 0.5 to 0), 1 val + 1 test for each 10-image US class.
  assert sizes == {"train": 52, "val": 2, "test": 2}
  source = tfds.data_source("radimagenet", data_dir=str(tmp_path / "tfds"))
  files = sorted(r["file_name"] for r in source["test"])
  files = [f.decode() if isinstance(f, bytes) else f for f in files]
  assert all(f.startswith("radiology_ai/US/breast-") for f in files)


def _expect_error(tmp_path, manual, match):
  with pytest.raises(data.DataError, match=match) as info:
    build(tmp_path / "tfds_err", manual)
  assert "\n" not in str(info.value).strip()


def test_radimagenet_errors(tmp_path):
  manual = tmp_path / "m"
  _expect_error(tmp_path, manual, "does not exist or is empty")
  splits = make_mini_radimagenet(manual)
  train_csv = manual / "RadiologyAI_train.csv"
  write_csv(train_csv, splits["train"], header=("file", "class"))
  _expect_error(tmp_path, manual, "RadiologyAI_train.csv.*header")
  write_csv(train_csv, splits["train"] + [("radiology_ai/MR/brain/x.png",
                                           "brain-glioma")])
  _expect_error(tmp_path, manual, r"line \d+.*x\.png")
  write_csv(train_csv, splits["train"])
  write_csv(manual / "RadiologyAI_val.csv",
            splits["val"] + [(splits["train"][0][0], "knee-acl")])
  _expect_error(tmp_path, manual, "RadiologyAI_val.csv, line.*knee-acl")
  write_csv(manual / "RadiologyAI_val.csv", splits["val"])
  victim = manual / splits["test"][0][0]
  victim.write_bytes(victim.read_bytes()[:100])
  _expect_error(tmp_path, manual, f"cannot decode image .*{victim.name}")


# ------------------------------------------------------------------ medmnist


@pytest.fixture
def no_network(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError("network access attempted")
  monkeypatch.setattr(tfds.download.DownloadManager, "download", fail)


def test_medmnist_from_manual_npz(tmp_path, no_network):
  _need("retinamnist")
  src = paths.dataset_dir("retinamnist") / "retinamnist.npz"
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "retinamnist.npz").symlink_to(src)
  ds = data.load_dataset("medmnist/retinamnist", data_dir=tmp_path / "tfds",
                         manual_dir=manual)
  assert ds.info.split_sizes == {"train": 1080, "val": 120, "test": 400}
  assert ds.info.channels == 3 and ds.info.image_size == 28
  assert ds.info.class_names == tuple("01234")
  source = tfds.data_source("medmnist/retinamnist_28",
                            data_dir=str(tmp_path / "tfds"))
  with np.load(src) as z:
    for split in ("train", "val", "test"):
      images, labels = z[f"{split}_images"], z[f"{split}_labels"][:, 0]
      seen = np.zeros(len(labels), bool)
      for i in range(len(source[split])):
        rec = source[split][i]
        row = int(rec["index"])
        seen[row] = True
        np.testing.assert_array_equal(rec["image"], images[row])
        assert rec["label"] == labels[row]
      assert seen.all()
      got = [ds.splits[split][i]["label"] for i in range(len(labels))]
      assert np.bincount(got, minlength=5).tolist() == np.bincount(
          labels, minlength=5).tolist()


def test_medmnist_md5_catches_corruption(tmp_path, no_network):
  _need("retinamnist")
  manual = tmp_path / "manual"
  manual.mkdir()
  bad = manual / "retinamnist.npz"
  shutil.copyfile(paths.dataset_dir("retinamnist") / "retinamnist.npz", bad)
  blob = bytearray(bad.read_bytes())
  blob[len(blob) // 2] ^= 0xFF
  bad.write_bytes(bytes(blob))
  with pytest.raises(data.DataError, match="MD5 mismatch.*retinamnist.npz"):
    build(tmp_path / "tfds", manual, name="medmnist/retinamnist_28")
