"""The regime study: which cells are over-confident, and OLS's effect across them.

Implements the analysis plan of ``docs/results/regime_plan.md``:

* the **regime rule** (:func:`regime_rule`): a cell is over-confident when CE
  seed 0, on seed 0's calibration half, has confidence minus accuracy above
  1 point and a fitted temperature above 1.05 (nothing from the reported half);
* the **per-cell effect** (:func:`cell_effects`): the paired per-seed
  difference OLS arm - other on each seed's reported half, its mean over seeds
  and the variance of that mean;
* the **claim about new datasets** (:func:`meta_row`): a random-effects
  meta-analysis over cells (:func:`ols_jax.study.meta.random_effects`), with a
  fixed-effect figure for these cells only;
* the **primary family** (:func:`primary_family`): OLS uniform against CE,
  CE + TS, LS, FLSD-53 and MbLS on NLL and ECE over the over-confident cells,
  Holm-adjusted together;
* the **regime map** (:func:`regime_map_rows`, :func:`report`);
* the **grid-edge check** (:func:`edge_rows`): seed-0 runs past a grid end
  where a kept setting sits, and whether one of them would have been kept.

Signed figures are always *OLS arm minus the other*: negative NLL / ECE /
error favours OLS.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Optional, Sequence

import numpy as np

from ols_jax.study import collected
from ols_jax.study import meta
from ols_jax.study import pooled
from ols_jax.study import stats
from ols_jax.study import sweep as sweep_lib
from ols_jax.study import sweep_report

GAP_THRESHOLD = sweep_report.PLAN_GAP                  # CE conf - acc above 1 point
TEMPERATURE_THRESHOLD = sweep_report.PLAN_TEMPERATURE  # and T above 1.05
RULE_SEED = sweep_report.PLAN_SEED

PRIMARY_ARM = "ols_uniform"
SECONDARY_ARMS = ("ols_momentum", "ols_mbls")
COMPARATORS = ("ce", "ce + TS", "ls", "flsd53", "mbls")
PRIMARY_METRICS = ("nll", "ece")
LABELS = {"nll": "NLL", "ece": "ECE (points)", "top1_error": "top-1 error (points)"}
SCALES = {"nll": 1.0, "ece": 100.0, "top1_error": 100.0}


@dataclasses.dataclass(frozen=True)
class Regime:
  """The regime rule's inputs and verdict for one cell.

  Attributes:
    cell: the cell's name.
    over_confident: the rule's verdict (False when CE seed 0 is missing).
    gap: CE seed 0's calibration-half confidence minus accuracy (NaN: missing).
    temperature: CE seed 0's fitted temperature (NaN: missing).
    train_size: training images of the cell (0: unknown).
  """
  cell: str
  over_confident: bool
  gap: float
  temperature: float
  train_size: int


def regime_rule(ce_run: Optional[dict]) -> tuple[bool, float, float]:
  """The plan's regime rule on one CE run (seed 0 of a cell).

  Args:
    ce_run: the run's ``results.json`` dict (``val`` is the calibration half
      under ``calibration_split = 'test_half'``), or None.

  Returns:
    ``(over_confident, gap, temperature)``; ``(False, nan, nan)`` for None.
    Defined once, in :func:`ols_jax.study.sweep_report.plan_regime`.
  """
  return sweep_report.plan_regime(ce_run)


def cell_regime(cell: pooled.Cell, reference: str = "ce") -> Regime:
  """:func:`regime_rule` on the cell's CE seed-0 run."""
  runs = cell.kept.get(reference, {})
  ce = runs.get(RULE_SEED)
  ok, gap, t = regime_rule(ce)
  any_run = ce or next(iter(runs.values()), None)
  size = int((any_run or {}).get("split_sizes", {}).get("train", 0))
  return Regime(cell.name, ok, gap, t, size)


def _getter(against: str, metric: str, reference: str = "ce"):
  """``(arm, run -> value)`` of the comparator; CE + TS reads the TS metric."""
  if against == f"{reference} + TS":
    return reference, lambda r: pooled.test_metric(r, metric + "_ts")
  return against, lambda r: pooled.test_metric(r, metric)


