"""Multi-process runs: real ``jax.distributed`` processes on localhost.

Two processes of the entry point (through ``experiments/launch_local.py``) on
a small smoke config (chest_ct, 2 epochs of 15 steps) must reproduce a
one-process run over the same global device count: S, params and test
metrics; a two-process run killed mid-epoch resumes to the same result. The
subprocesses get their devices from ``--cpu_devices`` (not the 4 fake devices
of conftest). Skipped when gloo CPU collectives are unavailable.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import fault_entry
from ols_jax import logging_utils
from ols_jax import paths
from ols_jax import report as report_lib
from ols_jax import train

pytestmark = pytest.mark.slow  # whole runs or subprocesses: the full tier only

REPO = pathlib.Path(__file__).resolve().parents[1]
ENTRY = REPO / "experiments" / "radimagenet.py"
LAUNCHER = REPO / "experiments" / "launch_local.py"
FAULT_ENTRY = REPO / "tests" / "fault_entry.py"  # ENTRY with a crash hook
SMOKE = REPO / "experiments" / "configs" / "smoke.py"

# chest_ct: 493 train images -> 15 steps of 32 per epoch, 30 in all;
# mid-epoch checkpoints at steps 7, 14, 21, 28.
SMALL = dict(dataset="chest_ct", batch_size=32, num_epochs=2,
             checkpoint_every_steps=7, log_every_steps=5, progress=False,
             figures=False, tsne_samples=0)
VOLATILE = ("steps_per_second", "images_per_second")
TIMEOUT_S = 240


def _env(**extra) -> dict[str, str]:
  """The test environment without conftest's fake device count."""
  env = dict(os.environ)
  env.pop(fault_entry.CRASH_ENV_VAR, None)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags)
  env["JAX_PLATFORMS"] = "cpu"
  env.update(extra)
  return env


def _args(workdir, devices: int, **overrides) -> list[str]:
  values = dict(SMALL, **overrides)
  return ([f"--config={SMOKE}", f"--workdir={workdir}", f"--cpu_devices={devices}"]
          + [f"--config.{k}={v}" for k, v in values.items()])


def _one_process(workdir, devices: int) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(ENTRY)] + _args(workdir, devices),
                        env=_env(), cwd=REPO, capture_output=True, text=True,
                        timeout=TIMEOUT_S, check=False)


def _launch(workdir, devices: int, crash: str = "") -> subprocess.CompletedProcess:
  extra = {fault_entry.CRASH_ENV_VAR: crash} if crash else {}
  entry = [f"--entry={FAULT_ENTRY}"] if crash else []
  return subprocess.run(
      [sys.executable, str(LAUNCHER), "--num_processes=2"] + entry + ["--"]
      + _args(workdir, devices), env=_env(**extra), cwd=REPO, capture_output=True,
      text=True, timeout=TIMEOUT_S, check=False)


@pytest.fixture(scope="module")
def gloo(tmp_path_factory):
  """Skips the module's process tests when two gloo processes cannot talk."""
  script = tmp_path_factory.mktemp("gloo") / "probe.py"
  script.write_text(textwrap.dedent("""\
      import sys
      import jax
      import numpy as np
      from jax.experimental import multihost_utils
      args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
      jax.distributed.initialize(args["coordinator_address"], 2, int(args["process_id"]),
                                 initialization_timeout=60)
      rank = np.array([int(args["process_id"])])
      print(multihost_utils.process_allgather(rank).ravel().tolist())
      """))
  proc = subprocess.run([sys.executable, str(LAUNCHER), f"--entry={script}"],
                        env=_env(), capture_output=True, text=True, timeout=120,
                        check=False)
  if proc.returncode != 0 or "[0] [0, 1]" not in proc.stdout:
    lines = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()
    pytest.skip(f"gloo CPU collectives unavailable: {lines[-1][:200]}")


def _require_data():
  if not paths.dataset_dir("chest_ct").is_dir():
    pytest.skip(f"real data 'chest_ct' not found at {paths.dataset_dir('chest_ct')}")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
  """Uninterrupted one-process runs, keyed by device count (built on demand)."""
  _require_data()
  root = tmp_path_factory.mktemp("one_process")
  runs = {}

  def get(devices: int) -> pathlib.Path:
    if devices not in runs:
      workdir = root / f"devices{devices}"
      proc = _one_process(workdir, devices)
      assert proc.returncode == 0, proc.stderr[-3000:]
      runs[devices] = workdir
    return runs[devices]
  return get


def _last_state(workdir: pathlib.Path):
  last = workdir / "checkpoints" / "last"
  step = max(int(p.name) for p in last.iterdir() if p.name.isdigit())
  return ocp.StandardCheckpointer().restore(last / str(step) / "state")


def _max_abs_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _compare(got: pathlib.Path, want: pathlib.Path) -> dict[str, float]:
  """Asserts two runs agree to float tolerance; returns the largest deltas."""
  names = sorted(p.name for p in (want / "soft_labels").glob("*.npy"))
  assert sorted(p.name for p in (got / "soft_labels").glob("*.npy")) == names
  ds = max(float(np.max(np.abs(np.load(got / "soft_labels" / n)
                               - np.load(want / "soft_labels" / n)))) for n in names)
  dparams = _max_abs_diff(_last_state(got)["params"], _last_state(want)["params"])
  r_got, r_want = (json.loads((w / "results.json").read_text()) for w in (got, want))
  dtest = max(abs(r_got["test"][k] - r_want["test"][k]) for k in r_want["test"])
  assert r_got["final_step"] == r_want["final_step"]
  assert ds <= 1e-6 and dparams <= 1e-5 and dtest <= 1e-5, (ds, dparams, dtest)
  m_got, m_want = (
      [{k: v for k, v in r.items() if k not in VOLATILE}
       for r in logging_utils.read_metrics(w / "metrics.jsonl")] for w in (got, want))
  assert [r["step"] for r in m_got] == [r["step"] for r in m_want]  # written once
  for a, b in zip(m_got, m_want):
    np.testing.assert_allclose([a[k] for k in sorted(b)], [b[k] for k in sorted(b)],
                               rtol=1e-5, atol=1e-6)
  return {"dS": ds, "dparams": dparams, "dtest": dtest}


