"""The calibration split: half of test, stratified, as the validation split."""

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ols_jax import data as data_lib
from ols_jax.data import datasets
from ols_jax.data import sources


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=200), st.integers(0, 2**31 - 1))
def test_halves_are_a_stratified_partition(labels, seed):
  labels = np.asarray(labels)
  a, b = datasets.stratified_halves(labels, seed)
  assert np.array_equal(np.sort(np.concatenate([a, b])), np.arange(len(labels)))
  for c in np.unique(labels):
    n = int((labels == c).sum())
    assert int((labels[a] == c).sum()) == n // 2
    assert int((labels[b] == c).sum()) == n - n // 2
  a2, b2 = datasets.stratified_halves(labels, seed)
  assert np.array_equal(a, a2) and np.array_equal(b, b2)


def test_calibration_split_replaces_val_and_test():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (40, 8, 8), dtype=np.uint8)
  labels = np.repeat(np.arange(4), 10)
  ds = datasets._make("toy", ["a", "b", "c", "d"], 1, 8, {  # pylint: disable=protected-access
      "train": sources.ArraySource(images, labels), "val": sources.ArraySource(images[:8], labels[:8]),
      "test": sources.ArraySource(images, labels)})
  out = data_lib.calibration_split(ds, seed=3)
  assert out.info.split_sizes == {"train": 40, "val": 20, "test": 20, "val_dataset": 8}
  assert out.splits["val_dataset"] is ds.splits["val"]
  val, test = out.splits["val"], out.splits["test"]
  # Disjoint rows of the old test split, images and labels carried together.
  rows = {v.tobytes() for v in val.images} | {t.tobytes() for t in test.images}
  assert len(rows) == 40
  for src in (val, test):
    assert np.bincount(src.labels).tolist() == [5, 5, 5, 5]
    i = 7
    assert np.array_equal(src[i]["image"], images[src.indices[i]])
    assert src[i]["label"] == labels[src.indices[i]]


def test_load_for_config_applies_the_split(tmp_path):
  from ols_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  c = config_lib.base_config()
  plain = data_lib.load_for_config(c)
  c.calibration_split = "test_half"
  split = data_lib.load_for_config(c)
  n = len(plain.splits["test"])
  assert len(split.splits["val"]) + len(split.splits["test"]) == n
  assert len(split.splits["val_dataset"]) == len(plain.splits["val"])
  c.calibration_split = "bogus"
  with pytest.raises(config_lib.ConfigError, match="config.calibration_split"):
    config_lib.validate(c)
