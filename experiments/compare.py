"""Runs a grid of methods x models x seeds (plus OLS ablations) and writes one
mean ± std table, a paired comparison and a combined reliability figure.

  python experiments/compare.py --config=experiments/configs/brain_tumor_mri.py \
      --out=runs/study/brain_tumor_mri --methods=ce,ls,tfkd_reg,kd,ols \
      --models=resnet18 --seeds=0,1,2 --alphas=0.3,0.7,0.9 --ols_inits=zeros \
      --jobs=2 -- --config.num_epochs=15

Cells whose results.json exists are skipped, so a study can be finished in
chunks. Arguments after ``--`` are passed to every run. ``--summarise_only``
rebuilds the tables from existing runs.
"""

import argparse
import pathlib
import sys

from ols_jax import losses
from ols_jax.study import grid_report
from ols_jax.study import grid_runner


def _list(text, cast=str):
  return [cast(x) for x in text.split(",") if x.strip()] if text else []


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  extra = []
  if "--" in argv:
    i = argv.index("--")
    argv, extra = argv[:i], argv[i + 1:]
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", required=True, help="experiment config file")
  p.add_argument("--out", required=True, help="study folder")
  p.add_argument("--methods", default="ce,ls,tfkd_reg,kd,ols")
  p.add_argument("--models", default="resnet18")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--alphas", default="", help="extra OLS alpha values (ablation)")
  p.add_argument("--ols_inits", default="", help="extra OLS initial S (ablation)")
  p.add_argument("--teacher_model", default=None,
                 help="model of the CE run used as KD teacher (default: same model)")
  p.add_argument("--jobs", type=int, default=1, help="parallel runs")
  p.add_argument("--threads_per_job", type=int, default=0,
                 help="cores per run on a CPU host: 1 = one XLA thread; N > 1 = N host "
                      "devices (data parallel); 0 = the entry point's default "
                      "(one device per core); N >= 1 also caps BLAS/OpenMP threads at N")
  p.add_argument("--title", default="")
  p.add_argument("--summarise_only", action="store_true")
  args = p.parse_args(argv)
  methods = _list(args.methods)
  bad = [m for m in methods if m not in losses.METHODS]
  if bad:
    p.error(f"--methods: unknown {bad}; valid: {', '.join(losses.METHODS)}")
  if not pathlib.Path(args.config.partition(":")[0]).is_file():
    p.error(f"--config: no such file {args.config.partition(':')[0]}")
  out = pathlib.Path(args.out)
  failed = []
  if not args.summarise_only:
    cells = grid_runner.grid(_list(args.models), methods, _list(args.seeds, int),
                             _list(args.alphas, float), _list(args.ols_inits))
    failed = grid_runner.run_grid(cells, args.config, out, extra=extra, jobs=args.jobs,
                                  teacher_model=args.teacher_model,
                                  threads_per_job=args.threads_per_job)
  path = grid_report.write_summary(out, args.title)
  print(f"summary: {path}")
  if failed:
    print(f"{len(failed)} cell(s) failed; see their stdout.log", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
