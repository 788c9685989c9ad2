"""The pooled verdict: paired differences over every (cell, seed) of several sweeps.

Each cell is a collected tuned comparison (``docs/results/<sweep>/``, read by
:mod:`ols_jax.study.sweep_report`). A *pair* is one cell and one seed on which both
arms of a comparison finished; its difference is ``value(b) - value(a)`` on
that cell's reported test split (same examples, same seed). Over the pairs of
all cells the mean difference gets a Student-t interval (n - 1 degrees of
freedom), the pairs treated as independent draws: cells differ in dataset
and size, so the interval is of the average effect over these cells, not of
any one of them.

Calibration errors (ECE, adaptive ECE) carry a verdict only over the cells
where CE is in the over-confident regime on every finished seed
(:func:`ols_jax.study.sweep_report.ce_regime`): elsewhere calibration methods have
nothing to fix and a difference says little about them. Their all-cells
interval is still printed, as a description.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Callable, Optional, Sequence

import numpy as np

from ols_jax.study import collected
from ols_jax.study import stats
from ols_jax.study import sweep as sweep_lib
from ols_jax.study import sweep_report


@dataclasses.dataclass(frozen=True)
class Quantity:
  """One pooled number of a run.

  Attributes:
    key: identifier (a :data:`ols_jax.study.stats.METRICS` name for test metrics).
    label: row label.
    scale: display factor (100 = points).
    lower_is_better: direction of "better".
    calibration: a calibration error (verdict only in over-confident cells).
    get: ``run -> value`` (NaN when the run lacks it).
    ts_key: the key of the same quantity after temperature scaling, for the
      comparison against CE + TS (None: no such comparison).
  """
  key: str
  label: str
  scale: float
  lower_is_better: bool
  calibration: bool
  get: Callable[[dict], float]
  ts_key: Optional[str] = None


def test_metric(run: dict, name: str) -> float:
  """A test metric of one run: from its per-example records, else results.json.

  ``name`` is a :data:`ols_jax.study.stats.METRICS` name (``'_ts'``: after TS).
  """
  rec = run.get("records")
  if rec is not None and stats.available(rec, name):
    return stats.metric(rec, name)
  split, key = ("test_ts", name[:-3]) if name.endswith("_ts") else ("test", name)
  value = (run.get(split) or {}).get(key)
  return float(value) if value is not None else float("nan")


def quantities(cells: Sequence["Cell"]) -> list[Quantity]:
  """Test metrics (raw and after TS), shift averages and far-OOD AUROCs."""
  out = []
  for m, label, scale in sweep_report.CAL_VERDICT:
    calib = m in sweep_report.CALIBRATION_ERRORS
    if m == "top1_error":
      out.append(Quantity(m, label, scale, True, False, lambda r, m=m: test_metric(r, m)))
      continue
    out.append(Quantity(m, label, scale, True, calib, lambda r, m=m: test_metric(r, m),
                        ts_key=m + "_ts"))
    out.append(Quantity(m + "_ts", label.replace(" (", " after TS (") if "(" in label
                        else label + " after TS", scale, True, calib,
                        lambda r, m=m: test_metric(r, m + "_ts")))
  runs = [r for c in cells for rs in c.kept.values() for r in rs.values()]
  if any(r.get("shift") for r in runs):
    out += [Quantity("shift_ece", "mean shifted ECE (points)", 100, True, False,
                     lambda r: sweep_report.shift_mean(r, "ece"), ts_key="shift_ece_ts"),
            Quantity("shift_ece_ts", "mean shifted ECE after TS (points)", 100, True, False,
                     lambda r: sweep_report.shift_mean(r, "ece_ts")),
            Quantity("shift_top1_error", "mean shifted top-1 error (points)", 100, True, False,
                     lambda r: sweep_report.shift_mean(r, "top1_error"))]
  keys = list(dict.fromkeys(
      (s, sc) for c in cells for s, sc in sweep_report.ood_keys(c.kept)))
  for set_name, score in sorted(keys, key=lambda k: (k[1] != "mahalanobis", k[1] != "msp",
                                                     k[1], k[0])):
    out.append(Quantity(f"ood_{set_name}_{score}", f"OOD AUROC {set_name} {score} (points)",
                        100, False, False,
                        lambda r, s=set_name, sc=score: sweep_report.ood_auroc(r, s, sc)))
  return out


@dataclasses.dataclass
class Cell:
  """One collected sweep: its kept runs, what is missing, CE's regime, wall-clock."""
  name: str
  folder: pathlib.Path
  kept: dict[str, dict[int, dict]]
  missing: list[str]
  regime: dict[int, tuple[bool, str]]
  wall_time_s: float
  runs: int

  @property
  def over_confident(self) -> bool:
    """CE finished on some seed and is in the over-confident regime on each."""
    return bool(self.regime) and all(ok for ok, _ in self.regime.values())