def per_seed_diffs(cell: pooled.Cell, arm: str, against: str, metric: str,
                   reference: str = "ce") -> dict[int, float]:
  """``{seed: metric(arm) - metric(against)}`` on each seed's reported half.

  ``against`` may be ``'ce + TS'``: CE's metric after temperature scaling; the
  arm's metric is always raw. Seeds where either run is missing, or a value
  is NaN, are left out.
  """
  a, get_a = _getter(against, metric, reference)
  ra, rb = cell.kept.get(a, {}), cell.kept.get(arm, {})
  out = {}
  for s in sorted(set(ra) & set(rb)):
    d = pooled.test_metric(rb[s], metric) - get_a(ra[s])
    if not np.isnan(d):
      out[s] = float(d)
  return out


@dataclasses.dataclass(frozen=True)
class CellEffect:
  """One cell's paired effect.

  Attributes:
    cell: cell name.
    diffs: ``{seed: difference}``.
    mean: mean over seeds.
    var: variance of that mean, ``var(d, ddof=1) / n`` (NaN for one seed).
    interval: Student-t interval over seeds.
  """
  cell: str
  diffs: dict
  mean: float
  var: float
  interval: stats.Interval


def cell_effects(cells: Sequence[pooled.Cell], arm: str, against: str, metric: str,
                 reference: str = "ce") -> list[CellEffect]:
  """The cells (in order) with at least one paired seed, and their effects."""
  out = []
  for c in cells:
    d = per_seed_diffs(c, arm, against, metric, reference)
    if not d:
      continue
    vals = list(d.values())
    var = float(np.var(vals, ddof=1) / len(vals)) if len(vals) > 1 else float("nan")
    out.append(CellEffect(c.name, d, float(np.mean(vals)), var, stats.t_interval(vals)))
  return out


@dataclasses.dataclass(frozen=True)
class MetaRow:
  """One across-cells comparison.

  Attributes:
    arm, against, metric: what is compared.
    cells: the cells that entered (at least two seeds each).
    result: the random-effects result, or None with fewer than two cells.
    why: why there is no result (empty when there is one).
    left_out: ``(cell, reason)`` of the cells with paired seeds that did not
      enter (one seed only, or zero spread over seeds: identical differences,
      whose inverse-variance weight is infinite).
  """
  arm: str
  against: str
  metric: str
  cells: tuple
  result: Optional[meta.MetaResult]
  why: str = ""
  left_out: tuple = ()


def meta_row(cells: Sequence[pooled.Cell], arm: str, against: str, metric: str,
             reference: str = "ce") -> MetaRow:
  """Random-effects meta-analysis of ``arm - against`` on ``metric`` over ``cells``.

  A cell enters with at least two paired seeds whose differences are not all
  equal (its within-cell variance is estimated from them); the others are
  named in ``left_out``.
  """
  eff, left_out = [], []
  for e in cell_effects(cells, arm, against, metric, reference):
    if len(e.diffs) < 2:
      left_out.append((e.cell, "one paired seed"))
    elif not e.var > 0:
      left_out.append((e.cell, f"zero spread: difference {e.mean:+.4g} on all "
                               f"{len(e.diffs)} seeds"))
    else:
      eff.append(e)
  names, left_out = tuple(e.cell for e in eff), tuple(left_out)
  if len(eff) < 2:
    return MetaRow(arm, against, metric, names, None,
                   f"{len(eff)} cell{'s' if len(eff) != 1 else ''} with two paired "
                   "seeds; at least 2 needed", left_out)
  res = meta.random_effects([e.mean for e in eff], [e.var for e in eff])
  return MetaRow(arm, against, metric, names, res, left_out=left_out)


def over_confident(cells: Sequence[pooled.Cell], reference: str = "ce") -> list[pooled.Cell]:
  """The cells the regime rule admits, in order."""
  return [c for c in cells if cell_regime(c, reference).over_confident]


def primary_family(cells: Sequence[pooled.Cell], reference: str = "ce"
                   ) -> list[tuple[MetaRow, float]]:
  """The plan's primary family with Holm-adjusted p-values.

  OLS uniform against each of :data:`COMPARATORS` on NLL and ECE, each a
  random-effects meta-analysis over the over-confident cells; the
  Hartung-Knapp p-values of the rows that have a result are adjusted together.

  Returns:
    ``[(row, holm_p)]`` in family order (NaN for a row without a result).
  """
  hot = over_confident(cells, reference)
  rows = [meta_row(hot, PRIMARY_ARM, against, m, reference)
          for against in COMPARATORS for m in PRIMARY_METRICS]
  p = [r.result.p if r.result is not None else float("nan") for r in rows]
  return list(zip(rows, (float(x) for x in stats.holm(p))))


