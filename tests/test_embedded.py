"""The packaged default dataset: a clone with no data folder still runs."""

import hashlib
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from ols_jax import data
from ols_jax import paths
from ols_jax.data import local

pytestmark = pytest.mark.slow  # whole runs or subprocesses: the full tier only

REPO = pathlib.Path(__file__).resolve().parent.parent


def _sha256(path):
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


@pytest.mark.parametrize("key", sorted(local.EMBEDDED))
def test_embedded_file_matches_its_checksum(key):
  path = local.embedded_npz(*key)
  assert path.is_file(), path
  assert _sha256(path) == local.EMBEDDED[key][1]


def test_embedded_copy_is_the_shared_file():
  shared = paths.dataset_dir("brain_tumor_mri") / "brain_tumor_mri_28.npz"
  if not shared.is_file():
    pytest.skip(f"real data not found at {shared}; nothing to compare with")
  assert _sha256(shared) == _sha256(local.embedded_npz("brain_tumor_mri", 28))


def test_no_data_folder_falls_back_to_the_packaged_copy(tmp_path, monkeypatch):
  monkeypatch.setenv(paths.ENV_VAR, str(tmp_path / "nothing_here"))
  ds = data.load_dataset("brain_tumor_mri", image_size=28)
  assert ds.info.origin == "embedded"
  assert ds.info.split_sizes == {"train": 4781, "val": 531, "test": 1281}
  assert ds.info.class_names == ("glioma", "meningioma", "notumor", "pituitary")
  counts = np.bincount([ds.splits["train"][i]["label"]
                        for i in range(len(ds.splits["train"]))], minlength=4)
  assert counts.tolist() == [1189, 1107, 1189, 1296]  # shared/data/README.md
  # Sizes and sets that do not ship still fail, naming where to look.
  with pytest.raises(data.DataError, match="docs/DATA.md"):
    data.load_dataset("brain_tumor_mri", image_size=64)
  with pytest.raises(data.DataError, match="not found"):
    data.load_dataset("chest_ct", image_size=28)


def test_shared_folder_wins_when_present():
  if not paths.dataset_dir("brain_tumor_mri").is_dir():
    pytest.skip("real data not found; set OLS_JAX_DATA to the shared datasets")
  assert data.load_dataset("brain_tumor_mri", image_size=28).info.origin == "shared"


def test_smoke_job_runs_without_a_data_folder(tmp_path):
  """The CLI trains and evaluates on the packaged copy and says so."""
  env = dict(os.environ, **{paths.ENV_VAR: str(tmp_path / "nothing_here")})
  workdir = tmp_path / "run"
  cmd = [sys.executable, str(REPO / "experiments" / "radimagenet.py"),
         f"--config={REPO / 'experiments' / 'configs' / 'smoke.py'}",
         f"--workdir={workdir}", "--config.num_epochs=1",
         "--config.num_devices=1", "--config.figures=False",
         "--config.tsne_samples=50", "--config.progress=False"]
  done = subprocess.run(cmd, env=env, capture_output=True, text=True,
                        timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  results = json.loads((workdir / "results.json").read_text())
  assert results["data_origin"] == "embedded"
  assert results["split_sizes"]["train"] == 4781
