"""Predict on new scans with a finished run: equality with the run's own test
evaluation, temperature, abstention, conformal prediction sets, the OOD flag,
DICOM, bad input, TensorBoard.

One module-scoped smoke run (tiny CNN, 1 epoch, 28 px real brain MRI) serves
every test; predict runs on the 4 fake CPU devices of conftest.
"""

import csv
import dataclasses
import io
import json
import pathlib
import shutil
import struct
import subprocess
import sys
import tarfile

import jax
import ml_collections
import numpy as np
from PIL import Image
import pytest

from ols_jax import checkpointing
from ols_jax import cli
from ols_jax import config as config_lib
from ols_jax import conformal
from ols_jax import data as data_lib
from ols_jax import evaluation
from ols_jax import logging_utils
from ols_jax import models
from ols_jax import ood
from ols_jax import parallel
from ols_jax import paths
from ols_jax import predict
from ols_jax import run_files
from ols_jax import runs
from ols_jax import selective
from ols_jax import train
from ols_jax import train_state
from ols_jax.data import datasets
from ols_jax.data import dicom
from ols_jax.data import inputs as inputs_lib

pytestmark = pytest.mark.slow  # whole runs or subprocesses: the full tier only

REPO = pathlib.Path(__file__).resolve().parent.parent
ENTRY = REPO / "experiments" / "predict.py"
pydicom = pytest.importorskip("pydicom")


def _npz():
  from conftest import brain_mri_28  # pylint: disable=import-outside-toplevel
  return brain_mri_28()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  from experiments.configs import smoke  # pylint: disable=import-outside-toplevel
  c = smoke.get_config()
  c.update(dict(num_epochs=1, batch_size=256, num_devices=1, progress=False,
                figures=False, tsne_samples=50))
  workdir = tmp_path_factory.mktemp("predict") / "run"
  train.train_and_evaluate(c, workdir)
  return workdir


@pytest.fixture(scope="module")
def jpegs():
  """Three real 224 px brain MRI JPEGs (bytes)."""
  tar_path = paths.dataset_dir("brain_tumor_mri") / "brain_tumor_mri_test_224_jpeg.tar"
  if not tar_path.is_file():
    pytest.skip(f"real data not found at {tar_path}")
  out = []
  with tarfile.open(tar_path) as tar:
    for member in tar.getmembers():
      if member.isfile() and len(out) < 3:
        out.append(tar.extractfile(member).read())
  return out


def _results(workdir):
  return json.loads((workdir / "results.json").read_text())