def _fmt(x: float, scale: float, digits: int) -> str:
  return "n/a" if np.isnan(x) else f"{scale * x:+.{digits}f}"


def _digits(metric: str) -> int:
  return 3 if SCALES[metric] == 1.0 else 2


def _words(iv: stats.Interval, arm: str, against: str) -> str:
  if iv.missing or not np.isfinite(iv.low):
    return "none"
  if iv.includes_zero:
    return "not resolved"
  return f"{arm} {'lower' if iv.estimate < 0 else 'higher'}"


def meta_table(rows: Sequence[tuple[MetaRow, float]], numbered: bool = False) -> str:
  """Markdown table of meta rows (``holm_p`` NaN: not in a family)."""
  head = ("| " + ("# | " if numbered else "") + "comparison | metric | cells (k) | "
          "random-effects mean [HK 95%] | tau^2 | I^2 | 95% prediction interval (new cell) | "
          "fixed effect [95%], these cells only | HK p | "
          + ("Holm p | " if numbered else "") + "verdict |")
  cols = head.count("|") - 1
  lines = [head, "|" + "---|" * cols]
  for i, (r, holm_p) in enumerate(rows, 1):
    s, dg = SCALES[r.metric], _digits(r.metric)
    lead = f"| {i} | " if numbered else "| "
    name = f"{r.arm} - {r.against}"
    out = "".join(f"; left out: {c} ({why})" for c, why in r.left_out)
    if r.result is None:
      lines.append(lead + f"{name} | {LABELS[r.metric]} | {len(r.cells)}{out} | "
                   f"none ({r.why}) | "
                   + " | ".join(["n/a"] * (cols - 5)) + " | none |")
      continue
    m = r.result
    pred = ("n/a (k < 3)" if np.isnan(m.pred_low)
            else f"[{_fmt(m.pred_low, s, dg)}, {_fmt(m.pred_high, s, dg)}]")
    if numbered:
      verdict = ("not resolved" if not holm_p <= 0.05
                 else f"{r.arm} {'lower' if m.estimate < 0 else 'higher'}")
    else:
      verdict = _words(m.interval, r.arm, r.against)
    lines.append(
        lead + f"{name} | {LABELS[r.metric]} | {m.k} ({', '.join(r.cells)}{out}) | "
        f"{m.interval.format(s, dg)} | {s * s * m.tau2:.4g} | {100 * m.i2:.0f}% | {pred} | "
        f"{m.fixed.format(s, dg)} | {m.p:.4f} | " + (f"{holm_p:.4f} | " if numbered else "")
        + f"{verdict} |")
  return "\n".join(lines)


def regime_table(cells: Sequence[pooled.Cell], expected_runs: dict[str, int],
                 reference: str = "ce") -> str:
  """Per cell: runs collected, the rule's inputs, its verdict, the cost."""
  lines = ["| cell | training images | runs collected | CE seed 0 calibration-half conf - acc "
           "(points) | CE seed 0 temperature | over-confident by the rule | wall-clock sum (h) "
           "| mean per run (min) |", "|---|---|---|---|---|---|---|---|"]
  for c in cells:
    g = cell_regime(c, reference)
    mean = f"{c.wall_time_s / c.runs / 60:.1f}" if c.runs else "n/a"
    if not np.isnan(g.gap):
      verdict = "**yes**" if g.over_confident else "no"
    else:
      verdict = "n/a (no kept CE seed 0)" if c.kept else "n/a (not tuned yet)"
    lines.append(f"| {c.name} | {g.train_size or 'n/a'} | {c.runs} of "
                 f"{expected_runs.get(c.name, '?')} | {_fmt(g.gap, 100, 2)} | "
                 f"{'n/a' if np.isnan(g.temperature) else f'{g.temperature:.2f}'} | {verdict} | "
                 f"{c.wall_time_s / 3600:.2f} | {mean} |")
  return "\n".join(lines)


MAP_COMPARISONS = (("ce", "nll"), ("ce + TS", "nll"), ("ce", "ece"), ("ce + TS", "ece"))


