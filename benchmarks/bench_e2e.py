"""End to end: the project's main job vs a plain PyTorch job doing the same
work, timed as whole processes in one run (``wall`` includes interpreter
start, imports, data loading, compilation and evaluation).

Sides (run alternately, ``--rounds`` times each, order flipped every round):
  jax          ``experiments/radimagenet.py`` with the given config (hard-label
               CE), as a user runs it: checkpoints every epoch, temperature
               scaling, every metric, report, figures and t-SNE.
  jax_lean     the same job with ``--config.figures=False`` (no figures, no
               t-SNE): the training and evaluation work alone.
  torch        ``benchmarks/torch_job.py``: same data, model, optimiser,
               schedule, batch, epochs and augmentation; validation each epoch,
               test at the end; no checkpoints, no figures.

  pip install -r benchmarks/requirements.txt
  python benchmarks/bench_e2e.py --epochs=3 [--rounds=2] [--json=benchmarks/results/e2e.json]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import common
from common import ROOT

from ols_jax import paths
from ols_jax.logging_utils import read_metrics


def _timed(cmd: list, side: str):
  """Runs ``cmd``; its stdout and wall seconds (exits with its stderr if it fails)."""
  t0 = time.time()
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  wall = time.time() - t0
  if proc.returncode:
    raise SystemExit(f"error: the {side} job failed: {proc.stderr.strip()[-500:]}")
  return proc.stdout, wall


def _jax_side(config: str, epochs: int, workdir: pathlib.Path, lean: bool) -> dict:
  cmd = [sys.executable, str(ROOT / "experiments" / "radimagenet.py"), f"--config={config}",
         f"--workdir={workdir}", f"--config.num_epochs={epochs}", "--config.method=ce",
         "--config.progress=False"] + (["--config.figures=False"] if lean else [])
  _, wall = _timed(cmd, "JAX")
  results = json.loads((workdir / "results.json").read_text())
  windows = [r for r in read_metrics(workdir / "metrics.jsonl")
             if "images_per_second" in r]
  # The first window of each epoch holds the epoch's start (and, once, the
  # compile): report the median of the windows.
  ips = statistics.median(r["images_per_second"] for r in windows) if windows else 0.0
  return {"wall_s": wall, "train_images_per_s": ips,
          "test_top1_error": results["test"]["top1_error"], "test_ece": results["test"]["ece"]}


def _torch_side(data: pathlib.Path, epochs: int) -> dict:
  cmd = [sys.executable, str(ROOT / "benchmarks" / "torch_job.py"), f"--data={data}",
         f"--epochs={epochs}"]
  stdout, wall = _timed(cmd, "PyTorch")
  out = json.loads(stdout.strip().splitlines()[-1])
  out["wall_s"] = wall
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default=str(ROOT / "experiments" / "configs" / "radmix.py"))
  p.add_argument("--data", default="", help="npz of the same dataset for the PyTorch job "
                 "(default: <OLS_JAX_DATA>/radmix/radmix_28.npz)")
  p.add_argument("--epochs", type=int, default=3)
  p.add_argument("--rounds", type=int, default=1)
  p.add_argument("--sides", default="jax,jax_lean,torch")
  p.add_argument("--json", type=pathlib.Path, default=None)
  a = p.parse_args()
  data = pathlib.Path(a.data) if a.data else paths.data_root() / "radmix" / "radmix_28.npz"
  if not data.is_file():
    raise SystemExit(f"error: --data: {data} not found")
  sides = a.sides.split(",")
  runs = {s: [] for s in sides}
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(a.rounds):
      for side in (sides if r % 2 == 0 else sides[::-1]):
        if side == "torch":
          out = _torch_side(data, a.epochs)
        else:
          out = _jax_side(a.config, a.epochs, pathlib.Path(tmp) / f"{side}_{r}",
                          lean=side == "jax_lean")
        runs[side].append(out)
        print(f"round {r} {side:9s} wall {out['wall_s']:7.1f} s  train "
              f"{out['train_images_per_s']:6.0f} img/s  test err "
              f"{100 * out['test_top1_error']:.2f}%  ECE {100 * out['test_ece']:.2f}%",
              flush=True)
  summary = {s: {"wall_s": statistics.median(x["wall_s"] for x in v),
                 "train_images_per_s": statistics.median(x["train_images_per_s"] for x in v)}
             for s, v in runs.items()}
  if "torch" in summary:
    for s in sides:
      if s != "torch":
        summary[s]["time_ratio_vs_torch"] = summary[s]["wall_s"] / summary["torch"]["wall_s"]
        print(f"{s}: whole job takes {summary[s]['time_ratio_vs_torch']:.2f}x the PyTorch "
              f"job's time ({summary[s]['wall_s']:.1f} s vs {summary['torch']['wall_s']:.1f} s)")
  if a.json:
    common.write_json(a.json, {"machine": common.machine_info(), "epochs": a.epochs,
                               "config": common.repo_path(a.config), "runs": runs,
                               "summary": summary})


if __name__ == "__main__":
  main()