@pytest.mark.parametrize("devices", [1, 2])
def test_two_processes_equal_one_process(gloo, one_process, tmp_path, devices):
  """2 processes x ``devices`` == 1 process x 2 * ``devices`` (same global batch)."""
  workdir = tmp_path / "run"
  proc = _launch(workdir, devices)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for rank in (0, 1):
    assert f"[{rank}] done: ols / tiny_cnn on chest_ct" in proc.stdout
  results = json.loads((workdir / "results.json").read_text())
  assert results["process_count"] == 2 and results["device_count"] == 2 * devices
  assert (workdir / "report.md").is_file()
  deltas = _compare(workdir, one_process(2 * devices))
  print(f"2 processes x {devices} vs 1 process x {2 * devices}: {deltas}")


def test_two_processes_killed_mid_epoch_resume(gloo, one_process, tmp_path):
  workdir = tmp_path / "run"
  proc = _launch(workdir, 1, crash="step:21")
  assert proc.returncode != 0
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1 and errors[0].startswith("error: process "), proc.stderr[-2000:]
  assert "was killed by SIGKILL" in errors[0]
  last = workdir / "checkpoints" / "last"
  assert max(int(p.name) for p in last.iterdir() if p.name.isdigit()) == 21
  assert not (workdir / "results.json").exists()
  proc = _launch(workdir, 1)
  assert proc.returncode == 0, proc.stderr[-3000:]
  deltas = _compare(workdir, one_process(2))
  print(f"2 processes killed at step 21 and resumed vs 1 process: {deltas}")


@pytest.mark.parametrize("rank", [0, 1])
def test_missing_peer_is_a_clean_error(gloo, tmp_path, rank):
  """No other process ever joins: one error line, status 2, within the timeout."""
  from experiments import launch_local  # pylint: disable=import-outside-toplevel
  port = launch_local.free_port()
  proc = subprocess.run(
      [sys.executable, str(ENTRY)] + _args(tmp_path / "run", 1) + [
          "--distributed", f"--coordinator_address=localhost:{port}",
          "--num_processes=2", f"--process_id={rank}", "--distributed_timeout_s=3"],
      env=_env(), cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert errors == [f"error: distributed: process {rank} could not join the run at "
                    f"localhost:{port} within 3 s (coordinator unreachable, or a "
                    f"process did not start or died)"], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr and "Check failure" not in proc.stderr
  assert not (tmp_path / "run").exists()


def test_flags_without_distributed_are_refused(tmp_path):
  proc = subprocess.run(
      [sys.executable, str(ENTRY), f"--config={SMOKE}", f"--workdir={tmp_path / 'run'}",
       "--num_processes=2"], env=_env(), cwd=REPO, capture_output=True, text=True,
      timeout=60, check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == "error: --num_processes needs --distributed"


def test_launcher_stops_the_others_when_one_fails(tmp_path):
  script = tmp_path / "job.py"
  script.write_text(textwrap.dedent("""\
      import pathlib, sys, time
      rank = int([a for a in sys.argv if a.startswith("--process_id=")][0].split("=")[1])
      print("hello from", rank, " ".join(a for a in sys.argv[1:] if "process" in a), flush=True)
      here = pathlib.Path(__file__).parent
      (here / f"ready{rank}").touch()
      if rank == 1:
        # Fail only once every rank has printed: on a loaded host a rank can
        # otherwise be stopped before its first line.
        deadline = time.time() + 30
        while (not all((here / f"ready{r}").exists() for r in range(3))
               and time.time() < deadline):
          time.sleep(0.05)
        sys.exit(3)
      time.sleep(120)
      """))
  proc = subprocess.run([sys.executable, str(LAUNCHER), f"--entry={script}",
                         "--num_processes=3", "--", "--x=1"],
                        capture_output=True, text=True, timeout=60, check=False)
  assert proc.returncode == 3
  assert proc.stderr.strip() == "error: process 1 of 3 exited with status 3; stopped the other 2"
  for rank in range(3):
    assert f"[{rank}] hello from {rank} --num_processes=3 --process_id={rank}" in proc.stdout


# ----------------------------------------------------------------------------
# Only process 0 writes the run's files (in-process, process_index patched).
# ----------------------------------------------------------------------------


def test_other_processes_write_nothing(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  # pylint: disable=protected-access
  train._save_npy_atomic(tmp_path / "soft_labels" / "epoch_001.npy", np.eye(2))
  train._write_json_atomic(tmp_path / "results.json", {"a": 1})
  writer = logging_utils.MetricWriter(tmp_path / "metrics.jsonl", truncate_after_step=0)
  writer.write({"step": 1})
  progress = logging_utils.Progress(10, stream=sys.stderr)
  progress.message("epoch 1/1")
  report_lib.write_report(tmp_path, None, None)
  assert list(tmp_path.iterdir()) == []
  assert capsys.readouterr().err == ""
  monkeypatch.setattr(jax, "process_index", lambda: 0)
  logging_utils.MetricWriter(tmp_path / "metrics.jsonl").write({"step": 1})
  assert logging_utils.read_metrics(tmp_path / "metrics.jsonl") == [{"step": 1}]