def _read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _error(capsys, *args, **kwargs) -> str:
  """Runs predict_to_file through the CLI glue; returns its one error line."""
  capsys.readouterr()
  with pytest.raises(SystemExit) as exc:
    cli.call_or_exit(predict.predict_to_file, *args, progress=False, **kwargs)
  assert exc.value.code == 2
  err = capsys.readouterr().err
  lines = [l for l in err.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1 and "Traceback" not in err, err
  return lines[0]


def _reference_test_logits(workdir):
  """The run's final evaluation, redone: evaluation.evaluate on the restored best state."""
  config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  dataset = data_lib.load_dataset(config.dataset, image_size=config.image_size)
  k = dataset.info.num_classes
  state = train_state.create(
      models.from_config(config, k),
      train.make_optimizer(config, train.learning_rate_schedule(config, 1)),
      input_shape=(config.image_size, config.image_size, config.channels),
      num_classes=k, rng=jax.random.PRNGKey(0))
  best = checkpointing.Checkpointer(workdir).restore_best(state)
  dp = parallel.DataParallel("jit", config_lib.loss_spec(config, k), jax.devices()[:1])
  _, out = evaluation.evaluate(dp, dp.to_device(best), dataset.splits["test"], config,
                               with_outputs=True, channels=config.channels)
  return out["logits"], out["label"]


# ----------------------------------------------------------------------------
# Equality with the run's own evaluation; temperature; abstention.
# ----------------------------------------------------------------------------


def test_inference_imports_neither_the_training_loop_nor_loss_code():
  code = ("import sys, ols_jax.predict, ols_jax.runs, ols_jax.shift, ols_jax.shift_run; "
          "print(sorted(m for m in ('ols_jax.train', 'ols_jax.losses', 'ols_jax.steps') "
          "if m in sys.modules))")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                        text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == "[]"


def test_an_inference_only_data_parallel_has_no_epoch_boundary():
  # spec=None builds only the forward pass; a boundary call says so instead of tracing.
  import jax  # pylint: disable=import-outside-toplevel
  from ols_jax import parallel  # pylint: disable=import-outside-toplevel
  dp = parallel.DataParallel("jit", None, jax.devices()[:1])
  with pytest.raises(TypeError, match="inference"):
    dp.boundary(None)


def test_npz_test_split_equals_the_final_evaluation(run_dir, tmp_path):
  results = _results(run_dir)
  out = tmp_path / "test.csv"
  summary = predict.predict_to_file(run_dir, _npz(), out, progress=False)
  assert summary["count"] == results["split_sizes"]["test"] == 1281
  assert summary["accuracy"] == pytest.approx(1.0 - results["test"]["top1_error"], abs=1e-12)
  sel = results["selective"]
  assert summary["threshold"] == sel["threshold"]
  assert summary["count"] - summary["abstained"] == round(sel["test_coverage"] * 1281)
  if sel["test_accuracy"] is not None:
    assert summary["accepted_accuracy"] == pytest.approx(sel["test_accuracy"], abs=1e-12)

  ref_logits, ref_labels = _reference_test_logits(run_dir)
  t = results["temperature"]
  ref = selective.probabilities(ref_logits, t)
  run = runs.load(run_dir)
  got = predict.predict_logits(run, inputs_lib.collect_inputs(_npz()), progress=False)
  np.testing.assert_array_equal(got.labels, ref_labels)
  np.testing.assert_allclose(selective.probabilities(got.logits, t), ref, atol=1e-6)
  np.testing.assert_array_equal(np.argmax(got.logits, 1), np.argmax(ref_logits, 1))

  rows = _read_csv(out)
  names = list(results["class_names"])
  assert [r["path"] for r in rows[:2]] == ["npz:test:0", "npz:test:1"]
  assert [r["label"] for r in rows] == [names[i] for i in ref_labels]
  probs = np.array([[float(r[f"p_{c}"]) for c in names] for r in rows])
  np.testing.assert_allclose(probs, ref, atol=1e-6)
  assert [r["prediction"] for r in rows] == [names[i] for i in np.argmax(ref, 1)]
  conf = np.array([float(r["confidence"]) for r in rows])
  np.testing.assert_allclose(conf, ref.max(1), atol=1e-6)
  np.testing.assert_array_equal([r["abstain"] == "true" for r in rows],
                                ref.max(1) < sel["threshold"])
  assert rows[0]["top1"] == rows[0]["prediction"]
  tops = [float(rows[0][f"top{j}_prob"]) for j in range(1, 5)]
  assert tops == sorted(tops, reverse=True) and "top5" not in rows[0]  # K = 4
  assert [p.name for p in tmp_path.iterdir()] == ["test.csv"]  # no temporary left


def test_temperature_changes_confidence_not_argmax(run_dir, tmp_path):
  predict.predict_to_file(run_dir, _npz(), tmp_path / "ts.jsonl", progress=False)
  raw = predict.predict_to_file(run_dir, _npz(), tmp_path / "raw.jsonl",
                                temperature=False, progress=False)
  assert raw["temperature"] == 1.0
  ts_rows = [json.loads(l) for l in (tmp_path / "ts.jsonl").read_text().splitlines()]
  raw_rows = [json.loads(l) for l in (tmp_path / "raw.jsonl").read_text().splitlines()]
  assert [r["prediction"] for r in ts_rows] == [r["prediction"] for r in raw_rows]
  ts_conf = np.array([r["confidence"] for r in ts_rows])
  raw_conf = np.array([r["confidence"] for r in raw_rows])
  assert _results(run_dir)["temperature"] != pytest.approx(1.0, abs=1e-3)
  assert np.max(np.abs(ts_conf - raw_conf)) > 1e-3
  row = ts_rows[0]
  assert list(row) == ["path", "label", "prediction", "confidence", "abstain",
                       "prediction_set", "ood_score", "ood", "top5", "probabilities"]
  assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
  assert row["top5"][0] == {"class": row["prediction"], "probability": row["confidence"]}
  # Raw confidences get their own threshold, chosen on the saved val outputs.
  with np.load(run_dir / run_files.VAL_OUTPUTS) as z:
    conf, ok = selective.confidence_and_correct(selective.probabilities(z["logits"]),
                                                z["label"])
  assert raw["threshold"] == selective.select_threshold(conf, ok, 0.95)


def test_threshold_holds_its_target_on_validation(run_dir, tmp_path, capsys):
  results = _results(run_dir)
  sel = results["selective"]
  with np.load(run_dir / run_files.VAL_OUTPUTS) as z:
    logits, labels = z["logits"], z["label"]
  assert len(labels) == results["split_sizes"]["val"]
  conf, ok = selective.confidence_and_correct(
      selective.probabilities(logits, results["temperature"]), labels)
  t = sel["threshold"]
  coverage, accuracy = selective.accepted_stats(conf, ok, t)
  assert (coverage, accuracy) == (sel["val_coverage"], sel["val_accuracy"])
  if t <= 1.0:
    assert accuracy >= sel["target_accuracy"] == 0.95
  if 0.0 < t <= 1.0:  # the next lower confidence misses the target
    lower = conf[conf < t].max()
    assert selective.accepted_stats(conf, ok, lower)[1] < 0.95
  for split in ("val", "test", "test_ts"):
    assert 0.0 <= results[split]["aurc"] <= 1.0
  raw_conf, raw_ok = selective.confidence_and_correct(
      selective.probabilities(_reference_test_logits(run_dir)[0]),
      np.load(_npz())["test_labels"].reshape(-1))
  assert results["test"]["aurc"] == pytest.approx(selective.aurc(raw_conf, raw_ok), abs=1e-6)

  # Another target: chosen on the saved validation outputs.
  low = predict.predict_to_file(run_dir, _npz(), tmp_path / "a.csv", target_accuracy=0.6,
                                progress=False)
  assert low["threshold"] == selective.select_threshold(conf, ok, 0.6) <= t
  # Without them: the stored threshold, with a note; raw confidences refused.
  bare = tmp_path / "bare"
  shutil.copytree(run_dir, bare)
  (bare / run_files.VAL_OUTPUTS).unlink()
  notes = []
  kept = predict.predict_to_file(bare, _npz(), tmp_path / "b.csv", target_accuracy=0.6,
                                 progress=False, log=notes.append)
  assert kept["threshold"] == t and notes and notes[0].startswith("note: ")
  assert kept["sets"]["qhat"] == results["conformal"]["aps"]["qhat"]  # stored qhat
  line = _error(capsys, bare, _npz(), tmp_path / "c.csv", temperature=False)
  assert line.startswith(f"error: --no_temperature: workdir {bare} saved no validation")
  assert not (tmp_path / "c.csv").exists()
  line = _error(capsys, bare, _npz(), tmp_path / "d.csv", temperature=False,
                abstain=False)
  assert line == (f"error: workdir {bare}: no validation outputs (val_outputs.npz) to "
                  f"calibrate APS prediction sets at alpha 0.1 on raw probabilities, and "
                  f"results.json holds no matching qhat; pass --no_sets")
  off = predict.predict_to_file(bare, _npz(), tmp_path / "d.csv", temperature=False,
                                abstain=False, sets=False, progress=False)
  assert off["abstained"] == 0 and off["threshold"] is None
  assert {r["abstain"] for r in _read_csv(tmp_path / "d.csv")} == {"false"}


# ----------------------------------------------------------------------------
# Conformal prediction sets.
# ----------------------------------------------------------------------------


def _val(workdir):
  with np.load(workdir / run_files.VAL_OUTPUTS) as z:
    return z["logits"], z["label"]


def _label_free_npz(tmp_path, name, source):
  """The test images of a shared npz without its labels (another label space)."""
  with np.load(source) as z:
    images = z["test_images"]
  path = tmp_path / f"{name}.npz"
  np.savez(path, test_images=images)
  return path


def test_sets_hold_the_prediction_and_match_the_library(run_dir, tmp_path):
  results = _results(run_dir)
  names = list(results["class_names"])
  val_logits, val_labels = _val(run_dir)
  run = runs.load(run_dir)
  logits = predict.predict_logits(run, inputs_lib.collect_inputs(_npz()),
                                  progress=False).logits
  for method, temperature, ext in (("aps", True, "jsonl"), ("lac", True, "csv"),
                                   ("aps", False, "csv")):
    out = tmp_path / f"{method}_{temperature}.{ext}"
    summary = predict.predict_to_file(run_dir, _npz(), out, conformal_method=method,
                                      temperature=temperature, abstain=False,
                                      progress=False)
    t = results["temperature"] if temperature else 1.0
    qhat = conformal.calibrate(selective.probabilities(val_logits, t), val_labels, method,
                               0.1)  # the run's config.conformal_alpha
    if temperature:  # what the final evaluation stored for the same probabilities
      assert qhat == pytest.approx(results["conformal"][method]["qhat"], abs=1e-12)
    probs = selective.probabilities(logits, t)
    masks = conformal.prediction_sets(probs, qhat, method)
    if ext == "csv":
      rows = _read_csv(out)
      sets = [r["prediction_set"].split("|") if r["prediction_set"] else [] for r in rows]
    else:
      rows = [json.loads(l) for l in out.read_text().splitlines()]
      sets = [r["prediction_set"] for r in rows]
    assert len(sets) == 1281 and any(len(x) > 1 for x in sets)
    for row, got, mask, p in zip(rows, sets, masks, probs):
      assert got == [names[j] for j in np.argsort(-p, kind="stable") if mask[j]]
      if got:  # a non-empty set holds the prediction, first
        assert got[0] == row["prediction"] and row["prediction"] in got
    info = summary["sets"]
    assert (info["method"], info["alpha"]) == (method, 0.1)
    assert info["mean_size"] == pytest.approx(masks.sum(1).mean(), abs=1e-12)
    assert info["empty"] == int(np.sum(masks.sum(1) == 0))
    labels = np.load(_npz())["test_labels"].reshape(-1)
    assert info["coverage"] == pytest.approx(masks[np.arange(1281), labels].mean(), abs=1e-12)
    line = predict.summary_line(summary)
    assert f"; {method.upper()} sets at 90.0% target coverage: mean size " \
           f"{info['mean_size']:.2f}" in line
  other = predict.predict_to_file(run_dir, _npz(), tmp_path / "a.csv", conformal_alpha=0.3,
                                  progress=False)
  assert other["sets"]["alpha"] == 0.3 and other["sets"]["mean_size"] < info["mean_size"]
  none = predict.predict_to_file(run_dir, _npz(), tmp_path / "n.csv", sets=False,
                                 progress=False)
  assert "sets" not in none and "prediction_set" not in _read_csv(tmp_path / "n.csv")[0]
  assert " sets at " not in predict.summary_line(none)


def test_sets_cover_on_an_exchangeable_test_half(run_dir, tmp_path):
  """Calibrated on half of the test split (as a --config.calibration_split=test_half run
  saves it), the sets cover the other half at 1 - alpha within sampling error.

  The upper bound 1 - alpha + 1 / (n + 1) needs untied scores at qhat: the weak
  1-epoch model gives many labels the capped APS score 1.0 (qhat = 1 at alpha 0.1:
  every set is every class), where only the lower bound holds.
  """
  results = _results(run_dir)
  run = runs.load(run_dir)
  preds = predict.predict_logits(run, inputs_lib.collect_inputs(_npz()), progress=False)
  cal, rest = datasets.stratified_halves(preds.labels, 0)
  half = tmp_path / "test_half"
  half.mkdir()
  selective.save_val_outputs(half, preds.logits[cal], preds.labels[cal])
  half_run = dataclasses.replace(run, workdir=half)
  t = results["temperature"]
  probs = selective.probabilities(preds.logits[rest], t)
  cal_probs = selective.probabilities(preds.logits[cal], t)
  two_sided = 0
  for method in conformal.METHODS:
    score_fn = conformal.lac_scores if method == "lac" else conformal.aps_scores
    for alpha in (0.1, 0.2, 0.3):
      qhat, got_alpha = runs.conformal_threshold(half_run, method=method, alpha=alpha)
      assert got_alpha == alpha
      stats = conformal.evaluate_sets(conformal.prediction_sets(probs, qhat, method),
                                      preds.labels[rest])
      # Coverage given the calibration half varies with both halves' sizes.
      sigma = np.sqrt(alpha * (1 - alpha) * (1 / len(rest) + 1 / len(cal)))
      assert stats["coverage"] > 1 - alpha - 3 * sigma, (method, alpha, stats)
      if np.sum(score_fn(cal_probs, preds.labels[cal]) == qhat) == 1:
        two_sided += 1
        assert stats["coverage"] < 1 - alpha + 1 / (len(cal) + 1) + 3 * sigma, (
            method, alpha, stats)
        assert stats["mean_size"] < run.num_classes
  assert two_sided >= 3  # every LAC level at least


# ----------------------------------------------------------------------------
# The out-of-distribution flag.
# ----------------------------------------------------------------------------


def test_far_ood_scans_are_flagged_far_more_often(run_dir, tmp_path):
  results = _results(run_dir)
  assert (run_dir / run_files.OOD_FIT).is_file()
  inside = predict.predict_to_file(run_dir, _npz(), tmp_path / "in.csv", progress=False)
  flags = inside["ood"]
  assert (flags["score"], flags["source"], flags["tpr"]) == ("mahalanobis", "ood_fit.npz",
                                                             0.95)
  assert flags["threshold"] == results["ood"]["thresholds"]["mahalanobis"]
  rows = _read_csv(tmp_path / "in.csv")
  score = np.array([float(r["ood_score"]) for r in rows])
  assert [r["ood"] == "true" for r in rows] == list(score < flags["threshold"])
  in_frac = flags["flagged"] / 1281  # the final evaluation's own test split
  assert in_frac == pytest.approx(results["ood"]["test_flagged"]["mahalanobis"], abs=1.5e-3)
  assert (f"; {flags['flagged']} flagged out-of-distribution (mahalanobis, threshold "
          f"keeps 95% of val)") in predict.summary_line(inside)
  flagged, count = 0, 0
  for name, source in (("chest_ct", "chest_ct/chest_ct_28.npz"),
                       ("retinamnist", "retinamnist/retinamnist.npz")):
    path = paths.data_root() / source
    if not path.is_file():
      pytest.skip(f"real data not found at {path}")
    out = predict.predict_to_file(run_dir, _label_free_npz(tmp_path, name, path),
                                  tmp_path / f"{name}.csv", progress=False)
    flagged, count = flagged + out["ood"]["flagged"], count + out["count"]
  out_frac = flagged / count
  # The 1-epoch model flags about 12% of the test split (another source folder than
  # val) and about 23% of chest CT and retina photos: twice as often, far beyond
  # sampling error (a two-proportion z above 3; real value about 6).
  se = np.sqrt(out_frac * (1 - out_frac) / count + in_frac * (1 - in_frac) / 1281)
  assert (out_frac - in_frac) / se > 3, (out_frac, in_frac)


def test_ood_scores_options_and_older_runs(run_dir, tmp_path, capsys):
  results = _results(run_dir)
  val_logits, _ = _val(run_dir)
  logits = _reference_test_logits(run_dir)[0]
  for score, fn in (("energy", ood.energy), ("msp", ood.msp)):
    out = tmp_path / f"{score}.jsonl"
    summary = predict.predict_to_file(run_dir, _npz(), out, ood_score=score,
                                      temperature=False, progress=False)
    assert summary["ood"]["threshold"] == results["ood"]["thresholds"][score]
    got = np.array([json.loads(l)["ood_score"] for l in out.read_text().splitlines()])
    np.testing.assert_allclose(got, fn(logits), atol=1e-5)  # raw logits, whatever T
  assert _error(capsys, run_dir, _npz(), tmp_path / "e.csv", ood_score="knn") == (
      "error: --ood_score: expected one of mahalanobis, energy, msp, got 'knn'")
  assert _error(capsys, run_dir, _npz(), tmp_path / "e.csv", conformal_method="raps") == (
      "error: --conformal: expected one of lac, aps, got 'raps'")
  assert _error(capsys, run_dir, _npz(), tmp_path / "e.csv", conformal_alpha=1.5) == (
      "error: --conformal_alpha: expected a value in (0, 1), got 1.5")

  # A run from before OOD scores: energy, thresholded on its saved val logits.
  old = tmp_path / "old"
  shutil.copytree(run_dir, old)
  (old / run_files.OOD_FIT).unlink()
  summary = predict.predict_to_file(old, _npz(), tmp_path / "old.csv", progress=False)
  flags = summary["ood"]
  assert (flags["score"], flags["source"]) == ("energy", "val_outputs.npz")
  assert flags["threshold"] == ood.threshold_at_tpr(ood.energy(val_logits), 0.95)
  assert flags["threshold"] == pytest.approx(results["ood"]["thresholds"]["energy"],
                                             abs=1e-9)
  line = _error(capsys, old, _npz(), tmp_path / "e.csv", ood_score="mahalanobis")
  assert line == (f"error: --ood_score=mahalanobis: workdir {old} has no ood_fit.npz (a "
                  f"run from before OOD scores); use --ood_score=energy or msp")
  (old / run_files.VAL_OUTPUTS).unlink()
  line = _error(capsys, old, _npz(), tmp_path / "e.csv", sets=False)
  assert line == (f"error: workdir {old}: neither ood_fit.npz nor val_outputs.npz to set "
                  f"an OOD threshold from; pass --no_ood")
  off = predict.predict_to_file(old, _npz(), tmp_path / "off.csv", sets=False, ood=False,
                                progress=False)
  assert "ood" not in off and "flagged" not in predict.summary_line(off)
  header = _read_csv(tmp_path / "off.csv")[0]
  assert "ood" not in header and "ood_score" not in header
  assert not (tmp_path / "e.csv").exists()


# ----------------------------------------------------------------------------
# DICOM.
# ----------------------------------------------------------------------------


def _testdata(name):
  from pydicom.data import get_testdata_file  # pylint: disable=import-outside-toplevel
  path = get_testdata_file(name)
  if path is None:
    pytest.skip(f"pydicom test file {name} not shipped with this pydicom")
  return pathlib.Path(path)


def test_dicom_files_decode_and_classify(run_dir, tmp_path, jpegs):
  scans = tmp_path / "scans"
  (scans / "ct").mkdir(parents=True)
  shutil.copy(_testdata("CT_small.dcm"), scans / "ct" / "CT_small.dcm")
  shutil.copy(_testdata("MR_small.dcm"), scans / "slice0001")  # no suffix: DICM preamble
  (scans / "mri.jpg").write_bytes(jpegs[0])
  (scans / "notes.txt").write_text("not an input")
  out = tmp_path / "dicom.csv"
  summary = predict.predict_to_file(run_dir, scans, out, progress=False)
  rows = _read_csv(out)
  assert [r["path"] for r in rows] == [str(scans / "ct" / "CT_small.dcm"),
                                       str(scans / "mri.jpg"), str(scans / "slice0001")]
  assert summary["count"] == 3 and "label" not in rows[0]
  names = _results(run_dir)["class_names"]
  for r in rows:
    assert r["prediction"] in names
    assert sum(float(r[f"p_{c}"]) for c in names) == pytest.approx(1.0, abs=1e-5)
    assert r["prediction_set"].split("|")[0] == r["prediction"]
  # A CT slice and a 64 px MR crop are not brain MRI slices like the training images:
  # confident or not, the Mahalanobis score flags them.
  assert [r["ood"] for r in rows] == ["true", rows[1]["ood"], "true"]
  # A single DICOM file as input.
  one = predict.predict_to_file(run_dir, _testdata("MR_small.dcm"), tmp_path / "one.csv",
                                progress=False)
  assert one["count"] == 1
  assert _read_csv(tmp_path / "one.csv")[0]["p_glioma"] == rows[2]["p_glioma"]


def test_dicom_display_mapping(tmp_path):
  ct = pydicom.dcmread(_testdata("CT_small.dcm"))  # no window: min-max after rescale
  image = dicom.read_dicom(_testdata("CT_small.dcm"))
  assert image.dtype == np.uint8 and image.shape == (128, 128)
  assert image.min() == 0 and image.max() == 255
  ct.RescaleSlope, ct.RescaleIntercept = 2, -1024
  ct.WindowCenter, ct.WindowWidth = [40, 400], [400, 1500]  # first value counts
  ct.save_as(tmp_path / "ct_window.dcm")
  values = ct.pixel_array.astype(np.float64) * 2 - 1024
  c, w = 40.0, 400.0
  want = np.clip((values - (c - 0.5)) / (w - 1) + 0.5, 0, 1) * 255
  got = dicom.read_dicom(tmp_path / "ct_window.dcm").astype(np.float64)
  assert np.max(np.abs(got - np.rint(want))) <= 1
  assert (got[values <= c - 0.5 - (w - 1) / 2] == 0).all()
  ct.PhotometricInterpretation = "MONOCHROME1"
  ct.save_as(tmp_path / "ct_inverted.dcm")
  np.testing.assert_array_equal(dicom.read_dicom(tmp_path / "ct_inverted.dcm"), 255 - got)
  rgb = dicom.read_dicom(_testdata("SC_rgb_rle_16bit.dcm"))
  assert rgb.shape == (100, 100, 3) and rgb.dtype == np.uint8


def test_dicom_volume_and_undecodable_syntax_are_refused(run_dir, tmp_path, capsys):
  volume = _testdata("rtdose.dcm")
  assert int(pydicom.dcmread(volume).NumberOfFrames) > 1
  line = _error(capsys, run_dir, volume, tmp_path / "v.csv")
  assert line == (f"error: DICOM file {volume}: multi-frame volume (15 frames); "
                  f"predict takes 2D images, so export the slices as single-frame files")
  lossy = _testdata("JPEG-lossy.dcm")  # 12-bit JPEG: no installed decoder
  line = _error(capsys, run_dir, lossy, tmp_path / "j.csv")
  assert line.startswith(f"error: DICOM file {lossy}: cannot decode transfer syntax "
                         f"'JPEG Extended (Process 2 and 4)'")
  small = _testdata("SC_rgb_small_odd.dcm")
  line = _error(capsys, run_dir, small, tmp_path / "s.csv")
  assert line == f"error: image {small}: too small (3x3 pixels; at least 8 per side)"
  assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------


@pytest.fixture
def bad_folder(tmp_path, jpegs):
  """Two good scans and four bad files, in this sorted order."""
  root = tmp_path / "in"
  root.mkdir()
  gray = np.asarray(Image.open(io.BytesIO(jpegs[1])).convert("L"))
  (root / "a_good.jpg").write_bytes(jpegs[0])
  Image.fromarray(gray).save(root / "b_good.png")
  png = (root / "b_good.png").read_bytes()
  (root / "c_truncated.png").write_bytes(png[:len(png) // 2])
  (root / "d_text.png").write_text("this is not an image")
  rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
  Image.fromarray(rgba, "RGBA").save(root / "e_rgba.png")
  Image.fromarray(gray[:5, :5]).save(root / "f_tiny.png")
  return root


def test_bad_files_stop_with_one_line_or_are_skipped(run_dir, bad_folder, tmp_path, capsys):
  out = tmp_path / "out" / "p.csv"
  out.parent.mkdir()
  line = _error(capsys, run_dir, bad_folder, out)
  assert line.startswith(f"error: cannot decode image {bad_folder / 'c_truncated.png'}: ")
  assert not list(out.parent.iterdir())  # nothing half-written
  expected = {
      "d_text.png": f"error: cannot decode image {bad_folder / 'd_text.png'}: cannot "
                    f"identify image file",
      "e_rgba.png": f"error: image {bad_folder / 'e_rgba.png'}: expected 1 (grayscale) "
                    f"or 3 (RGB) channels, got 4 (mode RGBA)",
      "f_tiny.png": f"error: image {bad_folder / 'f_tiny.png'}: too small (5x5 pixels; "
                    f"at least 8 per side)",
  }
  for name, want in expected.items():
    assert _error(capsys, run_dir, bad_folder / name, out).startswith(want)
  assert not list(out.parent.iterdir())

  skipped = []
  summary = predict.predict_to_file(run_dir, bad_folder, out, skip_bad=True,
                                    progress=False, log=skipped.append)
  assert summary["skipped"] == 4 and summary["count"] == 2
  assert len(skipped) == 4 and all(m.startswith("skipped: ") for m in skipped)
  assert [pathlib.Path(r["path"]).name for r in _read_csv(out)] == ["a_good.jpg",
                                                                    "b_good.png"]


def test_entry_point_skip_bad(run_dir, bad_folder, tmp_path):
  out = tmp_path / "p.jsonl"
  proc = subprocess.run(
      [sys.executable, str(ENTRY), f"--workdir={run_dir}", f"--input={bad_folder}",
       f"--output={out}", "--skip_bad", "--cpu_devices=1"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "skipped 4 bad input(s)" in proc.stderr.splitlines()
  assert proc.stdout.startswith("predicted 2 images with ols / tiny_cnn (T=")
  assert len(out.read_text().splitlines()) == 2
  proc = subprocess.run(
      [sys.executable, str(ENTRY), f"--workdir={run_dir}", f"--input={bad_folder}",
       f"--output={tmp_path / 'q.csv'}", "--cpu_devices=1"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip().startswith(
      f"error: cannot decode image {bad_folder / 'c_truncated.png'}: ")
  assert not (tmp_path / "q.csv").exists()
  proc = subprocess.run(
      [sys.executable, str(ENTRY), f"--workdir={run_dir}", f"--input={bad_folder}",
       f"--output={tmp_path / 'r.csv'}", "--ood_score=knn", "--cpu_devices=1"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "error: --ood_score: expected one of mahalanobis, energy, msp, got 'knn'"]
  assert not (tmp_path / "r.csv").exists()


def test_unfinished_workdir_and_wrong_inputs(run_dir, tmp_path, capsys):
  out = tmp_path / "p.csv"
  partial = tmp_path / "partial"
  partial.mkdir()
  shutil.copy(run_dir / "config.json", partial)
  assert _error(capsys, partial, _npz(), out) == (
      f"error: workdir {partial}: no results.json (the run has not finished; rerun "
      f"its training command to finish it)")
  shutil.copy(run_dir / "results.json", partial)
  assert _error(capsys, partial, _npz(), out).startswith(
      f"error: workdir {partial}: no checkpoint under ")
  assert _error(capsys, tmp_path / "nowhere", _npz(), out) == (
      f"error: workdir {tmp_path / 'nowhere'}: not found")

  keys = tmp_path / "keys.npz"
  np.savez(keys, images=np.zeros((2, 28, 28), np.uint8))
  assert _error(capsys, run_dir, keys, out) == (
      f"error: npz {keys}: no 'test_images' array (keys: images); expected the "
      f"MedMNIST layout <split>_images[, <split>_labels]")
  assert _error(capsys, run_dir, _npz(), out, split="holdout").startswith(
      f"error: npz {_npz()}: no 'holdout_images' array (keys: class_names, ")
  rgba = tmp_path / "rgba.npz"
  np.savez(rgba, test_images=np.zeros((2, 28, 28, 4), np.uint8))
  assert _error(capsys, run_dir, rgba, out) == (
      f"error: npz {rgba}: test_images has shape (2, 28, 28, 4); expected (N, H, W) "
      f"or (N, H, W, 1 or 3)")
  notes = tmp_path / "notes.txt"
  notes.write_text("x")
  assert _error(capsys, run_dir, notes, out).startswith(
      f"error: input {notes}: unsupported file type")
  assert _error(capsys, run_dir, _npz(), tmp_path / "p.txt") == (
      f"error: --output {tmp_path / 'p.txt'}: expected a .csv or .jsonl file name")
  assert not out.exists()


# ----------------------------------------------------------------------------
# TensorBoard.
# ----------------------------------------------------------------------------


def _events(folder):
  """(step, tag, value or 'image') of every summary in the event files."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  out = []
  for path in sorted(folder.glob("events.out.tfevents.*")):
    data, i = path.read_bytes(), 0
    while i < len(data):
      (n,) = struct.unpack("<Q", data[i:i + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[i + 12:i + 12 + n])
      i += 12 + n + 4
      for v in event.summary.value:
        out.append((event.step, v.tag,
                    v.simple_value if v.HasField("simple_value") else "image"))
  return out


def test_tensorboard_mirrors_metrics_jsonl(run_dir):
  pytest.importorskip("tensorboardX")
  events = _events(run_dir / "tensorboard")
  scalars = {(s, t): v for s, t, v in events if v != "image"}
  records = logging_utils.read_metrics(run_dir / "metrics.jsonl")
  want = {(r["step"], k): float(v) for r in records for k, v in r.items()
          if k != "step" and isinstance(v, (int, float))}
  assert set(scalars) == set(want)
  for key, value in want.items():
    assert scalars[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key
  last = records[-1]["step"]
  images = {(s, t) for s, t, v in events if v == "image"}
  assert images == {(last, "eval/reliability"), (last, "ols/soft_labels")}


def test_tensorboard_failure_warns_once_and_stops(tmp_path):
  pytest.importorskip("tensorboardX")
  from ols_jax import tensorboard_log  # pylint: disable=import-outside-toplevel
  blocker = tmp_path / "file"
  blocker.write_text("x")
  stream = io.StringIO()
  writer = tensorboard_log.EventWriter(blocker / "tb", stream=stream)
  writer.scalars({"step": 1, "train/loss": 1.0})
  writer.scalars({"step": 2, "train/loss": 0.5})
  writer.close()
  assert writer.failed
  lines = stream.getvalue().splitlines()
  assert len(lines) == 1 and lines[0].startswith(
      f"warning: TensorBoard logging to {blocker / 'tb'} stopped: ")


def test_labels_of_another_class_space_keep_their_names(run_dir, tmp_path, capsys):
  """An npz whose class_names differ from the run's is named, never scored."""
  with np.load(_npz()) as z:
    images, labels = z["test_images"][:40], z["test_labels"][:40]
  other = ("adenocarcinoma", "large_cell", "normal", "squamous")
  path = tmp_path / "other.npz"
  np.savez(path, test_images=images, test_labels=labels, class_names=np.array(other))
  summary = predict.predict_to_file(run_dir, path, tmp_path / "other.csv", progress=False)
  rows = _read_csv(tmp_path / "other.csv")
  assert [r["label"] for r in rows] == [other[int(i)] for i in labels.reshape(-1)]
  assert {r["prediction"] for r in rows} <= set(_results(run_dir)["class_names"])
  assert "accuracy" not in summary and "coverage" not in summary.get("sets", {})
  assert summary["foreign_labels"] == list(other)
  line = predict.summary_line(summary)
  assert "not the run's: accuracy and coverage not scored" in line
  assert "% on all" not in line
  # The same images under the run's own names are scored as usual.
  same = tmp_path / "same.npz"
  np.savez(same, test_images=images, test_labels=labels,
           class_names=np.array(_results(run_dir)["class_names"]))
  scored = predict.predict_to_file(run_dir, same, tmp_path / "same.csv", progress=False)
  assert "foreign_labels" not in scored and 0.0 <= scored["accuracy"] <= 1.0
  # Labels beyond the file's own names are refused with one line.
  bad = tmp_path / "bad.npz"
  np.savez(bad, test_images=images, test_labels=labels + 4, class_names=np.array(other))
  with pytest.raises(data_lib.DataError, match="class_names has 4 names"):
    predict.predict_to_file(run_dir, bad, tmp_path / "bad.csv", progress=False)


def test_a_workdir_of_a_retired_method_still_predicts(run_dir, tmp_path):
  """Inference builds no training loss: a config naming the retired ``tfkd`` still loads."""
  old = tmp_path / "tfkd_run"
  shutil.copytree(run_dir, old)
  cfg = json.loads((old / "config.json").read_text())
  cfg["method"] = "tfkd"
  (old / "config.json").write_text(json.dumps(cfg))
  a = predict.predict_to_file(run_dir, _npz(), tmp_path / "a.jsonl", progress=False)
  b = predict.predict_to_file(old, _npz(), tmp_path / "b.jsonl", progress=False)
  assert a["ood"] == b["ood"]
  assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()


def test_inference_builds_no_loss(monkeypatch):
  """DataParallel(spec=None), what runs.on_devices builds, constructs no LossSpec and has
  no train step (the predict tests above open real workdirs through it)."""
  from ols_jax import losses  # pylint: disable=import-outside-toplevel

  def refuse(*_, **__):
    raise AssertionError("inference built a LossSpec")

  monkeypatch.setattr(losses, "LossSpec", refuse)
  dp = parallel.DataParallel("jit", None, jax.devices()[:1])
  with pytest.raises(TypeError, match="built for inference"):
    dp.train(None, None)
