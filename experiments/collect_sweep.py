"""Collects a tuned comparison's finished runs into docs/results/<sweep>/ and
writes its summary (tables with paired statistics, validation curves).

  python experiments/collect_sweep.py radmix_converged [--runs=runs/sweeps/radmix_converged]

Per finished run: results.json (as seed<k>.json), metrics.jsonl and the
per-example test records recomputed from the selected checkpoint (correct,
confidence, log-probability of the label and Brier score, raw and after TS;
checked against the run's own test metrics). Runs already collected are not redone;
``--summarise_only`` rebuilds the summary from the collected files alone.

On a machine where the run folders are gone, ``--restore`` first puts the
collected runs back as run folders (results.json, metrics.jsonl), so that
``experiments/sweeps.py`` skips them and selects from their validation scores:

  python experiments/collect_sweep.py radmix_converged --restore
"""

import argparse
import json
import pathlib
import shutil

REPO = pathlib.Path(__file__).resolve().parent.parent

import numpy as np  # noqa: E402

import sweeps  # noqa: E402  (this folder is on sys.path when run as a script)
from ols_jax import runs as runs_lib  # noqa: E402
from ols_jax import stats  # noqa: E402
from ols_jax import sweep as sweep_lib  # noqa: E402
from ols_jax import sweep_report  # noqa: E402


# Record arrays saved per run (``correct`` as bool, the rest float32).
RECORD_ARRAYS = ("conf", "logp", "brier", "conf_ts", "logp_ts", "brier_ts")


def save_records(rec: dict, results: dict, path: pathlib.Path, *, where: str = "") -> None:
  """Checks per-example records against the run's own test metrics, then saves them.

  Top-1 error, ECE, NLL and Brier (raw and after TS, where results.json has
  them) must agree within 1e-4; adaptive ECE within 2e-3 (its equal-mass bins
  follow the confidence order, which float32 ties can change), else a warning.
  """
  for split, suffix in (("test", ""), ("test_ts", "_ts")):
    for key in ("top1_error", "ece", "nll", "brier", "adaptive_ece"):
      if (key == "top1_error" and suffix) or key not in results.get(split, {}):
        continue
      got, want = stats.metric(rec, key + suffix), results[split][key]
      tol = 2e-3 if key == "adaptive_ece" else 1e-4
      if abs(got - want) > tol:
        raise SystemExit(f"error: {where}: recomputed {split} {key} {got:.6f} differs from "
                         f"results.json {want:.6f}")
      if abs(got - want) > 1e-4:
        print(f"note: {where}: recomputed {split} {key} {got:.6f} vs results.json {want:.6f}")
  tmp = path.with_name(f".{path.stem}.tmp.npz")
  np.savez_compressed(tmp, correct=rec["correct"],
                      **{k: np.asarray(rec[k]).astype(np.float32) for k in RECORD_ARRAYS})
  tmp.replace(path)


def collect_run(workdir: pathlib.Path, dest: pathlib.Path, seed: int) -> bool:
  """Copies one finished run; returns False when it has not finished."""
  results = workdir / "results.json"
  if not results.exists():
    return False
  dest.mkdir(parents=True, exist_ok=True)
  rec_path = dest / f"seed{seed}_records.npz"
  if not rec_path.exists():
    r = json.loads(results.read_text())
    logits, labels = runs_lib.split_logits(workdir, "test")
    save_records(stats.example_records(logits, labels, r["temperature"]), r, rec_path,
                 where=str(workdir))
  shutil.copy2(results, dest / f"seed{seed}.json")
  shutil.copy2(workdir / "metrics.jsonl", dest / f"seed{seed}_metrics.jsonl")
  return True


def restore(dest: pathlib.Path, src: pathlib.Path) -> int:
  """Collected ``<model>/<run>/seed<k>.json`` -> ``src/<model>/<run>/seed<k>/``."""
  n = 0
  for path in sorted(dest.glob("*/*/seed*.json")):
    seed = path.stem[len("seed"):]
    run = src / path.parent.parent.name / path.parent.name / f"seed{seed}"
    if (run / "results.json").exists():
      continue
    run.mkdir(parents=True, exist_ok=True)
    metrics = path.with_name(f"seed{seed}_metrics.jsonl")
    if metrics.exists():
      shutil.copy2(metrics, run / "metrics.jsonl")
    shutil.copy2(path, run / "results.json")
    n += 1
  return n


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("name")
  p.add_argument("--runs", default="", help="default: runs/sweeps/<name>")
  p.add_argument("--dest", default="", help="default: docs/results/<name>")
  p.add_argument("--summarise_only", action="store_true")
  p.add_argument("--restore", action="store_true",
                 help="put the collected runs back as run folders, then stop")
  args = p.parse_args(argv)
  sweep = sweep_lib.find(sweeps.SWEEPS, args.name)
  src = pathlib.Path(args.runs or REPO / "runs" / "sweeps" / sweep.name)
  dest = pathlib.Path(args.dest or REPO / "docs" / "results" / sweep.name)
  if args.restore:
    print(f"{sweep.name}: restored {restore(dest, src)} runs -> {src}")
    return
  if not args.summarise_only:
    chosen = sweep_lib.write_selection(sweep, src)
    cells = sweep.tuning_cells() + sweep.final_cells(
        {a.name: () for a in sweep.arms if not a.grid}) + sweep.final_cells(
        {k: v["candidate"] for k, v in chosen.items()})
    n = 0
    for c in cells:
      n += collect_run(c.workdir(src), dest / c.model / c.folder, c.seed)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / "selection.json", dest / "selection.json")
    print(f"{sweep.name}: {n} finished runs collected -> {dest}")
  comparisons = [("ce", a.name) for a in sweep.arms if a.name != "ce"]
  names = [a.name for a in sweep.arms]
  comparisons += [(ref, a) for ref in ("ls", "flsd53", "mbls") if ref in names
                  for a in names if a.startswith("ols")]
  path = sweep_report.write_summary(sweep, dest, comparisons)
  print(f"summary: {path}")


if __name__ == "__main__":
  main()
