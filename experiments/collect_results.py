"""Copies a study's small result files into docs/results/ and draws the
cross-run figures (OLS alpha curve, S row entropy per epoch).

  python experiments/collect_results.py --study=runs/study --dest=docs/results

For every study folder: summary.md/.csv and reliability.png; every run's
results.json (as <model>/<variant>/seed<k>.json); for seed 0 the run's
report.md and figures. Checkpoints are never copied.
"""

import argparse
import os
import pathlib
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ols_jax import study  # noqa: E402


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--study", default="runs/study")
  p.add_argument("--dest", default="docs/results")
  args = p.parse_args()
  src, dest = pathlib.Path(args.study), pathlib.Path(args.dest)
  for folder in sorted(x for x in src.iterdir() if x.is_dir()):
    rows = study.load_results(folder)
    if not rows:
      continue
    study.write_summary(folder, title=_title(folder))
    out = dest / folder.name
    out.mkdir(parents=True, exist_ok=True)
    for name in ("summary.md", "summary.csv", "reliability.png"):
      if (folder / name).exists():
        shutil.copy2(folder / name, out / name)
    for r in rows:
      run = pathlib.Path(r["workdir"])
      target = out / r["model"] / r["variant"]
      target.mkdir(parents=True, exist_ok=True)
      shutil.copy2(run / "results.json", target / f"seed{r['seed']}.json")
      if r["seed"] == 0:
        shutil.copy2(run / "report.md", target / "report.md")
        if (run / "figures").is_dir():
          shutil.copytree(run / "figures", target / "figures", dirs_exist_ok=True)
    made = study.ablation_figures(folder, out)
    print(f"{folder.name}: {len(rows)} runs -> {out}" + (f" (+{', '.join(made)})" if made else ""))


def _title(folder: pathlib.Path) -> str:
  summary = folder / "summary.md"
  if summary.exists():
    first = summary.read_text().splitlines()[0]
    return first.lstrip("# ").strip()
  return folder.name


if __name__ == "__main__":
  main()
