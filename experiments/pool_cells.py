"""The calibration verdict pooled over several collected cells (sweeps).

  python experiments/pool_cells.py cal_brain44 cal_brain4 cal_radmix \
      --out docs/results/calibration_pooled.md

Reads each cell's collected folder (``docs/results/<cell>/``, written by
``experiments/collect_sweep.py``); cells still running are pooled as far as
they go and the report lists what is missing. See :mod:`ols_jax.study.pooled`.
"""

import argparse
import pathlib
import shlex
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent

import sweeps  # noqa: E402  (this folder is on sys.path when run as a script)
from ols_jax import fileio  # noqa: E402
from ols_jax.study import pooled  # noqa: E402
from ols_jax.study import sweep as sweep_lib  # noqa: E402


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("names", nargs="+", help=", ".join(s.name for s in sweeps.SWEEPS))
  p.add_argument("--results", default="", help="collected cells; default: docs/results")
  p.add_argument("--out", default="", help="default: docs/results/calibration_pooled.md")
  args = p.parse_args(argv)
  try:
    chosen = [sweep_lib.find(sweeps.SWEEPS, n) for n in args.names]
  except KeyError as e:
    p.error(str(e.args[0]))
  results = pathlib.Path(args.results or REPO / "docs" / "results")
  out = pathlib.Path(args.out or REPO / "docs" / "results" / "calibration_pooled.md")
  cells = [pooled.load_cell(s, results / s.name) for s in chosen]
  arms = list(dict.fromkeys(a.name for s in chosen for a in s.arms))
  command = "python experiments/pool_cells.py " + " ".join(shlex.quote(a) for a in argv)
  try:
    source = str(results.resolve().relative_to(REPO))
  except ValueError:
    source = str(results)
  text = pooled.report(cells, arms, command, source=source)
  out.parent.mkdir(parents=True, exist_ok=True)
  fileio.atomic_write_text(out, text)
  for c in cells:
    print(f"{c.name}: {c.runs} collected runs"
          + (f"; missing: {'; '.join(c.missing)}" if c.missing else "; complete"))
  print(f"pooled verdict: {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
