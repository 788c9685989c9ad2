"""Reliability: exact resume after SIGKILL, clear one-line errors, no NaNs saved.

The kill tests run the real entry point (``experiments/radimagenet.py``) in a
subprocess on a small version of the smoke config (chest_ct, 3 epochs of 15
steps) and compare the end state, bit for bit, with one uninterrupted
reference run. They are the slow part of this file (select them with
``-k kill``); everything else runs in-process where a subprocess is not needed.
"""

import contextlib
import importlib.util
import io
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image
import pytest

import fault_entry
from ols_jax import checkpointing
from ols_jax import cli
from ols_jax import data as data_lib
from ols_jax import hooks as hooks_lib
from ols_jax import paths
from ols_jax import train
from ols_jax.logging_utils import read_metrics
from ols_jax.loop_state import LoopState

pytestmark = pytest.mark.slow  # whole runs or subprocesses: the full tier only

REPO = pathlib.Path(__file__).resolve().parents[1]
ENTRY = REPO / "experiments" / "radimagenet.py"
FAULT_ENTRY = REPO / "tests" / "fault_entry.py"  # ENTRY with a crash hook
SMOKE = REPO / "experiments" / "configs" / "smoke.py"

# chest_ct: 493 train images -> 15 steps of 32 per epoch, 45 steps in all;
# checkpoints at steps 7, 14, 15 (epoch end), 21, 28, 30, 35, 42, 45.
SMALL = dict(dataset="chest_ct", batch_size=32, num_epochs=3,
             checkpoint_every_steps=7, log_every_steps=5, progress=False,
             figures=False, tsne_samples=0)
VOLATILE_METRICS = ("steps_per_second", "images_per_second")


def _flags(**overrides) -> list[str]:
  values = dict(SMALL, **overrides)
  return [f"--config={SMOKE}"] + [f"--config.{k}={v}" for k, v in values.items()]


def _env(devices: int = 1, **extra) -> dict[str, str]:
  env = dict(os.environ)
  env.pop(fault_entry.CRASH_ENV_VAR, None)
  env.pop(fault_entry.NAN_ENV_VAR, None)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
  env["JAX_PLATFORMS"] = "cpu"
  env.update(extra)
  return env


def _run_entry(workdir, *, crash: str = "", devices: int = 1, timeout: float = 300,
               **overrides) -> subprocess.CompletedProcess:
  extra = {fault_entry.CRASH_ENV_VAR: crash} if crash else {}
  return subprocess.run(
      [sys.executable, str(FAULT_ENTRY if crash else ENTRY), f"--workdir={workdir}"]
      + _flags(**overrides),
      env=_env(devices, **extra), cwd=REPO, capture_output=True, text=True,
      timeout=timeout, check=False)