def regime_map_rows(cells: Sequence[pooled.Cell], arm: str = PRIMARY_ARM,
                    reference: str = "ce") -> list[dict]:
  """Per cell: the rule's inputs and OLS - CE / OLS - (CE + TS) on NLL and ECE.

  Returns:
    One dict per cell with ``cell``, ``regime`` (:class:`Regime`) and, per
    ``(against, metric)`` of :data:`MAP_COMPARISONS`, a :class:`CellEffect`
    or None.
  """
  out = []
  for c in cells:
    row = {"cell": c.name, "regime": cell_regime(c, reference)}
    for against, m in MAP_COMPARISONS:
      eff = cell_effects([c], arm, against, m, reference)
      row[(against, m)] = eff[0] if eff else None
    out.append(row)
  return out


def _bootstrap(cell: pooled.Cell, arm: str, against: str, metric: str,
               num_resamples: int, reference: str = "ce") -> Optional[stats.Interval]:
  """Two-level bootstrap (seeds, then reported examples) of the cell effect."""
  a, _ = _getter(against, metric, reference)
  ra, rb = cell.kept.get(a, {}), cell.kept.get(arm, {})
  name_a = metric + "_ts" if against == f"{reference} + TS" else metric
  pairs = []
  for s in sorted(set(ra) & set(rb)):
    rec_a, rec_b = ra[s].get("records"), rb[s].get("records")
    if not (stats.available(rec_a, name_a) and stats.available(rec_b, metric)):
      return None
    pairs.append((rec_a, rec_b))
  if len(pairs) < 2:
    return None
  iv, _ = meta.two_level_bootstrap(pairs, metric, name_a=name_a,
                                   num_resamples=num_resamples, seed=0)
  return iv


def map_table(rows: Sequence[dict], cells: Sequence[pooled.Cell], arm: str = PRIMARY_ARM,
              num_resamples: int = 1000) -> str:
  """The regime map as a table: t interval over seeds and the bootstrap check."""
  by_name = {c.name: c for c in cells}
  head = ["| cell | over-confident | T (CE seed 0) | training images | "
          + " | ".join(f"{arm} - ({a}) {LABELS[m]}" for a, m in MAP_COMPARISONS) + " |",
          "|---|---|---|---|" + "---|" * len(MAP_COMPARISONS)]
  for r in rows:
    g = r["regime"]
    cells_txt = []
    for a, m in MAP_COMPARISONS:
      e = r[(a, m)]
      if e is None:
        cells_txt.append("n/a")
        continue
      s, dg = SCALES[m], _digits(m)
      boot = (_bootstrap(by_name[r["cell"]], arm, a, m, num_resamples)
              if num_resamples else None)
      txt = f"{e.interval.format(s, dg)} ({len(e.diffs)} seeds)"
      if boot is not None:
        txt += f"; bootstrap [{_fmt(boot.low, s, dg)}, {_fmt(boot.high, s, dg)}]"
      cells_txt.append(txt)
    t = "n/a" if np.isnan(g.temperature) else f"{g.temperature:.2f}"
    oc = "n/a" if np.isnan(g.gap) else ("yes" if g.over_confident else "no")
    head.append(f"| {r['cell']} | {oc} | {t} | "
                f"{g.train_size or 'n/a'} | " + " | ".join(cells_txt) + " |")
  return "\n".join(head)


def regime_map_figure(rows: Sequence[dict], path, arm: str = PRIMARY_ARM) -> str:
  """Four panels: OLS - CE and OLS - (CE + TS) on NLL and ECE against CE's T.

  Filled markers: over-confident cells; hollow: rejected by the rule. Error
  bars: the t interval over seeds; each point is labelled with its cell and
  training-set size.
  """
  from ols_jax import plots  # pylint: disable=import-outside-toplevel
  fig = plots._figure(figsize=(10, 7.5))  # pylint: disable=protected-access
  fig.subplots_adjust(hspace=0.4, wspace=0.3)
  for i, (a, m) in enumerate(MAP_COMPARISONS):
    ax = fig.add_subplot(2, 2, i + 1)
    s = SCALES[m]
    for r in rows:
      e, g = r[(a, m)], r["regime"]
      if e is None or np.isnan(g.temperature):
        continue
      lo = e.interval.low if np.isfinite(e.interval.low) else e.mean
      hi = e.interval.high if np.isfinite(e.interval.high) else e.mean
      face = "C0" if g.over_confident else "white"
      ax.errorbar([g.temperature], [s * e.mean], yerr=[[s * (e.mean - lo)], [s * (hi - e.mean)]],
                  fmt="o", color="C0", markerfacecolor=face, capsize=3)
      ax.annotate(f"{r['cell'].replace('reg_', '')} ({g.train_size})",
                  (g.temperature, s * e.mean), textcoords="offset points", xytext=(5, 4),
                  fontsize=7)
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.axvline(TEMPERATURE_THRESHOLD, color="0.8", lw=0.8, ls="--")
    ax.set_xlabel("CE seed-0 temperature (calibration half)")
    ax.set_ylabel(f"{arm} - ({a}), {LABELS[m]}")
    ax.set_title(f"{LABELS[m]} vs {a}", fontsize=9)
  fig.suptitle("Regime map: negative = OLS lower (filled: over-confident cell; "
               "bars: 95% t over seeds)", fontsize=9)
  return plots._save(fig, path)  # pylint: disable=protected-access


