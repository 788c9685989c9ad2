"""The regime study across cells: regime rule, random-effects meta-analysis, regime map.

  python experiments/regime_meta.py            # every reg_* cell of the plan

Reads each collected cell (``docs/results/<cell>/``, written by
``experiments/collect_sweep.py``), applies ``docs/results/regime_plan.md`` and
writes ``docs/results/regime_meta.md`` and ``docs/results/regime_map.png``.
Cells not collected yet are listed as missing. See :mod:`ols_jax.study.regime`.
"""

import argparse
import pathlib
import shlex
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent

import sweeps  # noqa: E402  (this folder is on sys.path when run as a script)
from ols_jax import fileio  # noqa: E402
from ols_jax.study import pooled  # noqa: E402
from ols_jax.study import regime  # noqa: E402
from ols_jax.study import sweep as sweep_lib  # noqa: E402


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("names", nargs="*",
                 help="cells (default: every reg_* cell): "
                      + ", ".join(s.name for s in sweeps.REGIME_CELLS))
  p.add_argument("--results", default="", help="collected cells; default: docs/results")
  p.add_argument("--out", default="", help="default: docs/results/regime_meta.md")
  p.add_argument("--num_resamples", type=int, default=1000,
                 help="two-level bootstrap resamples of the map table (0: none)")
  args = p.parse_args(argv)
  try:
    chosen = ([sweep_lib.find(sweeps.SWEEPS, n) for n in args.names] if args.names
              else list(sweeps.REGIME_CELLS))
  except KeyError as e:
    p.error(str(e.args[0]))
  if args.num_resamples < 0:
    p.error(f"--num_resamples: expected >= 0, got {args.num_resamples}")
  results = pathlib.Path(args.results or REPO / "docs" / "results")
  out = pathlib.Path(args.out or REPO / "docs" / "results" / "regime_meta.md")
  cells = [pooled.load_cell(s, results / s.name) for s in chosen]
  expected = {s.name: len(s.tuning_cells()) + len(s.arms) * (len(s.seeds) - 1) for s in chosen}
  command = "python experiments/regime_meta.py " + " ".join(shlex.quote(a) for a in argv)
  figure = out.with_name(out.stem.replace("_meta", "") + "_map.png")
  edges, sensitivity, extended = [], [], []
  for s, cell in zip(chosen, cells):
    try:
      selection = sweeps.selection_of(s, results)
    except FileNotFoundError:  # not tuned yet: no edges to check
      sensitivity.append(cell)
      continue
    check = sweeps.edge_of(s, selection)
    rows = regime.edge_rows(selection, check, results / check.name)
    edges.append((s.name, rows))
    settings = regime.extended_settings(rows)
    ext = regime.extended_cell(cell, s, settings, results / check.name,
                               results / (sweeps.EXT_PREFIX + s.name))
    sensitivity.append(ext)
    for arm, (field, value) in settings.items():
      used = ext.kept.get(arm) is not cell.kept.get(arm)
      extended.append(f"{s.name}: {arm} {field} = {value:g} (plan grid kept "
                      f"{dict(selection['arms'][arm]['candidate'])[field]:g})"
                      + ("" if used else ": seeds 1-4 not collected yet, plan-grid runs used"))
  text = regime.report(cells, expected, command.strip(), figure=figure.name,
                       num_resamples=args.num_resamples, edges=edges,
                       sensitivity=sensitivity, extended=extended)
  out.parent.mkdir(parents=True, exist_ok=True)
  regime.regime_map_figure(regime.regime_map_rows(cells), figure)
  fileio.atomic_write_text(out, text)
  for c in cells:
    g = regime.cell_regime(c)
    print(f"{c.name}: {c.runs} of {expected[c.name]} runs; over-confident: "
          f"{'yes' if g.over_confident else 'no'}")
  print(f"regime report: {out}\nregime map: {figure}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