def _smoke_config(**overrides):
  spec = importlib.util.spec_from_file_location("smoke_config", SMOKE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.update(dict(SMALL, **overrides))
  return config


def _cli_error(capsys, config, workdir, hooks=None) -> str:
  """Runs ``cli.run_main`` in-process; returns its one ``error: ...`` line."""
  capsys.readouterr()
  with pytest.raises(SystemExit) as exc:
    cli.run_main(config, str(workdir), hooks=hooks)
  assert exc.value.code == 2
  err = capsys.readouterr().err
  lines = [l for l in err.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1, err
  assert "Traceback" not in err
  return lines[0]


# ----------------------------------------------------------------------------
# Snapshots of a workdir, for bit-exact comparison.
# ----------------------------------------------------------------------------


def _steps(folder: pathlib.Path) -> list[int]:
  if not folder.is_dir():
    return []
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def _load_checkpoint(step_dir: pathlib.Path):
  state = ocp.StandardCheckpointer().restore(step_dir / "state")
  meta = json.loads((step_dir / "meta" / "metadata").read_text())
  meta.pop("elapsed_s", None)  # wall-clock, not a result
  return state, meta


def _snapshot(workdir: pathlib.Path) -> dict:
  snap = {"checkpoints": {}, "soft_labels": {}}
  for sub in ("last", "best"):
    for step in _steps(workdir / "checkpoints" / sub):
      snap["checkpoints"][f"{sub}/{step}"] = _load_checkpoint(
          workdir / "checkpoints" / sub / str(step))
  for f in sorted((workdir / "soft_labels").glob("*.npy")):
    snap["soft_labels"][f.name] = np.load(f)
  snap["metrics"] = [{k: v for k, v in r.items() if k not in VOLATILE_METRICS}
                     for r in read_metrics(workdir / "metrics.jsonl")]
  results = json.loads((workdir / "results.json").read_text())
  results.pop("wall_time_s")
  snap["results"] = results
  return snap


def _assert_trees_equal(a, b, where: str):
  la, ta = jax.tree_util.tree_flatten_with_path(a)
  lb, tb = jax.tree_util.tree_flatten_with_path(b)
  assert ta == tb, f"{where}: tree structure differs"
  for (path, x), (_, y) in zip(la, lb):
    assert np.array_equal(np.asarray(x), np.asarray(y)), (
        f"{where}{jax.tree_util.keystr(path)} differs")


def _assert_same_run(got: dict, want: dict):
  assert sorted(got["checkpoints"]) == sorted(want["checkpoints"])
  for name, (state, meta) in want["checkpoints"].items():
    _assert_trees_equal(got["checkpoints"][name][0], state, f"checkpoint {name}")
    assert got["checkpoints"][name][1] == meta, f"checkpoint {name} meta"
  assert sorted(got["soft_labels"]) == sorted(want["soft_labels"])
  for name, s in want["soft_labels"].items():
    assert np.array_equal(got["soft_labels"][name], s), name
  assert got["metrics"] == want["metrics"]
  assert got["results"] == want["results"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """One uninterrupted run of the small config (also a KD teacher below)."""
  paths_ok = paths.dataset_dir("chest_ct").is_dir()
  if not paths_ok:
    pytest.skip(f"real data 'chest_ct' not found at {paths.dataset_dir('chest_ct')}")
  workdir = tmp_path_factory.mktemp("reference") / "run"
  proc = _run_entry(workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


# ----------------------------------------------------------------------------
# 1. Exact resume after SIGKILL.
# ----------------------------------------------------------------------------


def _killed(workdir, crash: str):
  proc = _run_entry(workdir, crash=crash)
  assert proc.returncode == -signal.SIGKILL, (crash, proc.returncode, proc.stderr[-3000:])


def test_kill_anywhere_then_resume_is_bit_identical(reference, tmp_path):
  workdir = tmp_path / "run"
  # (a) SIGKILL from outside at whatever moment follows the first mid-epoch
  # checkpoint (the metrics lines logged after it must be dropped).
  proc = subprocess.Popen(
      [sys.executable, str(ENTRY), f"--workdir={workdir}"] + _flags(),
      env=_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.time() + 300
  while not (workdir / "checkpoints" / "last" / "7").is_dir():
    assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    assert time.time() < deadline
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  proc.stderr.close()
  assert proc.returncode == -signal.SIGKILL
  assert not (workdir / "results.json").exists()

  # (b) At the end of epoch 2: its metrics line and soft labels are written,
  # its checkpoints are not.
  _killed(workdir, "epoch_end:2")
  assert _steps(workdir / "checkpoints" / "last")[-1] == 28
  assert (workdir / "soft_labels" / "epoch_002.npy").exists()
  assert read_metrics(workdir / "metrics.jsonl")[-1]["step"] == 30

  # (c) While checkpoint 35 is being written: orbax's temporary folder exists,
  # the rename has not happened.
  _killed(workdir, "checkpoint_write:35")
  last = workdir / "checkpoints" / "last"
  assert _steps(last)[-1] == 30
  assert any(p.name.startswith("35.") and "tmp" in p.name for p in last.iterdir())

  # (d) After the report, before results.json.
  _killed(workdir, "final:0")
  assert not (workdir / "results.json").exists()

  # (e) The same command to completion; wall_time_s counts every process's
  # time up to its last checkpoint, not only the last process's.
  before = json.loads((last / str(_steps(last)[-1]) / "meta" / "metadata").read_text())
  assert before["elapsed_s"] > 0
  started = time.time()
  proc = _run_entry(workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  wall = json.loads((workdir / "results.json").read_text())["wall_time_s"]
  assert wall >= before["elapsed_s"] and wall > 0
  assert wall <= before["elapsed_s"] + (time.time() - started) + 1.0
  assert not any("tmp" in p.name for p in last.iterdir())
  _assert_same_run(_snapshot(workdir), _snapshot(reference))


def test_loop_state_reads_the_layout_of_older_checkpoints():
  # The oldest runs saved no window_sums; every run saved these keys as a dict.
  old = {"epoch": 2, "step_in_epoch": 7, "best": 0.25, "best_epoch": 1,
         "epoch_sums": {"loss_sum": 3.5, "correct": 5.0, "count": 7.0, "finite": 1.0},
         "entropy_history": [[0.5, 0.25], [0.125, 0.0625]], "finished": False}
  loop = LoopState.from_json(old)
  assert (loop.epoch, loop.step_in_epoch, loop.best, loop.best_epoch) == (2, 7, 0.25, 1)
  assert loop.window_sums is None and loop.entropy_history[1] == (0.125, 0.0625)
  assert loop.to_json() == dict(old, window_sums=None, elapsed_s=0.0)
  assert LoopState.from_json(json.loads(json.dumps(loop.to_json()))) == loop
  assert LoopState().to_json() == {
      "epoch": 0, "step_in_epoch": 0, "best": None, "best_epoch": -1,
      "epoch_sums": None, "window_sums": None, "entropy_history": [],
      "finished": False, "elapsed_s": 0.0}
  with pytest.raises(ValueError, match=r"unknown field\(s\) \['bogus'\]"):
    LoopState.from_json(dict(old, bogus=1))


def test_kill_pmap_run_mid_epoch_then_resume_gives_the_same_s(tmp_path, shared_data):
  """Under pmap each replica holds the OLS sums of its own rows; a mid-epoch
  checkpoint keeps all of them, so the resumed S equals the uninterrupted one."""
  shared_data("chest_ct")
  run = dict(devices=2, parallel="pmap", num_epochs=1)
  proc = _run_entry(tmp_path / "ref", **run)
  assert proc.returncode == 0, proc.stderr[-3000:]
  workdir = tmp_path / "run"
  proc = _run_entry(workdir, crash="step:14", **run)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  assert _steps(workdir / "checkpoints" / "last") == [7, 14]
  state, meta = _load_checkpoint(workdir / "checkpoints" / "last" / "14")
  # S is accumulated over the correctly classified rows of both replicas.
  assert float(np.sum(state["ols"]["counts"])) == meta["epoch_sums"]["correct"]
  proc = _run_entry(workdir, **run)
  assert proc.returncode == 0, proc.stderr[-3000:]
  runs = (workdir, tmp_path / "ref")
  got, want = (np.load(w / "soft_labels" / "epoch_001.npy") for w in runs)
  assert np.max(np.abs(got - want)) <= 1e-6, np.max(np.abs(got - want))
  got, want = (json.loads((w / "results.json").read_text())["test"] for w in runs)
  assert got == pytest.approx(want, abs=1e-6)


# ----------------------------------------------------------------------------
# 2. A changed config on an existing workdir (through the entry point).
# ----------------------------------------------------------------------------


def test_config_change_is_refused_through_cli(reference, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  saved = (workdir / "config.json").read_bytes()
  proc = _run_entry(workdir, learning_rate=0.01, seed=3, log_every_steps=9)
  assert proc.returncode == 2
  assert proc.stderr.strip() == (
      f"error: workdir {workdir} holds a run with a different config: "
      f"learning_rate (0.05 -> 0.01), seed (0 -> 3); use a new workdir or pass "
      f"--config.allow_config_change=True")
  assert (workdir / "config.json").read_bytes() == saved

  # A batch that does not split over 4 devices, in a fresh workdir.
  fresh = tmp_path / "fresh"
  proc = _run_entry(fresh, devices=4, batch_size=30)
  assert proc.returncode == 2
  assert proc.stderr.strip() == ("error: config.batch_size: expected a multiple "
                                 "of the device count 4, got 30")
  assert not fresh.exists()


# ----------------------------------------------------------------------------
# 3. Non-finite values.
# ----------------------------------------------------------------------------


def _all_finite(tree) -> bool:
  return all(np.all(np.isfinite(x)) for x in jax.tree.leaves(tree)
             if np.issubdtype(np.asarray(x).dtype, np.inexact))


def test_nan_stops_run_and_last_good_checkpoint_resumes(tmp_path, capsys, shared_data):
  shared_data("chest_ct")
  workdir = tmp_path / "run"
  line = _cli_error(capsys, _smoke_config(num_epochs=1, learning_rate=9.9), workdir,
                    hooks=fault_entry.FaultHooks(nan_at_step=9))
  assert line == ("error: non-finite loss or gradient norm at step 9 (epoch 1, "
                  "detected at step 10); nothing after the last good checkpoint "
                  "was saved: lower the learning rate and rerun with "
                  "--config.allow_config_change=True")
  assert _steps(workdir / "checkpoints" / "last") == [7]
  assert _steps(workdir / "checkpoints" / "best") == []
  state, meta = _load_checkpoint(workdir / "checkpoints" / "last" / "7")
  assert _all_finite(state) and meta["step_in_epoch"] == 7
  assert [r["step"] for r in read_metrics(workdir / "metrics.jsonl")] == [5]

  sane = _smoke_config(num_epochs=1, learning_rate=0.05)
  line = _cli_error(capsys, sane, workdir)
  assert "learning_rate (9.9 -> 0.05)" in line
  sane.allow_config_change = True
  _, summary = train.train_and_evaluate(sane, workdir)
  assert summary["final_step"] == 15
  assert np.isfinite(summary["test"]["nll"])
  assert json.loads((workdir / "config.json").read_text())["learning_rate"] == 0.05


class _RecordingHooks(hooks_lib.Hooks):
  """Records each call with what the workdir holds at that moment."""

  def __init__(self, workdir):
    self.workdir = workdir
    self.calls = []

  def batch(self, global_step, batch):
    self.calls.append(("batch", global_step, batch["image"].shape))
    return batch

  def after_step(self, global_step):
    self.calls.append(("after_step", global_step,
                       _steps(self.workdir / "checkpoints" / "last")[-1:]))

  def at_epoch_end(self, epoch):
    self.calls.append(("at_epoch_end", epoch, _steps(self.workdir / "checkpoints" / "last"),
                       read_metrics(self.workdir / "metrics.jsonl")[-1]["step"]))

  def before_final_write(self):
    self.calls.append(("before_final_write", (self.workdir / "report.md").exists(),
                       (self.workdir / "results.json").exists()))


def test_hooks_are_called_at_the_named_points(tmp_path, shared_data):
  shared_data("chest_ct")
  workdir = tmp_path / "run"
  hooks = _RecordingHooks(workdir)
  train.train_and_evaluate(_smoke_config(num_epochs=1), workdir, hooks=hooks)
  want = []
  for step in range(1, 16):  # checkpoints after steps 7 and 14
    want += [("batch", step, (32, 28, 28, 1)),
             ("after_step", step, [7] if 7 <= step < 14 else [14] if step >= 14 else [])]
  want += [("at_epoch_end", 1, [7, 14], 15),  # logged, its checkpoint not yet written
           ("before_final_write", True, False)]
  assert hooks.calls == want


def test_checkpointer_refuses_non_finite_state(tmp_path):
  state = {"params": {"w": np.array([1.0, np.nan], np.float32)}}
  ckpt = checkpointing.Checkpointer(tmp_path)
  with pytest.raises(ValueError, match=r"refusing to write checkpoint 3: .*'w'"):
    ckpt._save(ckpt._last, 3, _FakeState(state), {})  # pylint: disable=protected-access
  assert _steps(tmp_path / "checkpoints" / "last") == []


class _FakeState:
  """Just enough of a TrainState for ``checkpointing._savable``."""

  def __init__(self, tree):
    self.step = np.int32(3)
    self.params = tree["params"]
    self.batch_stats = {}
    self.opt_state = {}
    self.rng = np.zeros(2, np.uint32)
    self.ols = self
    self.soft_labels = np.eye(2, dtype=np.float32)
    self.prob_sums = np.zeros((2, 2), np.float32)
    self.counts = np.zeros(2, np.float32)


# ----------------------------------------------------------------------------
# 4. Bad input: one line, exit 2, nothing written.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, expected", [
    (dict(method="bogus"),
     "error: config.method: expected one of ce, ls, ls_kminus1, tfkd_reg, tfkd_paper, kd, ols, focal, flsd53, mbls, ols_mbls, "
     "got 'bogus'"),
    (dict(method="tfkd"), "error: config.method: 'tfkd' was renamed; use 'tfkd_reg'"),
    (dict(augment="flip"), "error: config.augment: expected one of none, crop, crop_flip, "),
    (dict(model="bogus"), "error: config.model: expected one of "),
    (dict(dataset="bogus"),
     "error: unknown dataset 'bogus'; valid names: alzheimer_mri, brain_tumor_44, "),
    (dict(alpha=1.5), "error: config.alpha: expected a value in [0, 1], got 1.5"),
    (dict(eps=1.0), "error: config.eps: expected a value in [0, 1), got 1.0"),
    (dict(temperature=0.0),
     "error: config.temperature: expected a value > 0, got 0.0"),
    (dict(learning_rate=20.0),
     "error: config.learning_rate: expected a value in (0.0, 10.0], got 20.0"),
    (dict(learning_rate=-0.1),
     "error: config.learning_rate: expected a value in (0.0, 10.0], got -0.1"),
])
def test_bad_config_values(overrides, expected, tmp_path, capsys):
  workdir = tmp_path / "run"
  line = _cli_error(capsys, _smoke_config(**overrides), workdir)
  assert line.startswith(expected), line
  if overrides.get("model") == "bogus":
    assert "resnet18" in line and "tiny_cnn" in line
  if overrides.get("dataset") == "bogus":
    assert "radimagenet" in line and "folder:<path>" in line
  assert not workdir.exists()


def test_missing_or_empty_data_dir(tmp_path, capsys):
  for data_dir in (tmp_path / "nowhere", tmp_path / "empty"):
    if data_dir.name == "empty":
      data_dir.mkdir()
    workdir = tmp_path / f"run_{data_dir.name}"
    line = _cli_error(capsys, _smoke_config(data_dir=str(data_dir)), workdir)
    assert line == (f"error: dataset folder {data_dir}/chest_ct not found (set "
                    f"OLS_JAX_DATA or data_dir to the folder holding the shared "
                    f"datasets; docs/DATA.md says how to get them)")
    assert not workdir.exists()


def test_radimagenet_without_manual_files(tmp_path, capsys):
  empty = tmp_path / "manual_empty"
  empty.mkdir()
  for manual in (tmp_path / "manual_missing", empty, None):
    workdir = tmp_path / "run"
    config = _smoke_config(dataset="radimagenet", data_dir=str(tmp_path / "tfds"),
                           manual_dir=str(manual) if manual else "")
    line = _cli_error(capsys, config, workdir)
    if manual is None:
      assert line.startswith(f"error: radimagenet is not prepared in {tmp_path / 'tfds'}")
    else:
      assert line.startswith(f"error: radimagenet: manual_dir {manual} does not "
                             f"exist or is empty.")
    assert "RadImageNet is available on request only" in line
    assert "RadiologyAI_train.csv" in line
    assert not workdir.exists()


# ---- Image folders built from real scans. ----------------------------------


def _real_images(n: int) -> list[np.ndarray]:
  tar_path = paths.dataset_dir("brain_tumor_mri") / "brain_tumor_mri_test_224_jpeg.tar"
  out = []
  with tarfile.open(tar_path) as tar:
    for member in tar.getmembers():
      if member.isfile() and len(out) < n:
        with Image.open(io.BytesIO(tar.extractfile(member).read())) as img:
          out.append(np.asarray(img.convert("L").resize((32, 32), Image.BOX)))
  return out


@pytest.fixture(scope="module")
def folder_images():
  if not paths.dataset_dir("brain_tumor_mri").is_dir():
    pytest.skip("real data 'brain_tumor_mri' not found")
  return _real_images(24)


def _make_folder(root: pathlib.Path, images) -> pathlib.Path:
  """``root/{train,val,test}/{a,b}/*.png``: 4/2/2 real scans per class."""
  counts = {"train": 4, "val": 2, "test": 2}
  i = 0
  for split, n in counts.items():
    for cls in ("a", "b"):
      (root / split / cls).mkdir(parents=True)
      for j in range(n):
        Image.fromarray(images[i]).save(root / split / cls / f"{j}.png")
        i += 1
  return root


def test_folder_dataset_bad_files(tmp_path, folder_images, capsys):
  good = _make_folder(tmp_path / "good", folder_images)
  png = good / "train" / "a" / "0.png"
  cases = {}

  bad = shutil.copytree(good, tmp_path / "garbage")
  (bad / "train" / "a" / "0.png").write_bytes(b"this is not an image")
  cases[bad] = (f"cannot decode image {bad}/train/a/0.png: cannot identify "
                f"image file")
  bad = shutil.copytree(good, tmp_path / "truncated")
  (bad / "val" / "b" / "1.png").write_bytes(png.read_bytes()[:300])
  cases[bad] = f"cannot decode image {bad}/val/b/1.png: "
  bad = shutil.copytree(good, tmp_path / "rgba")
  rgba = np.dstack([np.repeat(folder_images[0][..., None], 3, -1),
                    np.full((32, 32), 255, np.uint8)])
  Image.fromarray(rgba, "RGBA").save(bad / "test" / "a" / "0.png")
  cases[bad] = (f"image {bad}/test/a/0.png: expected 1 (grayscale) or 3 (RGB) "
                f"channels, got 4 (mode RGBA)")
  bad = shutil.copytree(good, tmp_path / "two_channels")
  Image.fromarray(folder_images[0]).convert("LA").save(bad / "train" / "b" / "2.png")
  cases[bad] = (f"image {bad}/train/b/2.png: expected 1 (grayscale) or 3 (RGB) "
                f"channels, got 2 (mode LA)")
  bad = shutil.copytree(good, tmp_path / "extra_class")
  shutil.copytree(bad / "test" / "a", bad / "test" / "c")
  cases[bad] = (f"class folder {bad}/test/c is not a train class (train "
                f"classes: ['a', 'b'])")

  for folder, expected in cases.items():
    with pytest.raises(data_lib.DataError) as exc:
      data_lib.load_dataset(f"folder:{folder}")
    assert str(exc.value).startswith(expected), str(exc.value)
    assert "\n" not in str(exc.value)

  # Through the CLI glue: one line, and nothing written to the workdir.
  workdir = tmp_path / "run"
  line = _cli_error(capsys, _smoke_config(dataset=f"folder:{tmp_path / 'rgba'}"),
                    workdir)
  assert line == "error: " + cases[tmp_path / "rgba"]
  assert not workdir.exists()


def test_folder_dataset_mixed_sizes_are_resized(tmp_path, folder_images):
  root = _make_folder(tmp_path / "mixed", folder_images)
  big = Image.fromarray(folder_images[1]).resize((50, 40))
  big.save(root / "train" / "a" / "1.png")
  rgb = np.repeat(folder_images[2][..., None], 3, -1)
  Image.fromarray(rgb).save(root / "train" / "b" / "0.png")
  ds = data_lib.load_dataset(f"folder:{root}")
  assert ds.info.image_size is None and ds.info.num_classes == 2
  it = data_lib.train_iterator(ds.splits["train"], global_batch_size=8,
                               image_size=28, channels=1, seed=0)
  batch = next(it)
  it.close()
  assert batch["image"].shape == (8, 28, 28, 1)


# ---- RadImageNet CSVs (miniature from real scans). --------------------------


@pytest.fixture(scope="module")
def mini_manual(tmp_path_factory):
  from test_data_tfds import make_mini_radimagenet  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("radimagenet_manual")
  splits = make_mini_radimagenet(root)
  return root, splits


def _write_csv(path, rows, header="filename,label"):
  path.write_text(header + "\n" + "".join(f"{f},{l}\n" for f, l in rows))


def test_radimagenet_bad_csvs(tmp_path, mini_manual, capsys):
  root, splits = mini_manual
  cases = []

  manual = shutil.copytree(root, tmp_path / "columns")
  _write_csv(manual / "RadiologyAI_train.csv", splits["train"], header="file,class")
  cases.append((manual, f"{manual}/RadiologyAI_train.csv: expected header "
                        f"'filename,label', got 'file,class'"))
  manual = shutil.copytree(root, tmp_path / "missing_file")
  rows = list(splits["val"])
  rows[1] = ("radiology_ai/CT/lung/normal/gone.png", rows[1][1])
  _write_csv(manual / "RadiologyAI_val.csv", rows)
  cases.append((manual, f"{manual}/RadiologyAI_val.csv, line 3: file "
                        f"{manual}/radiology_ai/CT/lung/normal/gone.png does not "
                        f"exist"))
  manual = shutil.copytree(root, tmp_path / "unknown_label")
  rows = list(splits["test"])
  rows[0] = (rows[0][0], "brain-unheard_of")
  _write_csv(manual / "RadiologyAI_test.csv", rows)
  cases.append((manual, f"{manual}/RadiologyAI_test.csv, line 2: label "
                        f"'brain-unheard_of' does not occur in RadiologyAI_train.csv"))

  for i, (manual, expected) in enumerate(cases):
    with pytest.raises(data_lib.DataError) as exc:
      data_lib.load_dataset("radimagenet", data_dir=tmp_path / f"tfds{i}",
                            manual_dir=manual)
    assert str(exc.value) == expected

  workdir = tmp_path / "run"
  config = _smoke_config(dataset="radimagenet", data_dir=str(tmp_path / "tfds_cli"),
                         manual_dir=str(cases[1][0]))
  assert _cli_error(capsys, config, workdir) == "error: " + cases[1][1]
  assert not workdir.exists()


# ---- Teacher and checkpoint mismatches. -------------------------------------


def test_kd_teacher_with_other_class_count(reference, tmp_path, capsys):
  workdir = tmp_path / "run"
  config = _smoke_config(dataset="breastmnist", method="kd",
                         teacher_workdir=str(reference))
  line = _cli_error(capsys, config, workdir)
  assert line == ("error: config.teacher_workdir: teacher has 4 classes, the "
                  "student's dataset has 2")
  assert not workdir.exists()


def test_checkpoint_of_other_model_or_class_count(reference, tmp_path, capsys):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  saved = (workdir / "config.json").read_bytes()
  ckpt = workdir / "checkpoints" / "last" / "45"
  line = _cli_error(capsys, _smoke_config(model="resnet18", allow_config_change=True),
                    workdir)
  assert line.startswith(f"error: checkpoint {ckpt} does not match the configured "
                         f"model or class count (ValueError: ")
  line = _cli_error(capsys, _smoke_config(dataset="breastmnist",
                                          allow_config_change=True), workdir)
  assert line == (f"error: checkpoint {ckpt} does not match the configured model "
                  f"or class count (ValueError: ['ols']['counts'] has shape (4,) in "
                  f"the checkpoint, (2,) configured)")
  # The failed attempts changed nothing: the workdir still holds the old run.
  assert (workdir / "config.json").read_bytes() == saved


# ---- Unwritable workdir and full disk. --------------------------------------


@contextlib.contextmanager
def _tmpfs(mountpoint: pathlib.Path, options: str):
  mountpoint.mkdir(parents=True, exist_ok=True)
  proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs",
                         str(mountpoint)], capture_output=True, check=False)
  if proc.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
  try:
    yield mountpoint
  finally:
    if subprocess.run(["umount", str(mountpoint)], check=False).returncode:
      subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_unwritable_workdir(tmp_path, capsys, shared_data):
  shared_data("chest_ct")
  # A file where the workdir should be (needs no privileges).
  not_dir = tmp_path / "file"
  not_dir.write_text("x")
  line = _cli_error(capsys, _smoke_config(), not_dir)
  assert line == f"error: workdir {not_dir}: exists and is not a folder"
  line = _cli_error(capsys, _smoke_config(), not_dir / "run")
  assert line == f"error: workdir {not_dir / 'run'}: not writable (Not a directory)"

  # A read-only folder: chmod, unless root (which ignores it): then a
  # read-only tmpfs.
  if os.geteuid() != 0:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
      line = _cli_error(capsys, _smoke_config(), ro / "run")
    finally:
      ro.chmod(0o755)
    assert line == f"error: workdir {ro / 'run'}: not writable (Permission denied)"
  else:
    with _tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
      line = _cli_error(capsys, _smoke_config(), ro / "run")
    assert line == f"error: workdir {ro / 'run'}: not writable (Read-only file system)"


def test_full_disk_keeps_last_checkpoints(tmp_path, capsys, shared_data):
  shared_data("chest_ct")
  config = _smoke_config(num_epochs=1)
  # Room for the two mid-epoch checkpoints (7, 14), not for the epoch-end ones.
  with _tmpfs(tmp_path / "small", "size=300k") as small:
    workdir = small / "run"
    line = _cli_error(capsys, config, workdir)
    assert line.startswith("error: cannot write checkpoint ")
    assert line.endswith(": No space left on device; the previous checkpoint is kept")
    steps = _steps(workdir / "checkpoints" / "last")
    assert steps and steps[-1] >= 7
    for step in steps:
      state, _ = _load_checkpoint(workdir / "checkpoints" / "last" / str(step))
      assert _all_finite(state) and int(state["step"]) == step
    copy = shutil.copytree(workdir, tmp_path / "run")
  # The kept checkpoints resume on a disk with room.
  _, summary = train.train_and_evaluate(config, copy)
  assert summary["final_step"] == 15


def test_an_old_config_json_is_migrated_to_todays_fields(tmp_path):
  """tests/data/config_f316bbc_tfkd.json: base_config of commit f316bbc (method 'tfkd',
  retired since), as a run of that commit wrote it."""
  from ols_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  from ols_jax import runs  # pylint: disable=import-outside-toplevel
  old = pathlib.Path(__file__).parent / "data" / "config_f316bbc_tfkd.json"
  shutil.copy(old, tmp_path / "config.json")
  cfg = runs.read_config(tmp_path)
  saved = json.loads(old.read_text())
  assert set(cfg.keys()) == set(config_lib.base_config().keys())
  # Saved values kept; fields added since take the default they had in effect.
  assert all(cfg[k] == v for k, v in saved.items())
  assert cfg.method == "tfkd" and cfg.evals == "" and cfg.backbone_lr_multiplier == 1.0
  assert cfg.calibration_split == config_lib.base_config().calibration_split
  (tmp_path / "config.json").write_text("[1, 2]")
  with pytest.raises(config_lib.ConfigError, match="expected a JSON object"):
    runs.read_config(tmp_path)