def secondary_rows(cells: Sequence[pooled.Cell], reference: str = "ce"
                   ) -> list[tuple[str, list[tuple[MetaRow, float]]]]:
  """``(title, rows)`` of the secondary comparisons (not in the family)."""
  hot = over_confident(cells, reference)
  hot_names = {c.name for c in hot}
  cold = [c for c in cells if c.name not in hot_names]
  nan = float("nan")
  out = []
  new = [(meta_row(hot, arm, against, m, reference), nan)
         for arm in SECONDARY_ARMS for against in COMPARATORS + (PRIMARY_ARM,)
         for m in PRIMARY_METRICS]
  out.append(("The new OLS arms, over the over-confident cells", new))
  for title, group in (("every cell", list(cells)), ("the over-confident cells", hot),
                       ("the cells the rule rejects", cold)):
    rows = [(meta_row(group, arm, against, m, reference), nan)
            for m in ("top1_error", "nll") for arm in (PRIMARY_ARM,) + SECONDARY_ARMS
            for against in (COMPARATORS if m == "nll" else
                            tuple(x for x in COMPARATORS if x != "ce + TS"))]
    out.append((f"Top-1 error (the cost) and NLL over {title}", rows))
  return out


def edge_rows(selection: dict, edge: sweep_lib.Sweep, edge_folder) -> list[dict]:
  """Each checked grid edge of one cell: the kept setting against those past it.

  Args:
    selection: the cell's ``selection.json`` (kept candidate and seed-0 scores).
    edge: the cell's edge check (:func:`ols_jax.study.sweep.edge_check`).
    edge_folder: where the check's runs are collected (may not exist yet).

  Returns:
    One dict per arm of ``edge``: ``arm``, ``field``, ``kept`` (value),
    ``kept_score`` ``(val metric, val top-1 error)``, ``beyond`` (list of
    ``(value, score or None)``), and ``status``: ``'binding'`` when a setting
    past the edge has a lower (metric, error) than the kept one (the cell's
    selection rule would have moved), ``'not binding'`` when every one has
    run and none does, ``'not run yet'`` otherwise.
  """
  metric = edge.select_metric
  rows = []
  for arm in edge.arms:
    (field, _), = arm.grid
    chosen = selection["arms"][arm.name]
    got = chosen["scores"][chosen["folder"]]
    kept = (got[f"val_{metric}"], got["val_top1_error"])
    beyond = []
    for cand in arm.candidates():
      cell = arm.cell(edge.model, edge.tuning_seed, cand)
      run = collected.load_run(pathlib.Path(edge_folder), edge.model, cell.folder,
                               edge.tuning_seed, details=False)
      score = None if run is None else (run["val"][metric], run["val"]["top1_error"])
      beyond.append((dict(cand)[field], score))
    if any(b is not None and b < kept for _, b in beyond):
      status = "binding"
    else:
      status = "not binding" if all(b is not None for _, b in beyond) else "not run yet"
    rows.append({"arm": arm.name, "field": field, "kept": dict(chosen["candidate"])[field],
                 "kept_score": kept, "beyond": beyond, "status": status})
  return rows


def extended_setting(row: dict) -> Optional[tuple[str, Any]]:
  """``(field, value)`` the selection rule keeps over a binding edge's extended
  grid (the kept setting and those past it), else None."""
  if row["status"] != "binding":
    return None
  scored = [(b, v) for v, b in row["beyond"] if b is not None]
  return row["field"], min(scored)[1]


def extended_settings(rows: Sequence[dict]) -> dict[str, tuple[str, Any]]:
  """``{arm: (field, value)}`` of the binding edges among :func:`edge_rows`."""
  return {r["arm"]: extended_setting(r) for r in rows if extended_setting(r) is not None}


