"""Shared datasets, folder datasets and the grain input pipeline."""

import tarfile

import numpy as np
import pytest

from ols_jax import data
from ols_jax.data import augment as augment_lib

# name -> (image_size, (train, val, test), num_classes, channels,
#          train class counts or None), from shared/data/README.md.
EXPECTED = {
    "brain_tumor_mri": (64, (4781, 531, 1281), 4, 1, [1189, 1107, 1189, 1296]),
    "retinamnist": (28, (1080, 120, 400), 5, 3, [486, 128, 206, 194, 66]),
    "pneumoniamnist": (28, (4708, 524, 624), 2, 1, [1214, 3494]),
    "brain_tumor_44": (64, (3093, 439, 886), 44, 1, None),
    "alzheimer_mri": (28, (4609, 512, 1279), 4, 1, [645, 47, 2304, 1613]),
    "chest_ct": (64, (493, 65, 232), 4, 1, [194, 114, 33, 152]),
    "kidney_ct": (28, (1369, 152, 393), 4, 1, [294, 360, 355, 360]),
    "breastmnist": (28, (546, 78, 156), 2, 1, [147, 399]),
    "organamnist": (28, (34561, 6491, 17778), 11, 1,
                    [1956, 1390, 1357, 1474, 3963, 3817, 6164, 3919, 3929,
                     3031, 3561]),
    "radmix": (64, (7802, 1011, 2223), 60, 1, None),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shared_dataset_counts(name, shared_data):
  shared_data(name)
  size, sizes, num_classes, channels, train_counts = EXPECTED[name]
  ds = data.load_dataset(name, image_size=size)
  info = ds.info
  assert info.name == name
  assert info.num_classes == num_classes == len(info.class_names)
  assert info.channels == channels
  assert info.image_size == size
  assert info.split_sizes == dict(zip(("train", "val", "test"), sizes))
  for split, n in zip(("train", "val", "test"), sizes):
    assert len(ds.splits[split]) == n
  if train_counts is not None:
    counts = np.bincount(ds.splits["train"].labels, minlength=num_classes)
    assert counts.tolist() == train_counts
  record = ds.splits["test"][0]
  assert record["image"].dtype == np.uint8
  assert record["image"].shape[:2] == (size, size)
  assert isinstance(record["label"], int)


def test_shared_class_names(shared_data):
  shared_data("organamnist")
  assert data.load_dataset("brain_tumor_mri").info.class_names == (
      "glioma", "meningioma", "notumor", "pituitary")
  assert data.load_dataset("organamnist").info.class_names[:3] == (
      "bladder", "femur-left", "femur-right")
  assert data.load_dataset("pneumoniamnist").info.class_names == (
      "normal", "pneumonia")
  assert data.load_dataset("retinamnist").info.class_names == tuple("01234")
  r28 = data.load_dataset("radmix", image_size=28).info
  assert r28.num_classes == 75
  assert r28.split_sizes == {"train": 13547, "val": 1732, "test": 3665}
  assert r28.class_names[74] == "CT-abdomen-spleen"


def test_bad_names_and_paths(tmp_path, shared_data):
  shared_data("retinamnist")
  with pytest.raises(data.DataError, match="valid names"):
    data.load_dataset("no_such_dataset")
  # chest_ct has no embedded copy, so an empty data_dir must fail naming it
  # (brain_tumor_mri at 28 px would fall back to the embedded npz).
  with pytest.raises(data.DataError, match=str(tmp_path)):
    data.load_dataset("chest_ct", data_dir=tmp_path)
  with pytest.raises(data.DataError, match="stored sizes"):
    data.load_dataset("retinamnist", image_size=64)
  with pytest.raises(data.DataError, match="not found"):
    data.load_dataset(f"folder:{tmp_path / 'missing'}")
  with pytest.raises(data.DataError, match="multi-label"):
    data.load_dataset("medmnist/chestmnist")


def _jpegs(tar_path, per_class):
  """First ``per_class`` JPEG members of each class of the 224 px tar."""
  picked = {}
  with tarfile.open(tar_path) as tar:
    for m in tar.getmembers():
      if m.isfile() and m.name.endswith(".jpg"):
        cls = m.name.split("/")[-2]
        if len(picked.setdefault(cls, [])) < per_class:
          picked[cls].append(tar.extractfile(m).read())
  return picked


def test_folder_dataset(tmp_path, shared_data):
  folder = shared_data("brain_tumor_mri")
  picked = _jpegs(folder / "brain_tumor_mri_test_224_jpeg.tar", 3)
  for cls, blobs in picked.items():
    for i, blob in enumerate(blobs):
      split = "train" if i < 2 else "valid"
      out = tmp_path / "scans" / split / cls
      out.mkdir(parents=True, exist_ok=True)
      (out / f"{i}.jpg").write_bytes(blob)
  ds = data.load_dataset(f"folder:{tmp_path / 'scans'}")
  assert ds.info.class_names == ("glioma", "meningioma", "notumor",
                                 "pituitary")
  assert ds.info.split_sizes == {"train": 8, "val": 4}
  rec = ds.splits["val"][1]
  assert rec["label"] == 1 and rec["image"].shape[:2] == (224, 224)
  it = data.eval_iterator(ds.splits["train"], global_batch_size=8,
                          image_size=64, channels=1)
  batch = next(it)
  assert batch["image"].shape == (8, 64, 64, 1)
  assert batch["label"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
  (tmp_path / "scans" / "valid" / "other").mkdir()
  (tmp_path / "scans" / "valid" / "other" / "x.png").write_bytes(b"")
  with pytest.raises(data.DataError, match="other"):
    data.load_dataset(f"folder:{tmp_path / 'scans'}")


# ----------------------------------------------------------------- pipeline


@pytest.fixture(scope="module")
def small_source():
  """203 real 28 px brain MRI slices (all four classes)."""
  from ols_jax import paths  # pylint: disable=g-import-not-at-top
  if not paths.dataset_dir("brain_tumor_mri").is_dir():
    pytest.skip("real data 'brain_tumor_mri' not found; set OLS_JAX_DATA")
  full = data.load_dataset("brain_tumor_mri", image_size=28).splits["train"]
  idx = np.linspace(0, len(full) - 1, 203).astype(int)
  from ols_jax.data import sources  # pylint: disable=g-import-not-at-top
  return sources.ArraySource(full.images[idx], full.labels[idx][:, None])


def _all(it):
  return list(it)


@pytest.mark.parametrize("augment", data.AUGMENTATIONS)
@pytest.mark.parametrize("channels", [1, 3])
def test_train_batch_format(small_source, augment, channels):
  it = data.train_iterator(small_source, global_batch_size=16,
                           image_size=32, channels=channels, seed=1,
                           augment=augment)
  assert len(it) == data.steps_per_epoch(203, 16) == 12
  batch = next(it)
  assert batch["image"].shape == (16, 32, 32, channels)
  assert batch["image"].dtype == np.float32
  assert batch["label"].dtype == np.int32 and batch["label"].shape == (16,)
  assert batch["mask"].dtype == np.float32 and np.all(batch["mask"] == 1)
  assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
  assert batch["image"].min() == -1.0  # zero padding / dark background.
  if channels == 3:
    np.testing.assert_array_equal(batch["image"][..., 0],
                                  batch["image"][..., 2])


def test_rgb_to_gray_and_ranges():
  rgb = np.zeros((10, 12, 3), np.uint8)
  rgb[..., 0] = 255
  gray = augment_lib.preprocess(rgb, image_size=10, channels=1)
  assert gray.shape == (10, 10, 1)
  # 0.299 * 255 = 76 -> 76 * 2 / 255 - 1; the padded rows stay -1.
  np.testing.assert_allclose(gray[5, 5, 0], 76 * 2 / 255 - 1, atol=1e-6)
  white = np.full((8, 8), 255, np.uint8)
  np.testing.assert_array_equal(
      augment_lib.preprocess(white, image_size=8, channels=3), 1.0)


def test_determinism_and_epochs(small_source):
  kw = dict(global_batch_size=16, image_size=28, channels=1, seed=3)
  a = _all(data.train_iterator(small_source, epoch=0, **kw))
  b = _all(data.train_iterator(small_source, epoch=0, **kw))
  c = _all(data.train_iterator(small_source, epoch=1, **kw))
  d = _all(data.train_iterator(small_source, epoch=0, **{**kw, "seed": 4}))
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  labels = lambda bs: np.concatenate([x["label"] for x in bs])
  assert not np.array_equal(labels(a), labels(c))
  assert not np.array_equal(labels(a), labels(d))
  # Each epoch is a permutation: no example twice (labels multiset check).
  kept = len(labels(a))
  assert kept == 12 * 16


def test_exact_resume(small_source):
  kw = dict(global_batch_size=16, image_size=28, channels=1, seed=5,
            epoch=2, augment="crop_flip_rotate")
  full = _all(data.train_iterator(small_source, **kw))
  resumed = _all(data.train_iterator(small_source, start_step=7, **kw))
  assert len(resumed) == len(full) - 7
  for x, y in zip(full[7:], resumed):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  it = data.train_iterator(small_source, **kw)
  for _ in range(3):
    next(it)
  state = it.get_state()
  fresh = data.train_iterator(small_source, **kw)
  fresh.set_state(state)
  np.testing.assert_array_equal(next(fresh)["image"], full[3]["image"])


def test_eval_covers_every_example_once(small_source):
  batches = _all(data.eval_iterator(small_source, global_batch_size=16,
                                    image_size=28, channels=1))
  assert len(batches) == 13
  mask = np.concatenate([b["mask"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  images = np.concatenate([b["image"] for b in batches])
  assert mask.sum() == 203 and np.all(mask[:203] == 1)
  assert np.all(mask[203:] == 0) and np.all(labels[203:] == 0)
  assert np.all(images[203:] == 0)
  np.testing.assert_array_equal(labels[:203], small_source.labels)
  expect = small_source.images.astype(np.float32) * (2 / 255) - 1
  np.testing.assert_allclose(images[:203, ..., 0], expect, atol=1e-6)


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_sharding(small_source, process_count):
  kw = dict(global_batch_size=16, image_size=28, channels=1)
  single = _all(data.train_iterator(small_source, seed=9, **kw))
  shards = [_all(data.train_iterator(small_source, seed=9,
                                     process_index=p,
                                     process_count=process_count, **kw))
            for p in range(process_count)]
  for step, batch in enumerate(single):
    for k in batch:
      joined = np.concatenate([s[step][k] for s in shards])
      np.testing.assert_array_equal(joined, batch[k])
  single = _all(data.eval_iterator(small_source, **kw))
  shards = [_all(data.eval_iterator(small_source, process_index=p,
                                    process_count=process_count, **kw))
            for p in range(process_count)]
  for step, batch in enumerate(single):
    for k in batch:
      np.testing.assert_array_equal(
          np.concatenate([s[step][k] for s in shards]), batch[k])


def test_drop_remainder_false_pads(small_source):
  batches = _all(data.train_iterator(
      small_source, global_batch_size=16, image_size=28, channels=1, seed=0,
      drop_remainder=False))
  assert len(batches) == data.steps_per_epoch(203, 16, False) == 13
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.sum() == 203 and mask.shape == (208,)


def test_pipeline_errors(small_source):
  with pytest.raises(data.DataError, match="multiple"):
    data.train_iterator(small_source, global_batch_size=15, image_size=28,
                        channels=1, seed=0, process_count=2)
  with pytest.raises(data.DataError, match="augment"):
    data.train_iterator(small_source, global_batch_size=16, image_size=28,
                        channels=1, seed=0, augment="mixup")
  with pytest.raises(data.DataError, match="start_step"):
    data.train_iterator(small_source, global_batch_size=16, image_size=28,
                        channels=1, seed=0, start_step=99)


@pytest.mark.slow
def test_workers_match_in_process(small_source):
  kw = dict(global_batch_size=32, image_size=28, channels=1, seed=2)
  ref = _all(data.train_iterator(small_source, **kw))
  it = data.train_iterator(small_source, num_workers=2, **kw)
  got = _all(it)
  it.close()
  assert len(got) == len(ref)
  for x, y in zip(ref, got):
    np.testing.assert_array_equal(x["image"], y["image"])
