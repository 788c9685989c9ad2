"""End-to-end runs of the main job on real brain MRI images, every method."""

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from ols_jax import host
from ols_jax import logging_utils
from ols_jax import models
from ols_jax import train

pytestmark = pytest.mark.slow  # whole runs or subprocesses: the full tier only

REPO = pathlib.Path(__file__).resolve().parent.parent
METHODS = ("ce", "ls", "ls_kminus1", "tfkd_reg", "tfkd_paper", "kd", "ols", "focal", "flsd53", "mbls")


def smoke_config(**overrides):
  from experiments.configs import smoke  # pylint: disable=import-outside-toplevel
  c = smoke.get_config()
  c.progress = False
  c.tsne_samples = 200
  c.batch_size = 256
  c.num_devices = 1  # multi-device equality is covered by tests/test_steps.py
  for k, v in overrides.items():
    c[k] = v
  return c


def test_make_model_from_config_passes_the_options_each_model_uses():
  resnet = models.from_config(smoke_config(model="resnet18", dropout_rate=0.3,
                                           zero_init_residual=True), 4, bn_axis_name="d")
  assert (resnet.dropout_rate, resnet.zero_init_residual, resnet.bn_axis_name) == (
      0.3, True, "d")
  vgg = models.from_config(smoke_config(model="vgg19", zero_init_residual=True), 4,
                           bn_axis_name="d")
  assert (vgg.dropout_rate, vgg.zero_init_residual, vgg.bn_axis_name) == (0.5, False, None)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, request):
  root = tmp_path_factory.mktemp("runs")
  out = {}
  for method in METHODS:
    extra = {"teacher_workdir": str(root / "ce")} if method == "kd" else {}
    state, summary = train.train_and_evaluate(
        smoke_config(method=method, **extra), root / method)
    out[method] = (root / method, state, summary)
  return out


@pytest.mark.parametrize("method", METHODS)
def test_run_finishes_and_leaves_every_artifact(runs, method):
  workdir, state, summary = runs[method]
  for name in ("config.json", "metrics.jsonl", "results.json", "report.md"):
    assert (workdir / name).is_file(), name
  json.loads((workdir / "config.json").read_text())
  results = json.loads((workdir / "results.json").read_text())
  assert results["method"] == method and results["split_sizes"]["test"] == 1281
  assert (workdir / "checkpoints" / "last").is_dir()
  assert (workdir / "checkpoints" / "best").is_dir()
  figures = {p.name for p in (workdir / "figures").glob("*.png")}
  expected = {"reliability_test.png", "reliability_test_ts.png", "training_curves.png",
              "tsne_test.png"}
  if method == "ols":
    expected |= {"soft_labels.png", "soft_label_entropy.png"}
  assert expected <= figures
  for png in figures:
    assert (workdir / "figures" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  report = (workdir / "report.md").read_text()
  assert "Top-1 err" in report and "temperature-scaled" in report
  assert int(jax.device_get(state.step)) == results["final_step"]


@pytest.mark.parametrize("method", METHODS)
def test_loss_falls_and_metrics_in_range(runs, method):
  workdir, _, summary = runs[method]
  records = logging_utils.read_metrics(workdir / "metrics.jsonl")
  losses = [r["train/loss"] for r in records if "train/loss" in r]
  assert losses[-1] < losses[0]
  epochs = [r for r in records if "eval/ece" in r]
  assert len(epochs) == 2
  for split in ("val", "test", "test_ts"):
    m = summary[split]
    for key in ("top1_error", "top5_error", "ece", "adaptive_ece", "mce",
                "classwise_ece", "auroc_macro"):
      assert 0.0 <= m[key] <= 1.0, (split, key, m[key])
    assert 0.0 <= m["brier"] <= 2.0 and m["nll"] > 0
    assert -1.0 <= m["calibration_gap"] <= 1.0
  # A trained model beats chance (25%) on the 4-class test set.
  assert summary["test"]["top1_error"] < 0.75
  # Temperature scaling does not change the argmax.
  assert summary["test_ts"]["top1_error"] == pytest.approx(summary["test"]["top1_error"])
  assert summary["temperature"] > 0
  emb = summary["embedding"]
  assert -1 <= emb["silhouette"] <= 1 and 0 <= emb["knn_accuracy"] <= 1


def test_soft_labels_are_distributions(runs):
  workdir, state, summary = runs["ols"]
  files = sorted((workdir / "soft_labels").glob("epoch_*.npy"))
  assert [f.name for f in files] == ["epoch_000_initial.npy", "epoch_001.npy",
                                     "epoch_002.npy"]
  for f in files:
    s = np.load(f)
    assert s.shape == (4, 4) and (s >= 0).all()
    np.testing.assert_allclose(s.sum(-1), 1.0, rtol=1e-5)
  # The learned rows are peaked on the diagonal for classes the model gets right.
  s = np.load(files[-1])
  assert np.mean(np.argmax(s, -1) == np.arange(4)) >= 0.5
  assert len(summary["soft_label_row_entropy"]) == 2


def test_resuming_a_finished_run_is_a_noop(runs):
  workdir, state, summary = runs["ols"]
  before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()}
  state2, summary2 = train.train_and_evaluate(smoke_config(method="ols"), workdir)
  assert summary2 == json.loads((workdir / "results.json").read_text())
  assert summary2["test"] == summary["test"]
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params),
               jax.device_get(state2.params))
  after = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()}
  changed = [str(p.relative_to(workdir)) for p in after if before.get(p) != after[p]]
  # Only config.json / metrics.jsonl may be rewritten (same content).
  assert set(changed) <= {"config.json", "metrics.jsonl"}, changed


