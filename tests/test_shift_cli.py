"""experiments/shift.py: a finished run's test split under the corruption suite.

One module-scoped smoke run (tiny CNN, 1 epoch, 28 px real brain MRI,
calibration split, corruption suite in its final evaluation) serves every
test; the command runs as a subprocess on 2 corruptions x 2 severities.
"""

import json
import pathlib
import subprocess
import sys

import pytest

from ols_jax import shift
from ols_jax import train

pytestmark = pytest.mark.slow  # whole runs or subprocesses: the full tier only

REPO = pathlib.Path(__file__).resolve().parent.parent
ENTRY = REPO / "experiments" / "shift.py"
CORRUPTIONS = ("gaussian_noise", "contrast")
SEVERITIES = (1, 5)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  from experiments.configs import smoke  # pylint: disable=import-outside-toplevel
  c = smoke.get_config()
  c.update(dict(num_epochs=1, batch_size=256, num_devices=1, progress=False,
                figures=False, tsne_samples=50, calibration_split="test_half",
                shift_eval=True))
  workdir = tmp_path_factory.mktemp("shift") / "run"
  train.train_and_evaluate(c, workdir)
  return workdir


def _shift(*args):
  return subprocess.run([sys.executable, str(ENTRY), *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300, check=False)


def test_records_equal_the_runs_own_evaluation(run_dir, tmp_path):
  out, fig = tmp_path / "shift.json", tmp_path / "shift.png"
  proc = _shift(f"--workdir={run_dir}", f"--output={out}", f"--figure={fig}",
                f"--corruptions={','.join(CORRUPTIONS)}",
                f"--severities={','.join(map(str, SEVERITIES))}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = json.loads(out.read_text())
  assert [(r["corruption"], r["severity"]) for r in records] == [("none", 0)] + [
      (c, s) for c in CORRUPTIONS for s in SEVERITIES]
  assert all(list(r) == list(shift.RECORD_FIELDS) for r in records)

  # The clean set is the test split the run reported (its test half), scored as it was.
  results = json.loads((run_dir / "results.json").read_text())
  assert results["split_sizes"]["test"] < 1281  # the calibration split's test half
  clean = records[0]
  for key in ("top1_error", "ece", "nll", "aurc"):
    assert clean[key] == pytest.approx(results["test"][key], abs=1e-6), key
  for key in ("ece", "nll"):
    assert clean[f"{key}_ts"] == pytest.approx(results["test_ts"][key], abs=1e-6), key
  # Every record equals the run's own corruption suite (config.shift_eval).
  own = {(r["corruption"], r["severity"]): r for r in results["shift"]}
  for r in records:
    for key in shift.RECORD_FIELDS[2:]:
      assert r[key] == pytest.approx(own[r["corruption"], r["severity"]][key],
                                     abs=1e-6), (r["corruption"], r["severity"], key)
  assert any(r["top1_error"] != clean["top1_error"] for r in records[1:])

  assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  progress = [l for l in proc.stderr.splitlines() if l.startswith("shift ")]
  assert len(progress) == 5 and progress[0].startswith("shift 1/5: none severity 0: ")
  assert proc.stdout.startswith("scored 5 sets (4 corrupted + clean) of ols / tiny_cnn "
                                "on brain_tumor_mri: clean top-1 error ")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["shift.json", "shift.png"]


@pytest.mark.parametrize("args, message", [
    (("--corruptions=gaussian_noise,fog",),
     "error: --corruptions: unknown corruption 'fog'; expected some of gaussian_noise, "
     "gaussian_blur, contrast, brightness, gamma, jpeg, downsample, bias_field"),
    (("--severities=0,2",),
     "error: --severities: expected comma-separated integers in 1..5 (the clean set, "
     "severity 0, is always scored), got '0,2'"),
    (("--severities=6",),
     "error: --severities: expected comma-separated integers in 1..5 (the clean set, "
     "severity 0, is always scored), got '6'"),
])
def test_bad_options_stop_with_one_line(run_dir, tmp_path, args, message):
  out, fig = tmp_path / "s.json", tmp_path / "s.png"
  proc = _shift(f"--workdir={run_dir}", f"--output={out}", f"--figure={fig}", *args)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [message]
  assert not list(tmp_path.iterdir())


def test_bad_workdir_stops_with_one_line(run_dir, tmp_path):
  out = tmp_path / "out" / "s.json"
  out.parent.mkdir()
  proc = _shift(f"--workdir={tmp_path / 'nowhere'}", f"--output={out}",
                "--severities=1")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [f"error: workdir {tmp_path / 'nowhere'}: "
                                              f"not found"]
  half = tmp_path / "half"
  half.mkdir()
  (half / "config.json").write_text((run_dir / "config.json").read_text())
  proc = _shift(f"--workdir={half}", f"--output={out}", "--progress=False")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      f"error: workdir {half}: no results.json (the run has not finished; rerun its "
      f"training command to finish it)"]
  proc = _shift(f"--workdir={run_dir}", f"--output={tmp_path / 's.csv'}")
  assert proc.returncode == 2
  assert proc.stderr.strip() == f"error: --output {tmp_path / 's.csv'}: expected a .json file name"
  assert not list(out.parent.iterdir())
