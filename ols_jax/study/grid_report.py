"""The report of a grid study from its run folders: mean ± std tables over
seeds, paired comparisons, the cross-study overview and the ablation figures.

Running the grid is :mod:`ols_jax.study.grid_runner`; collected studies under
``docs/results`` are read and restored by :mod:`ols_jax.study.collected`.
"""

from __future__ import annotations

import csv
import io
import json
import pathlib
from typing import Any, Iterable, Sequence

import numpy as np

from ols_jax import fileio
from ols_jax import plots
from ols_jax.report import METRIC_COLUMNS

# (key, header, scale) of the study tables (the run report's columns they keep).
COLUMNS = tuple((k, h, s) for k, _, h, s in METRIC_COLUMNS if h is not None)
HIGHER_IS_BETTER = frozenset({"auroc_macro"})
EMBEDDING_COLUMNS = (("silhouette", "silhouette"), ("knn_accuracy", "5-NN acc"),
                     ("intra_inter_ratio", "intra/inter"))


def load_results(out: pathlib.Path) -> list[dict[str, Any]]:
  """Every ``results.json`` under ``out`` with its variant name attached."""
  rows = []
  for path in sorted(pathlib.Path(out).glob("*/*/seed*/results.json")):
    r = json.loads(path.read_text())
    r["variant"] = path.parent.parent.name
    r["workdir"] = str(path.parent)
    rows.append(r)
  return rows


def _mean_std(values: Iterable[float]) -> tuple[float, float, int]:
  v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
  if v.size == 0:
    return float("nan"), float("nan"), 0
  return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def summarise(rows: Sequence[dict[str, Any]], split: str = "test"
              ) -> dict[tuple[str, str], dict[str, tuple[float, float, int]]]:
  """``{(model, variant): {metric: (mean, std, n)}}`` over seeds."""
  groups: dict[tuple[str, str], list[dict]] = {}
  for r in rows:
    groups.setdefault((r["model"], r["variant"]), []).append(r)
  out = {}
  for key, rs in sorted(groups.items()):
    stats = {k: _mean_std(r[split].get(k) for r in rs) for k, _, _ in COLUMNS}
    stats.update({k: _mean_std(r["embedding"].get(k) for r in rs) for k, _ in EMBEDDING_COLUMNS})
    stats["wall_time_s"] = _mean_std(r["wall_time_s"] for r in rs)
    stats["temperature"] = _mean_std(r.get("temperature") for r in rs)
    out[key] = stats
  return out


def _best_marks(stats: dict, key: str, higher_better: bool = False) -> set:
  """Variants whose mean is best and beats every other by more than the
  larger of the two standard deviations."""
  items = [(k, s[key]) for k, s in stats.items() if np.isfinite(s[key][0])]
  # Without a spread (one seed) no difference can be called real.
  if len(items) < 2 or any(n < 2 for _, (_, _, n) in items):
    return set()
  sign = -1.0 if higher_better else 1.0
  best_key, (bm, bs, _) = min(items, key=lambda kv: sign * kv[1][0])
  for k, (m, s, _) in items:
    if k != best_key and abs(m - bm) <= max(bs, s):
      return set()
  return {best_key}