def load_cell(sweep: sweep_lib.Sweep, folder: pathlib.Path, reference: str = "ce") -> Cell:
  """Reads a (possibly partial) collected sweep folder; lists what is missing."""
  folder = pathlib.Path(folder)
  missing, kept = [], {}
  results = collected.load_all(folder, sweep.model)
  wall = float(sum(r.get("wall_time_s", 0.0) for r in results))
  if not folder.is_dir():
    missing.append("not collected yet (no folder)")
  elif not (folder / "selection.json").exists():
    missing.append("no selection.json yet (no arm has finished tuning)")
  else:
    kept = sweep_report.kept_runs(sweep, folder)
    for arm in sweep.arms:
      if arm.name not in kept:
        missing.append(f"{arm.name}: tuning not finished (no kept setting)")
        continue
      lost = [s for s in sweep.seeds if s not in kept[arm.name]]
      if lost:
        missing.append(f"{arm.name}: seed {', '.join(map(str, lost))} not finished")
      norec = [s for s, r in sorted(kept[arm.name].items()) if r.get("records") is None]
      if norec:
        missing.append(f"{arm.name}: no per-example records for seed "
                       f"{', '.join(map(str, norec))} (results.json values used)")
  regime = {s: sweep_report.ce_regime(r) for s, r in sorted(kept.get(reference, {}).items())}
  return Cell(sweep.name, folder, kept, missing, regime, wall, len(results))


@dataclasses.dataclass(frozen=True)
class Pairs:
  """The paired differences of one comparison and quantity, over (cell, seed)."""
  diffs: tuple[tuple[str, int, float], ...]   # (cell, seed, b - a)

  @property
  def values(self) -> list[float]:
    return [d for _, _, d in self.diffs]

  def only(self, cells: set[str]) -> "Pairs":
    return Pairs(tuple(d for d in self.diffs if d[0] in cells))

  def interval(self, level: float = 0.95) -> stats.Interval:
    return stats.t_interval(self.values, level) if self.diffs else stats.Interval(
        float("nan"), float("nan"), float("nan"))

  def counts(self, cells: Sequence[str]) -> str:
    per = {c: sum(1 for d in self.diffs if d[0] == c) for c in cells}
    return f"{len(self.diffs)} (" + ", ".join(f"{c} {n}" for c, n in per.items()) + ")"


def pairs(cells: Sequence[Cell], a: str, b: str, get_a: Callable[[dict], float],
          get_b: Callable[[dict], float]) -> Pairs:
  """``get_b(b) - get_a(a)`` on every (cell, seed) where both have a value."""
  out = []
  for c in cells:
    ra, rb = c.kept.get(a, {}), c.kept.get(b, {})
    for s in sorted(set(ra) & set(rb)):
      d = get_b(rb[s]) - get_a(ra[s])
      if not np.isnan(d):
        out.append((c.name, s, float(d)))
  return Pairs(tuple(out))


def _direction(diff: float, b: str, a: str, lower_is_better: bool) -> str:
  """"b better/worse than a" for a resolved difference ``b - a``."""
  better = (diff < 0) == lower_is_better
  return f"{b} {'better' if better else 'worse'} than {a}"


def _verdict(p: Pairs, b: str, a: str, lower_is_better: bool) -> str:
  iv = p.interval()
  if len(p.diffs) < 2:
    return "none: fewer than two pairs"
  if iv.includes_zero:
    return "not resolved (interval includes 0)"
  return _direction(iv.high, b, a, lower_is_better)


def over_confident_cells(cells: Sequence[Cell]) -> list[str]:
  """Names of the cells whose calibration rows carry a verdict (CE over-confident)."""
  return [c.name for c in cells if c.over_confident]


def row(cells: Sequence[Cell], q: Quantity, a: str, b: str, a_label: str, b_label: str,
        get_a: Callable[[dict], float], get_b: Callable[[dict], float]) -> Optional[str]:
  """One table row (None without any pair)."""
  p = pairs(cells, a, b, get_a, get_b)
  if not p.diffs:
    return None
  names = [c.name for c in cells]
  iv = p.interval()
  digits = 2 if q.scale == 100 else 3
  lower = sum(d < 0 for d in p.values)
  if q.calibration:
    hot = set(over_confident_cells(cells))
    sub = p.only(hot)
    if not hot:
      words = "none: CE is over-confident in no cell (difference descriptive only)"
    elif not sub.diffs:
      words = "none: no pair in the over-confident cells"
    else:
      words = (f"over {', '.join(sorted(hot, key=names.index))} only ({len(sub.diffs)} pairs: "
               f"{sub.interval().format(q.scale, digits)}): "
               + _verdict(sub, b_label, a_label, q.lower_is_better))
  else:
    words = _verdict(p, b_label, a_label, q.lower_is_better)
  return (f"| {b_label} - {a_label} | {q.label} | {iv.format(q.scale, digits)} | "
          f"{p.counts(names)} | {lower}/{len(p.diffs)} | {words} |")


