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
``experiments/sweeps.py`` skips them and selects from their validation scores
(the collected layout: :mod:`ols_jax.study.collected`):

  python experiments/collect_sweep.py radmix_converged --restore
"""

import argparse
import pathlib
import shutil

REPO = pathlib.Path(__file__).resolve().parent.parent

import sweeps  # noqa: E402  (this folder is on sys.path when run as a script)
from ols_jax.study import collected  # noqa: E402
from ols_jax.study import sweep as sweep_lib  # noqa: E402
from ols_jax.study import sweep_report  # noqa: E402


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("name")
  p.add_argument("--runs", default="", help="default: runs/sweeps/<name>")
  p.add_argument("--dest", default="", help="default: docs/results/<name>")
  p.add_argument("--summarise_only", action="store_true")
  p.add_argument("--partial", action="store_true",
                 help="a cell still running: collect its finished runs only, no "
                      "selection.json or summary (nothing a reader could take as the cell's result)")
  p.add_argument("--restore", action="store_true",
                 help="put the collected runs back as run folders, then stop")
  args = p.parse_args(argv)
  try:
    sweep = sweeps.find(args.name)
  except (KeyError, FileNotFoundError) as e:
    raise SystemExit(f"error: {e.args[0] if isinstance(e, KeyError) else e}") from None
  src = pathlib.Path(args.runs or REPO / "runs" / "sweeps" / sweep.name)
  dest = pathlib.Path(args.dest or REPO / "docs" / "results" / sweep.name)
  if args.restore:
    print(f"{sweep.name}: restored {collected.restore(dest, src)} runs -> {src}")
    return
  if not args.summarise_only:
    chosen = sweep_lib.write_selection(sweep, src)
    cells = sweep.every_cell({k: v["candidate"] for k, v in chosen.items()})
    n = 0
    for c in cells:
      try:
        n += collected.collect_run(c.workdir(src), dest / c.model / c.folder, c.seed)
      except collected.RecordMismatchError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"{sweep.name}: {n} finished runs collected -> {dest}")
    if args.partial:
      return
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / "selection.json", dest / "selection.json")
  if not sweep.summary:
    print(f"{sweep.name}: no summary (its report is part of the study's)")
    return
  path = sweep_report.write_summary(sweep, dest, sweep.summary_comparisons())
  print(f"summary: {path}")


if __name__ == "__main__":
  main()
