"""Laterality-aware flips: a mirrored left organ is labelled as the right one."""

import numpy as np
import pytest
from PIL import Image

from ols_jax import cli
from ols_jax import data
from ols_jax.data import augment as augment_lib
from ols_jax.data import laterality
from ols_jax.data import medmnist_info
from ols_jax.data import sources

ORGAN = medmnist_info.SUBSETS["organamnist"].labels


def test_mirror_names_and_pairs():
  assert laterality.mirror_name("femur-left") == "femur-right"
  assert laterality.mirror_name("CT-abdomen-kidney_right") == "CT-abdomen-kidney_left"
  assert laterality.mirror_name("Left_Hand") == "Right_Hand"
  assert laterality.mirror_name("bladder") is None
  assert laterality.mirror_name("cleft-palate") is None  # 'left' inside a word.
  assert laterality.derived_pairs(ORGAN) == (
      ("femur-left", "femur-right"), ("kidney-left", "kidney-right"),
      ("lung-left", "lung-right"))


def test_organ_flip_map_is_an_involution():
  m = data.flip_label_map(ORGAN, "organamnist")
  names = list(ORGAN)
  assert names[m[names.index("femur-left")]] == "femur-right"
  assert names[m[names.index("lung-right")]] == "lung-left"
  assert m[names.index("liver")] == names.index("liver")
  np.testing.assert_array_equal(m[m], np.arange(len(names)))
  # The builders' subsets carry the same declaration.
  for subset in ("organamnist", "organcmnist", "organsmnist"):
    np.testing.assert_array_equal(
        data.flip_label_map(medmnist_info.SUBSETS[subset].labels, f"medmnist/{subset}"), m)


def test_unmappable_and_wrong_declarations_raise():
  with pytest.raises(data.DataError, match="'hand_right' is not a class"):
    data.flip_label_map(["hand_left", "foot"])
  with pytest.raises(data.DataError, match="not among its classes"):
    data.flip_label_map(ORGAN[:3] + ("kidney-left", "kidney-right"), "organamnist")
  with pytest.raises(data.DataError, match="differ"):
    data.flip_label_map(ORGAN, "radimagenet")  # declared without sides


def test_no_lateral_classes_means_identity():
  np.testing.assert_array_equal(
      data.flip_label_map(["glioma", "meningioma", "notumor"]), np.arange(3))


def test_shared_declarations_match_names(shared_data):
  shared_data("radmix")
  shared_data("organamnist")
  for name in ("radmix", "organamnist"):
    info = data.load_dataset(name, image_size=28).info
    m = data.flip_label_map(info.class_names, name)
    assert (m != np.arange(len(m))).sum() == 6, name


def _half_bright(n, size=16):
  """Images bright on their left half: a flip moves the mass to the right."""
  images = np.zeros((n, size, size), np.uint8)
  images[:, :, : size // 2] = 200
  return images


@pytest.mark.parametrize("augment", ["crop_flip", "rrc_flip", "crop_flip_rotate"])
def test_flipped_femur_left_is_labelled_femur_right(augment):
  names = list(ORGAN)
  left, right = names.index("femur-left"), names.index("femur-right")
  liver = names.index("liver")
  labels = np.array([left] * 48 + [liver] * 16)
  src = sources.ArraySource(_half_bright(len(labels)), labels[:, None])
  flip_map = data.flip_label_map(ORGAN, "organamnist")
  it = data.train_iterator(src, global_batch_size=32, image_size=16, channels=1,
                           seed=0, augment=augment, flip_labels=flip_map)
  batches = list(it)
  images = np.concatenate([b["image"][..., 0] for b in batches])
  got = np.concatenate([b["label"] for b in batches])
  mirrored = images[:, :, 8:].mean((1, 2)) > images[:, :, :8].mean((1, 2))
  assert 0 < mirrored.sum() < len(mirrored)  # both cases occur
  original = np.where(got == right, left, got)  # undo the swap
  assert set(original) == {left, liver}
  lateral = original == left
  np.testing.assert_array_equal(got[lateral & mirrored], right)
  np.testing.assert_array_equal(got[lateral & ~mirrored], left)
  np.testing.assert_array_equal(got[~lateral], liver)  # not lateral: unchanged


def test_non_lateral_dataset_unchanged_by_identity_map():
  rng = np.random.default_rng(0)
  src = sources.ArraySource(rng.integers(0, 255, (70, 16, 16), dtype=np.uint8),
                            rng.integers(0, 4, (70, 1)))
  kw = dict(global_batch_size=16, image_size=16, channels=1, seed=3, augment="crop_flip")
  plain = list(data.train_iterator(src, **kw))
  ident = list(data.train_iterator(src, flip_labels=np.arange(4), **kw))
  for a, b in zip(plain, ident):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_lateral_resume_and_process_shards_are_exact():
  labels = np.array([1, 2, 3, 4] * 20)
  src = sources.ArraySource(_half_bright(len(labels)), labels[:, None])
  kw = dict(global_batch_size=16, image_size=16, channels=1, seed=5, epoch=1,
            augment="crop_flip", flip_labels=data.flip_label_map(ORGAN, "organamnist"))
  full = list(data.train_iterator(src, **kw))
  resumed = list(data.train_iterator(src, start_step=3, **kw))
  for a, b in zip(full[3:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  shards = [list(data.train_iterator(src, process_index=p, process_count=2, **kw))
            for p in range(2)]
  for step, batch in enumerate(full):
    for k in batch:
      np.testing.assert_array_equal(
          np.concatenate([s[step][k] for s in shards]), batch[k])


def test_batch_crop_and_flip_match_per_example_reference():
  rng = np.random.default_rng(1)
  for shape in [(5, 12, 12), (5, 12, 12, 3)]:
    images = rng.integers(0, 255, shape, dtype=np.uint8)
    pad = 3
    offsets = rng.integers(0, 2 * pad + 1, (5, 2))
    flip = np.array([True, False, True, False, False])
    got = augment_lib.batch_flip(augment_lib.batch_crop(images, pad, offsets), flip)
    for i in range(5):
      widths = ((pad, pad), (pad, pad)) + ((0, 0),) * (len(shape) - 3)
      padded = np.pad(images[i], widths)
      dy, dx = offsets[i]
      want = padded[dy:dy + 12, dx:dx + 12]
      if flip[i]:
        want = want[:, ::-1]
      np.testing.assert_array_equal(got[i], want)


def test_trainer_refuses_to_flip_unmappable_laterality(tmp_path, capsys):
  root = tmp_path / "imgs"
  for split in ("train", "val", "test"):
    for cls in ("hand_left", "foot"):
      d = root / split / cls
      d.mkdir(parents=True)
      for i in range(4):
        Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(d / f"{i}.png")
  from test_reliability import _smoke_config  # pylint: disable=import-outside-toplevel
  config = _smoke_config(dataset=f"folder:{root}", image_size=16, batch_size=4,
                         eval_batch_size=4, augment="crop_flip")
  workdir = tmp_path / "run"
  capsys.readouterr()
  with pytest.raises(SystemExit) as exc:
    cli.run_main(config, str(workdir))
  assert exc.value.code == 2
  err = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error: ")]
  assert err == [
      "error: config.augment='crop_flip': class 'hand_left' names a side but "
      "'hand_right' is not a class: a horizontal flip would mislabel it; train with "
      "augment='crop' or 'none', or declare its flip pairs in "
      "ols_jax/data/laterality.py"], err
  assert not workdir.exists()