_HEAD = ["| comparison | metric | mean diff over pairs [95% t-interval] | pairs (per cell) | "
         "pairs where the difference is negative | verdict |", "|---|---|---|---|---|---|"]


def comparison_tables(cells: Sequence[Cell], arms: Sequence[str], reference: str = "ce",
                      ols_against: Sequence[str] = ("ls", "flsd53", "mbls")
                      ) -> list[tuple[str, str, list[str]]]:
  """``(title, explanation, rows)`` of the three comparison sections."""
  qs = quantities(cells)
  by_key = {q.key: q for q in qs}
  vs_ref, vs_ts, ols = [], [], []
  others = [a for a in arms if a != reference]
  for arm in others:
    for q in qs:
      r = row(cells, q, reference, arm, reference, arm, q.get, q.get)
      if r:
        vs_ref.append(r)
    for q in qs:
      if q.ts_key is None:
        continue
      r = row(cells, q, reference, arm, f"({reference} + TS)", arm, by_key[q.ts_key].get, q.get)
      if r:
        vs_ts.append(r)
  for arm in (a for a in others if a.startswith("ols")):
    for other in ols_against:
      for q in qs:
        r = row(cells, q, other, arm, other, arm, q.get, q.get)
        if r:
          ols.append(r)
  return [
      (f"Every arm against {reference}",
       f"Same metric for both (\"after TS\" rows: both temperature-scaled).", vs_ref),
      (f"Every arm against {reference} + TS",
       f"The arm's raw metric minus {reference}'s metric after temperature scaling: the cheap "
       "post-hoc baseline a training-time calibration method has to beat.", vs_ts),
      ("OLS against the other calibration methods",
       "Same metric for both arms.", ols)]


# The study's primary question, as posed before any run: does OLS (either
# initial S) beat CE, CE + TS, LS, FLSD-53 and MbLS on ECE and NLL?
PRIMARY_ARMS = ("ols_uniform", "ols_zeros")
PRIMARY_AGAINST = ("ce", "ce + TS", "ls", "flsd53", "mbls")
PRIMARY_METRICS = ("ece", "nll")


@dataclasses.dataclass(frozen=True)
class FamilyRow:
  """One comparison of the primary family."""
  b: str
  a_label: str
  quantity: Quantity
  pairs: Pairs
  p: float
  p_holm: float = float("nan")


def primary_family(cells: Sequence[Cell], reference: str = "ce") -> list[FamilyRow]:
  """The primary comparisons with their t-test p-values, Holm-adjusted together.

  Each comparison uses the pairs its verdict in the comparison tables uses
  (calibration errors: the over-confident cells only), so a row here and
  there rest on the same numbers; only the threshold differs.

  Returns:
    One row per (OLS arm, comparator, metric) with at least one pair; the
    rows with at least two pairs form the family.
  """
  qs = {q.key: q for q in quantities(cells)}
  hot = set(over_confident_cells(cells))
  rows = []
  for b in PRIMARY_ARMS:
    for against in PRIMARY_AGAINST:
      for key in PRIMARY_METRICS:
        q = qs[key]
        if against == f"{reference} + TS":
          a, get_a = reference, qs[q.ts_key].get
        else:
          a, get_a = against, q.get
        p = pairs(cells, a, b, get_a, q.get)
        if q.calibration:
          p = p.only(hot)
        if p.diffs:
          rows.append(FamilyRow(b, against, q, p, stats.t_test_p(p.values)))
  adjusted = stats.holm([r.p for r in rows])
  return [dataclasses.replace(r, p_holm=float(h)) for r, h in zip(rows, adjusted)]


def family_table(cells: Sequence[Cell], reference: str = "ce", level: float = 0.05) -> str:
  """The primary family as a markdown table (empty string without rows)."""
  rows = primary_family(cells, reference)
  if not rows:
    return ""
  names = [c.name for c in cells]
  lines = ["| # | comparison | metric | pairs (per cell) | mean diff [95% t-interval] | "
           "t-test p | Holm-adjusted p | verdict at family-wise 5% |",
           "|---|---|---|---|---|---|---|---|"]
  for i, r in enumerate(rows, 1):
    digits = 2 if r.quantity.scale == 100 else 3
    iv = r.pairs.interval()
    if np.isnan(r.p_holm):
      words = "none: fewer than two pairs"
    elif r.p_holm > level:
      words = "not resolved"
    else:
      words = _direction(iv.estimate, r.b, r.a_label, r.quantity.lower_is_better)
    lines.append(f"| {i} | {r.b} - {r.a_label} | {r.quantity.label} | {r.pairs.counts(names)} | "
                 f"{iv.format(r.quantity.scale, digits)} | {r.p:.4f} | {r.p_holm:.4f} | "
                 f"{words} |")
  return "\n".join(lines)


