"""Cross-source shift: the brain_tumor_44 -> brain_tumor_mri mapping, config checks, the run."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from ols_jax import config as config_lib
from ols_jax.data import cross_source
from ols_jax.data import errors
from ols_jax.study import sweep_report

pytestmark = pytest.mark.slow  # whole runs or subprocesses: the full tier only

BRAIN44 = tuple(f"{t} {q}" for t in (
    "Astrocitoma", "Carcinoma", "Ependimoma", "Ganglioglioma", "Germinoma", "Glioblastoma",
    "Granuloma", "Meduloblastoma", "Meningioma", "Neurocitoma", "Oligodendroglioma", "Papiloma",
    "Schwannoma", "Tuberculoma") for q in ("T1", "T1C+", "T2")) + ("_NORMAL T1", "_NORMAL T2")
BRAIN4 = ("glioma", "meningioma", "notumor", "pituitary")


def test_brain44_mapping_matches_the_plan():
  lmap = cross_source.label_map("brain_tumor_44", "brain_tumor_mri", BRAIN44, BRAIN4)
  mapped = {n: (BRAIN4[i] if i >= 0 else None) for n, i in zip(BRAIN44, lmap)}
  assert [n for n, t in mapped.items() if t == "meningioma"] == [
      "Meningioma T1", "Meningioma T1C+", "Meningioma T2"]
  assert [n for n, t in mapped.items() if t == "notumor"] == ["_NORMAL T1", "_NORMAL T2"]
  glioma = {n.rsplit(" ", 1)[0] for n, t in mapped.items() if t == "glioma"}
  assert glioma == {"Astrocitoma", "Glioblastoma", "Oligodendroglioma", "Ependimoma"}
  assert sum(t == "glioma" for t in mapped.values()) == 12
  assert "pituitary" not in mapped.values()
  assert sum(t is None for t in mapped.values()) == len(BRAIN44) - 17


def test_mapped_subset_drops_unmapped_and_relabels():
  lmap = np.array([2, -1, 0, -1])
  keep, labels = cross_source.mapped_subset(np.array([0, 1, 2, 3, 2, 0]), lmap)
  np.testing.assert_array_equal(keep, [0, 2, 4, 5])
  np.testing.assert_array_equal(labels, [2, 0, 0, 2])


def test_bad_pairs_and_names():
  with pytest.raises(errors.DataError, match="no cross-source mapping"):
    cross_source.label_map("chest_ct", "brain_tumor_mri", BRAIN44, BRAIN4)
  with pytest.raises(errors.DataError, match="not a class of brain_tumor_mri"):
    cross_source.label_map("brain_tumor_44", "brain_tumor_mri", BRAIN44, ("a", "b"))
  with pytest.raises(errors.DataError, match="no class is mapped"):
    cross_source.label_map("brain_tumor_44", "brain_tumor_mri", ("Germinoma T1",), BRAIN4)
  c = config_lib.base_config()
  c.dataset = "chest_ct"
  c.cross_source = "brain_tumor_44"
  with pytest.raises(config_lib.ConfigError, match="config.cross_source: no cross-source"):
    config_lib.validate(c)


def _kept(values):
  def run(seed, err, cov):
    return {"seed": seed, "cross_source": {
        "source": "brain_tumor_44", "mapping": "m", "count": 499, "source_count": 886,
        "raw": {"top1_error": err, "ece": err / 2, "nll": err}, "ts": {"ece": err / 3},
        "conformal": {"lac": {"coverage": cov}}, "ood_flagged": {"mahalanobis": 0.1}}}
  return {arm: {s: run(s, e, c) for s, (e, c) in enumerate(v)} for arm, v in values.items()}


def test_summary_tables_and_paired_rows():
  kept = _kept({"ce": [(0.5, 0.8), (0.6, 0.82)], "ols_uniform": [(0.4, 0.85), (0.45, 0.9)]})
  table = sweep_report.cross_source_table(kept)
  assert "499 of 886 images kept" in table
  assert "| ols_uniform | 0,1 | 42.50 ± 3.54 |" in table
  paired = sweep_report.trust_paired_table(kept)
  row = next(l for l in paired.splitlines() if "cross-source top-1 error" in l)
  assert "0: -10.00, 1: -15.00" in row
  assert sweep_report.cross_source_table({"ce": {0: {"seed": 0}}}) == ""


def test_run_records_the_cross_source_section(tmp_path, shared_data):
  shared_data("brain_tumor_44")
  repo = pathlib.Path(__file__).resolve().parent.parent
  workdir = tmp_path / "run"
  cmd = [sys.executable, str(repo / "experiments" / "radimagenet.py"),
         f"--config={repo / 'experiments' / 'configs' / 'smoke.py'}", f"--workdir={workdir}",
         "--config.num_epochs=1", "--config.cross_source=brain_tumor_44",
         "--config.progress=False", "--config.calibration_split=test_half",
         "--config.tensorboard=False", "--config.figures=False", "--cpu_devices=1"]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  cs = json.loads((workdir / "results.json").read_text())["cross_source"]
  assert cs["source"] == "brain_tumor_44" and cs["source_count"] == 886
  assert sum(cs["class_counts"]) == cs["count"] == 499 and cs["class_counts"][3] == 0
  assert cs["raw"]["top1_error"] == cs["ts"]["top1_error"]  # TS keeps the argmax
  assert 0.0 <= cs["conformal"]["lac"]["coverage"] <= 1.0
  assert set(cs["ood_flagged"]) == {"msp", "energy", "mahalanobis"}