def extended_cell(cell: pooled.Cell, sweep: sweep_lib.Sweep,
                  settings: dict[str, tuple[str, Any]], edge_folder, ext_folder) -> pooled.Cell:
  """``cell`` with each arm in ``settings`` on its extended-grid setting.

  Args:
    cell: the loaded cell (plan grids).
    sweep: the cell's sweep (its arms name the run folders).
    settings: ``{arm: (field, value)}`` (:func:`extended_settings`).
    edge_folder: the collected edge check (seed 0 of each setting).
    ext_folder: the collected extension (the other seeds).

  Returns:
    A copy of ``cell`` whose ``kept`` runs of those arms are seed 0 from the
    edge check and the other seeds from the extension; an arm whose seeds are
    not all collected keeps its plan-grid runs and is listed in ``missing``.
  """
  kept = dict(cell.kept)
  missing = list(cell.missing)
  arms = {a.name: a for a in sweep.arms}
  for arm, (field, value) in settings.items():
    folder = arms[arm].cell(sweep.model, sweep.tuning_seed, ((field, value),)).folder
    runs = {}
    for seed in sorted(cell.kept.get(arm, {})):
      base = edge_folder if seed == sweep.tuning_seed else ext_folder
      run = collected.load_run(pathlib.Path(base), sweep.model, folder, seed)
      if run is not None:
        runs[seed] = run
    lost = sorted(set(cell.kept.get(arm, {})) - set(runs))
    if lost:  # a partial extension is not used: the arm stays on the plan's grid
      missing.append(f"{arm} (extended grid, {field} = {value:g}): seed "
                     f"{', '.join(map(str, lost))} not collected; plan-grid runs used")
      continue
    kept[arm] = runs
  return dataclasses.replace(cell, kept=kept, missing=missing)


def edge_table(cells: Sequence[tuple[str, list[dict]]], metric: str = "nll") -> str:
  """Markdown of :func:`edge_rows` for every cell (``(cell name, rows)``)."""
  lines = [f"| cell | arm | kept setting: calibration-half {metric.upper()} (top-1 err %) | "
           "past the grid's end | would the kept setting move? |", "|---|---|---|---|---|"]
  for name, rows in cells:
    for r in rows:
      past = "; ".join(f"{r['field']} = {v:g}: " + ("not run yet" if b is None else
                                                     f"{b[0]:.4f} ({100 * b[1]:.2f})")
                       for v, b in r["beyond"])
      k = r["kept_score"]
      words = {"binding": "**yes** (the edge binds)", "not binding": "no",
               "not run yet": "not known yet"}[r["status"]]
      lines.append(f"| {name} | {r['arm']} | {r['field']} = {r['kept']:g}: {k[0]:.4f} "
                   f"({100 * k[1]:.2f}) | {past} | {words} |")
  return "\n".join(lines)