def regime_table(cells: Sequence[Cell]) -> str:
  lines = ["| cell | CE seeds finished | over-confident on each? | calibration verdict uses "
           "this cell |", "|---|---|---|---|"]
  for c in cells:
    per = ", ".join(f"seed {s}: {'yes' if ok else 'no'}" for s, (ok, _) in c.regime.items())
    lines.append(f"| {c.name} | {','.join(map(str, c.regime)) or 'none'} | {per or 'n/a'} | "
                 f"{'**yes**' if c.over_confident else 'no'} |")
  details = [f"- {c.name}, seed {s}: {why}." for c in cells for s, (_, why) in c.regime.items()]
  return "\n".join(lines + [""] + details)


def wall_table(cells: Sequence[Cell]) -> str:
  lines = ["| cell | collected runs | wall-clock sum (h) | mean per run (min) |",
           "|---|---|---|---|"]
  for c in cells:
    mean = f"{c.wall_time_s / c.runs / 60:.1f}" if c.runs else "n/a"
    lines.append(f"| {c.name} | {c.runs} | {c.wall_time_s / 3600:.2f} | {mean} |")
  total_runs = sum(c.runs for c in cells)
  total = sum(c.wall_time_s for c in cells)
  lines.append(f"| all | {total_runs} | {total / 3600:.2f} | "
               f"{(f'{total / total_runs / 60:.1f}' if total_runs else 'n/a')} |")
  return "\n".join(lines)


def report(cells: Sequence[Cell], arms: Sequence[str], command: str,
           reference: str = "ce", source: str = "docs/results") -> str:
  """The pooled verdict as markdown.

  Args:
    cells: the loaded cells (:func:`load_cell`).
    arms: arm names, in table order.
    command: the exact command that made the file (printed at the top).
    reference: the reference arm (CE).
    source: where the collected cells are, as printed.
  """
  hot = over_confident_cells(cells)
  parts = ["# Calibration verdict, pooled over cells", "",
           f"Generated by `{command}` from the collected per-run files of each cell "
           f"(`{source}/<cell>/`).", "",
           "A pair is one (cell, seed) on which both arms finished; its difference is the "
           "first-named arm's metric minus the other's on that cell's reported test split. "
           "Mean over all pairs with a 95% Student-t interval (pairs treated as independent: "
           "an average over these cells). Negative = the first-named arm lower (better for "
           "every metric except OOD AUROC, where higher is better). A verdict needs two pairs and "
           "an interval that excludes 0.", "",
           "## Regime of each cell (CE)", "", regime_table(cells), "",
           "ECE and adaptive ECE rows carry a verdict only over the cells where CE is "
           "over-confident on every finished seed: "
           + (", ".join(hot) if hot else "none, so no ECE row carries a verdict") + ". "
           "Their all-pairs interval is descriptive.", ""]
  missing = [f"- {c.name}: {m}" for c in cells for m in c.missing]
  parts += ["## Missing", "",
            "\n".join(missing) if missing else "Nothing: every arm finished every seed.", ""]
  for title, text, rows in comparison_tables(cells, arms, reference):
    parts += [f"## {title}", "", text, ""]
    parts += ["\n".join(_HEAD + rows) if rows else "(no pair yet)", ""]
  family = family_table(cells, reference)
  if family:
    parts += ["## The primary question, corrected for multiple comparisons", "",
              "Each interval above is a 95% interval for its own comparison; over many "
              "comparisons some will exclude 0 by chance. The study's question, as posed before "
              "any run (this adjustment was added when two of the three cells were in), is a "
              "family of "
              f"{len(PRIMARY_ARMS) * len(PRIMARY_AGAINST) * len(PRIMARY_METRICS)} comparisons: "
              "OLS (uniform and zero initial S) against CE, CE + TS, LS, FLSD-53 and MbLS on ECE "
              "and NLL, on the same pairs as above. Here the same t-tests' p-values are "
              "Holm-adjusted over the family, so the chance of any false verdict in it is at "
              "most 5%.", "", "### All cells pooled", "", family, ""]
    parts += ["### Each cell alone", "",
              "The same family on one cell's seeds (a pair per seed), Holm-adjusted within the "
              "cell. ECE rows are left out where CE is not over-confident, so such a cell's "
              "family is its NLL rows.", ""]
    for c in cells:
      table = family_table([c], reference)
      parts += [f"**{c.name}**", "", table or "(no pair yet)", ""]
  parts += ["## Wall-clock of each cell", "",
            "Sum of `wall_time_s` over every collected run of the cell (tuning candidates "
            "included).", "", wall_table(cells), ""]
  return "\n".join(parts)