def markdown_table(stats: dict, *, with_embedding: bool = True,
                   with_k5: bool = True, with_auroc: bool = False) -> str:
  """mean ± std table; the best per column is bold only when it beats every
  other row by more than the spread."""
  cols = [c for c in COLUMNS if (with_k5 or c[0] != "top5_error")
          and (with_auroc or c[0] != "auroc_macro")]
  header = ["model", "method", "n"] + [h for _, h, _ in cols]
  if with_embedding:
    header += [h for _, h in EMBEDDING_COLUMNS]
  header += ["T (TS)", "wall s"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  by_model: dict[str, dict] = {}
  for (model, variant), s in stats.items():
    by_model.setdefault(model, {})[variant] = s
  for model, variants in by_model.items():
    marks = {k: _best_marks(variants, k, higher_better=k in HIGHER_IS_BETTER)
             for k, _, _ in cols if k != "calibration_gap"}
    marks.update({k: _best_marks(variants, k, higher_better=(k != "intra_inter_ratio"))
                  for k, _ in EMBEDDING_COLUMNS})
    for variant, s in variants.items():
      cells = [model, variant, str(s["top1_error"][2])]
      for k, _, scale in cols:
        m, sd, _ = s[k]
        text = f"{m * scale:.2f} ± {sd * scale:.2f}" if scale != 1.0 else f"{m:.3f} ± {sd:.3f}"
        cells.append(f"**{text}**" if variant in marks.get(k, ()) else text)
      if with_embedding:
        for k, _ in EMBEDDING_COLUMNS:
          m, sd, _ = s[k]
          text = f"{m:.3f} ± {sd:.3f}"
          cells.append(f"**{text}**" if variant in marks.get(k, ()) else text)
      cells.append(f"{s['temperature'][0]:.2f}")
      cells.append(f"{s['wall_time_s'][0]:.0f}")
      lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def csv_table(stats: dict) -> str:
  buf = io.StringIO()
  w = csv.writer(buf)
  keys = [k for k, _, _ in COLUMNS] + [k for k, _ in EMBEDDING_COLUMNS]
  w.writerow(["model", "variant", "n"] + [f"{k}_{s}" for k in keys for s in ("mean", "std")])
  for (model, variant), s in stats.items():
    w.writerow([model, variant, s["top1_error"][2]] +
               [f"{x:.6g}" for k in keys for x in s[k][:2]])
  return buf.getvalue()


def paired_wins(rows: Sequence[dict[str, Any]], reference: str = "ols",
                split: str = "test",
                metrics: Sequence[str] = ("top1_error", "ece", "nll")) -> str:
  """Per seed, does ``reference`` beat each other variant? (lower is better)."""
  by = {(r["model"], r["variant"], r["seed"]): r for r in rows}
  models = sorted({r["model"] for r in rows})
  lines = ["| model | OLS vs | " + " | ".join(f"{m}: OLS wins / seeds (mean diff)"
                                               for m in metrics) + " |",
           "|" + "---|" * (len(metrics) + 2)]
  for model in models:
    others = sorted({r["variant"] for r in rows if r["model"] == model} - {reference})
    for other in others:
      cells = []
      for metric in metrics:
        diffs = [by[(model, reference, s)][split][metric] - by[(model, other, s)][split][metric]
                 for (mm, v, s) in by if mm == model and v == other
                 and (model, reference, s) in by]
        if not diffs:
          cells.append("n/a")
          continue
        wins = sum(d < 0 for d in diffs)
        scale = 100.0 if metric != "nll" else 1.0
        cells.append(f"{wins}/{len(diffs)} ({np.mean(diffs) * scale:+.2f})")
      lines.append(f"| {model} | {other} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_summary(out: pathlib.Path, title: str = "") -> pathlib.Path:
  """Writes ``summary.md``, ``summary.csv`` and ``reliability.png`` into ``out``."""
  out = pathlib.Path(out)
  rows = load_results(out)
  if not rows:
    raise FileNotFoundError(f"no results.json under {out}")
  k = rows[0]["num_classes"]
  stats = summarise(rows, "test")
  stats_ts = summarise(rows, "test_ts")
  parts = [f"# {title or out.name}", "",
           f"{len(rows)} runs; dataset {rows[0]['dataset']} ({k} classes, splits "
           f"{rows[0]['split_sizes']}); mean ± std over seeds (sample std); bold = best "
           "by more than the spread of both rows.", "",
           "## Test split", "", markdown_table(stats, with_k5=k > 5, with_auroc=k == 2), "",
           "## Test split after temperature scaling (T fitted on validation)", "",
           markdown_table(stats_ts, with_embedding=False, with_k5=k > 5,
                          with_auroc=k == 2), "",
           "## Paired comparison (same seed = same data order and augmentation)", "",
           "Negative mean diff = OLS lower (better).", "",
           paired_wins(rows), ""]
  fileio.atomic_write_text(out / "summary.md", "\n".join(parts))
  fileio.atomic_write_text(out / "summary.csv", csv_table(stats))
  curves = {}
  for r in rows:
    if r["seed"] == min(x["seed"] for x in rows) and "test_reliability" in r:
      curves[f"{r['model']}/{r['variant']}"] = _curve_arrays(r["test_reliability"])
  if curves:
    plots.combined_reliability(curves, out / "reliability.png",
                               title=f"Test reliability, seed {min(x['seed'] for x in rows)}")
  return out / "summary.md"


def _curve_arrays(curve: dict) -> dict:
  return {k: (np.asarray(v, np.float64) if isinstance(v, list) else v)
          for k, v in curve.items()}


def s_entropy_curves(rows: Sequence[dict[str, Any]]
                     ) -> dict[tuple[str, str, int], np.ndarray]:
  """``{(model, variant, seed): mean row entropy of S after each epoch}`` of
  the OLS runs that recorded it (Zhang et al., TIP 2021, Sec. IV: S should
  settle as training goes on)."""
  return {(r["model"], r["variant"], int(r["seed"])):
          np.asarray(r["soft_label_row_entropy"], np.float64).mean(axis=1)
          for r in sorted(rows, key=lambda r: (r["model"], r["variant"], r["seed"]))
          if r["method"] == "ols" and r.get("soft_label_row_entropy")}


def ablation_figures(folder: pathlib.Path, dest: pathlib.Path) -> list[str]:
  """Draws the OLS alpha curve (test ECE and top-1 error vs alpha) when the
  study holds alpha variants, and the mean S row entropy per epoch of every
  OLS run. Returns the file names written."""
  rows = load_results(folder)
  made = []
  ols_rows = [r for r in rows if r["method"] == "ols"]
  by_alpha: dict[float, list[dict]] = {}
  for r in ols_rows:
    if r["variant"] == "ols" or r["variant"].startswith("ols_alpha"):
      a = 0.5 if r["variant"] == "ols" else float(r["variant"][len("ols_alpha"):])
      by_alpha.setdefault(a, []).append(r)
  if len(by_alpha) > 1:
    plots.alpha_curve(by_alpha, dest / "alpha_curve.png")
    made.append("alpha_curve.png")
  curves = s_entropy_curves(ols_rows)
  if curves:
    plots.s_entropy_runs(curves, rows[0]["num_classes"], dest / "s_entropy.png")
    made.append("s_entropy.png")
  return made


BASELINES = ("ce", "ls", "tfkd", "kd")


def overview_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """OLS against the four baselines, per model, in one line each.

  For every model that has an ``ols`` run and at least one baseline: OLS's rank
  (1 = best of the methods present) by mean test top-1 error, ECE and ECE after
  temperature scaling, the OLS minus CE differences, OLS's signed calibration
  gap, and its paired wins (same seed) over each baseline by error and ECE.
  """
  out = []
  for model in sorted({r["model"] for r in rows}):
    mine = [r for r in rows if r["model"] == model]
    methods = [m for m in ("ols",) + BASELINES if any(r["variant"] == m for r in mine)]
    if "ols" not in methods or len(methods) < 2:
      continue

    def mean(method, split, key):
      return _mean_std(r[split][key] for r in mine if r["variant"] == method)

    row = {"model": model, "methods": methods,
           "seeds": mean("ols", "test", "top1_error")[2]}
    for label, split, key in (("error", "test", "top1_error"), ("ece", "test", "ece"),
                              ("ece_ts", "test_ts", "ece")):
      means = {m: mean(m, split, key)[0] for m in methods}
      row[f"rank_{label}"] = 1 + sum(means[m] < means["ols"] for m in methods if m != "ols")
      row[f"ols_{label}"] = mean("ols", split, key)
      if "ce" in methods:
        row[f"ce_{label}"] = mean("ce", split, key)
    row["ols_gap"] = mean("ols", "test", "calibration_gap")
    by = {(r["variant"], r["seed"]): r for r in mine}
    wins = {}
    for base in methods[1:]:
      for key in ("top1_error", "ece"):
        pairs = [(by[("ols", s)]["test"][key], by[(base, s)]["test"][key])
                 for (v, s) in by if v == base and ("ols", s) in by]
        wins[(base, key)] = (sum(a < b for a, b in pairs), len(pairs))
    row["wins"] = wins
    out.append(row)
  return out


def overview_table(studies: Sequence[tuple[str, Sequence[dict[str, Any]]]]) -> str:
  """Markdown: one line per (study, model) from :func:`overview_rows`."""
  lines = ["| study | model | seeds | OLS rank: error / ECE / ECE after TS (of n) "
           "| top-1 err %: OLS vs CE | ECE %: OLS vs CE | ECE after TS %: OLS vs CE "
           "| OLS conf-acc % | OLS paired wins, error (ce ls tfkd kd) "
           "| OLS paired wins, ECE (ce ls tfkd kd) |",
           "|" + "---|" * 10]

  def pm(stat):
    return f"{100 * stat[0]:.1f} ± {100 * stat[1]:.1f}" if stat[2] else "n/a"

  for name, rows in studies:
    for r in overview_rows(rows):
      n = len(r["methods"])
      ranks = f"{r['rank_error']} / {r['rank_ece']} / {r['rank_ece_ts']} (of {n})"
      vs = [f"{pm(r['ols_' + k])} vs {pm(r['ce_' + k])}" if "ce_" + k in r else "n/a"
            for k in ("error", "ece", "ece_ts")]
      wins = []
      for key in ("top1_error", "ece"):
        cells = [f"{r['wins'][(b, key)][0]}/{r['wins'][(b, key)][1]}"
                 if (b, key) in r["wins"] else "-" for b in BASELINES]
        wins.append(" ".join(cells))
      lines.append(f"| {name} | {r['model']} | {r['seeds']} | {ranks} | {vs[0]} | {vs[1]} "
                   f"| {vs[2]} | {100 * r['ols_gap'][0]:+.1f} | {wins[0]} | {wins[1]} |")
  return "\n".join(lines)