def test_resuming_a_half_finished_run_continues(runs, tmp_path):
  src, _, summary = runs["ols"]
  work = tmp_path / "half"
  shutil.copytree(src, work)
  # Drop everything produced by epoch 2: its checkpoint and the final outputs.
  last = sorted((work / "checkpoints" / "last").iterdir(), key=lambda p: int(p.name))
  shutil.rmtree(last[-1])
  best = work / "checkpoints" / "best"
  for p in list(best.iterdir()):
    if p.name == last[-1].name:
      shutil.rmtree(p)
  for name in ("results.json", "report.md"):
    (work / name).unlink()
  (work / "soft_labels" / "epoch_002.npy").unlink()
  state, resumed = train.train_and_evaluate(smoke_config(method="ols"), work)
  assert resumed["final_step"] == summary["final_step"]
  assert resumed["test"] == summary["test"]
  np.testing.assert_array_equal(np.load(work / "soft_labels" / "epoch_002.npy"),
                                np.load(src / "soft_labels" / "epoch_002.npy"))
  records = logging_utils.read_metrics(work / "metrics.jsonl")
  assert [r["epoch"] for r in records if "eval/ece" in r] == [1, 2]


@pytest.mark.parametrize("mode", ["jit", "pmap"])
def test_two_device_runs_match_one_device(runs, tmp_path, mode):
  """The whole loop on 2 devices (jit-sharded or pmap) reproduces 1 device."""
  _, _, reference = runs["ols"]
  _, summary = train.train_and_evaluate(
      smoke_config(method="ols", num_devices=2, parallel=mode), tmp_path / mode)
  assert summary["device_count"] == 2
  assert summary["host"]["devices"] >= 2 and summary["host"]["jax"] == jax.__version__
  assert summary["host"]["cpu"] and summary["host"]["backend"] == jax.default_backend()
  assert summary["final_step"] == reference["final_step"]
  for key in ("top1_error", "ece", "nll"):
    assert summary["test"][key] == pytest.approx(reference["test"][key], abs=2e-3)
  np.testing.assert_allclose(np.load(tmp_path / mode / "soft_labels" / "epoch_002.npy"),
                             np.load(runs["ols"][0] / "soft_labels" / "epoch_002.npy"),
                             atol=1e-4)


def test_trust_evaluation_in_results(tmp_path):
  """A run on the calibration split carries its config, conformal sets, OOD
  scores against far-OOD sets and the corruption suite in results.json."""
  from conftest import require_dataset  # pylint: disable=import-outside-toplevel
  for name in ("brain_tumor_mri", "chest_ct", "retinamnist"):
    require_dataset(name)
  c = smoke_config(method="flsd53", calibration_split="test_half", shift_eval=True,
                   ood_sets="chest_ct,retinamnist", figures=True, tsne_samples=0)
  _, summary = train.train_and_evaluate(c, tmp_path / "run")
  saved = json.loads((tmp_path / "run" / "results.json").read_text())
  assert saved["config"]["method"] == "flsd53"
  assert saved["config"]["calibration_split"] == "test_half"
  sizes = saved["split_sizes"]
  assert sizes["val"] + sizes["test"] == 1281 and sizes["val_dataset"] == 531
  assert set(saved["val_dataset"]) >= {"top1_error", "ece", "nll"}
  for m in ("lac", "aps"):
    r = saved["conformal"][m]
    assert 0.0 <= r["coverage"] <= 1.0 and r["mean_size"] >= 0.0
  ood = saved["ood"]
  assert set(ood["sets"]) == {"chest_ct", "retinamnist"}
  assert ood["set_sizes"]["retinamnist"] == 400
  for name in ood["sets"]:
    assert set(ood["sets"][name]) == {"msp", "energy", "mahalanobis"}
  # The thresholds keep at least 95% of the validation split.
  assert all(v <= 0.05 + 1e-9 for v in ood["val_flagged"].values())
  assert (tmp_path / "run" / "ood_fit.npz").exists()
  shift = saved["shift"]
  assert len(shift) == 1 + 8 * 5 and shift[0]["corruption"] == "none"
  np.testing.assert_allclose(shift[0]["top1_error"], saved["test"]["top1_error"], atol=1e-9)
  assert (tmp_path / "run" / "figures" / "shift.png").exists()
  assert "Prediction sets" in (tmp_path / "run" / "report.md").read_text()


def test_host_names_the_cpu_and_the_devices(tmp_path):
  info = tmp_path / "cpuinfo"
  info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n")
  assert host.cpu_model(str(info)) == "AMD EPYC 7B13"
  assert host.cpu_model(str(tmp_path / "missing"))  # falls back to a non-empty name
  facts = host.describe()
  assert facts["devices"] == len(jax.devices()) and facts["jax"] == jax.__version__
  assert facts["device_kind"] == jax.devices()[0].device_kind
  assert 1 <= facts["affinity_cpus"] <= facts["os_cpu_count"]