def report(cells: Sequence[pooled.Cell], expected_runs: dict[str, int], command: str,
           figure: str = "regime_map.png", num_resamples: int = 1000,
           edges: Sequence[tuple[str, list[dict]]] = (),
           sensitivity: Sequence[pooled.Cell] = (),
           extended: Sequence[str] = ()) -> str:
  """The regime study's across-cells report as markdown.

  Args:
    cells: the loaded cells (:func:`ols_jax.study.pooled.load_cell`), plan order.
    expected_runs: planned runs per cell (for the "runs collected" column).
    command: the exact command that made the file.
    figure: the regime-map figure's file name (beside the report).
    num_resamples: two-level bootstrap resamples of the map table (0: none).
    edges: ``(cell, edge_rows(...))`` of the cells whose kept settings are known;
      a "Grid-edge check" section when any has a checked edge.
    sensitivity: the cells with binding edges on their extended-grid settings
      (:func:`extended_cell`; the others as they are), for a sensitivity family.
    extended: one line per (cell, arm) on an extended-grid setting in it.
  """
  hot = over_confident(cells)
  family = primary_family(cells)
  parts = [
      "# The regime study across cells: when does OLS help?", "",
      f"Generated by `{command}` from the collected per-run files of each cell "
      "(`docs/results/<cell>/`). The analysis plan, fixed before the first run was "
      "collected, is `docs/results/regime_plan.md`; this file applies it.", "",
      "Signed figures are **OLS arm minus the other arm** on each seed's reported half of "
      "the test split (negative NLL / ECE / error = OLS lower). Within a cell: mean over "
      "seeds of the paired difference, Student-t interval; seeds draw their own "
      "calibration/reported halves, so the spread carries the test sample's noise too. "
      "Across cells (the claim about a new dataset): cells are the units, a "
      "DerSimonian-Laird random-effects meta-analysis of the cell means with within-cell "
      "variance var(d)/n, a Hartung-Knapp interval (k - 1 df) and a prediction interval for "
      "a new cell (k - 2 df). The fixed-effect (inverse-variance) figure describes **these "
      "cells only**. \"Not resolved\" = the interval includes 0 (in the primary family: Holm p "
      "above 0.05, whatever the unadjusted interval).", "",
      "## Cells, the regime rule and the cost", "",
      f"Rule (plan): over-confident when CE seed 0 has calibration-half conf - acc above "
      f"{100 * GAP_THRESHOLD:.0f} point and temperature above {TEMPERATURE_THRESHOLD}. Host "
      "of every run: see each run's `host` record (the cells here ran on Intel Xeon, 2 "
      "cores, one XLA device per run, two runs sharing the cores, 2026-12). Wall-clock: sum of `wall_time_s` over the cell's "
      "collected runs.", "", regime_table(cells, expected_runs), "",
      "Over-confident cells: " + (", ".join(c.name for c in hot) if hot else "none") + ".", ""]
  missing = [f"- {c.name}: {m}" for c in cells for m in c.missing]
  parts += ["## Missing", "", "\n".join(missing) if missing else "Nothing.", ""]
  parts += ["## Primary family (Holm over its rows, family-wise 5%)", "",
            f"OLS uniform against CE, CE + TS, LS, FLSD-53 and MbLS on reported-half NLL and "
            f"ECE (15 bins), over the over-confident cells. CE + TS: CE's metric after "
            f"temperature scaling; every other arm raw. Verdict column: Holm-adjusted p at "
            f"most 0.05.", "", meta_table(family, numbered=True), ""]
  for title, rows in secondary_rows(cells):
    parts += [f"## Secondary: {title}", "", "Not in the family: each row's own 95% "
              "Hartung-Knapp interval.", "", meta_table(rows), ""]
  rows = regime_map_rows(cells)
  parts += ["## Regime map", "",
            f"Per cell, OLS uniform - CE and OLS uniform - (CE + TS), mean over seeds [95% t "
            f"interval] and, as a check, a two-level bootstrap interval ({num_resamples} "
            f"resamples of seeds, then of reported examples within each seed). Figure: "
            f"`{figure}`.", "", map_table(rows, cells, num_resamples=num_resamples), ""]
  if any(r for _, r in edges):
    parts += ["## Grid-edge check (plan note of 2026-12-07)", "",
              "Where the kept setting of LS, MbLS or OLS uniform sits on an end of its grid, "
              "seed 0 runs the settings one step past that end (`python experiments/sweeps.py "
              "edge_<cell>`, collected in `docs/results/edge_<cell>/`). \"Yes\" means the "
              "cell's selection rule (lowest calibration-half NLL, ties: lower error) would "
              "have kept a setting outside the plan's grid: that arm's figures are of a "
              "setting the grid cut short. The kept settings are not changed.", "",
              edge_table(edges), ""]
  if sensitivity and extended:
    parts += ["## Sensitivity: the primary family with extended grids (plan note of "
              "2026-12-07)", "",
              "The primary family recomputed with each binding arm on the setting its cell's "
              "rule keeps over the extended grid (seed 0 from the edge check, seeds 1-4 from "
              "`docs/results/ext_<cell>/`); beside the primary family, never instead of it. "
              "Arms on extended settings:", "", "\n".join(f"- {e}" for e in extended), ""]
    changed = any(c.kept.get(a) is not p.kept.get(a) for c, p in zip(sensitivity, cells)
                  for a in c.kept)
    parts += ([meta_table(primary_family(sensitivity), numbered=True), ""] if changed else
              ["No extended setting has all its seeds collected yet: no family to recompute.",
               ""])
    moved = [c for c, p in zip(sensitivity, cells) if c.kept.get(PRIMARY_ARM) is not
             p.kept.get(PRIMARY_ARM)]
    if moved:
      parts += ["Per cell, OLS uniform on its extended-grid setting (t intervals; no bootstrap "
                "column):", "", map_table(regime_map_rows(moved), moved, num_resamples=0), ""]
  return "\n".join(parts)
