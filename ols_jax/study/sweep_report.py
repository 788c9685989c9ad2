"""Tables of a tuned comparison (:mod:`ols_jax.study.sweep`) from its collected files.

The collected sweep under ``docs/results/<sweep>/``: ``selection.json`` and,
per run, the files of :mod:`ols_jax.study.collected` (``seed<k>.json``,
``seed<k>_metrics.jsonl``, ``seed<k>_records.npz``). Everything here reads only
those files, so the report can be rebuilt on a machine where the runs are gone.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Optional, Sequence

import numpy as np

from ols_jax import fileio
from ols_jax import plots
from ols_jax.study import collected
from ols_jax.study import meta
from ols_jax.study import stats
from ols_jax.study import sweep as sweep_lib

# (results key, split, label, scale) of the per-arm table.
TABLE = (("top1_error", "test", "Top-1 err %", 100), ("top5_error", "test", "Top-5 err %", 100),
         ("ece", "test", "ECE %", 100), ("ece", "test_ts", "ECE after TS %", 100),
         ("calibration_gap", "test", "conf-acc %", 100), ("nll", "test", "NLL", 1),
         ("nll", "test_ts", "NLL after TS", 1))
COMPARED = (("top1_error", "top-1 error (points)", 100), ("ece", "ECE (points)", 100),
            ("ece_ts", "ECE after TS (points)", 100), ("nll", "NLL", 1),
            ("nll_ts", "NLL after TS", 1), ("aurc", "AURC (x100)", 100),
            ("aurc_ts", "AURC after TS (x100)", 100))


def kept_runs(sweep: sweep_lib.Sweep, folder: pathlib.Path) -> dict[str, dict[int, dict]]:
  """``{arm: {seed: run}}`` for each arm's kept candidate (``selection.json``)."""
  sel = json.loads((pathlib.Path(folder) / "selection.json").read_text())["arms"]
  out = {}
  for arm in sweep.arms:
    if arm.name not in sel:
      continue
    name = sel[arm.name]["folder"]
    runs = {s: collected.load_run(folder, sweep.model, name, s) for s in sweep.seeds}
    out[arm.name] = {s: dict(r, folder=name) for s, r in runs.items() if r is not None}
  return out


def _epoch_records(run: dict) -> list[dict]:
  return [r for r in run["metrics"] if "eval/top1_error" in r]


def _final_train_accuracy(run: dict) -> float:
  recs = _epoch_records(run)
  return float(recs[-1]["train/accuracy"]) if recs else float("nan")


def _aurc_ts(run: dict) -> float:
  rec = run.get("records")
  return stats.metric(rec, "aurc_ts") if rec is not None else float("nan")


def _pm(values: Sequence[float], scale: float, digits: int = 2) -> str:
  x = scale * np.asarray(values, np.float64)
  if len(x) == 1:
    return f"{x[0]:.{digits}f}"
  return f"{x.mean():.{digits}f} ± {x.std(ddof=1):.{digits}f}"


def selection_table(sweep: sweep_lib.Sweep, folder: pathlib.Path) -> str:
  """Every tuning candidate's validation scores (finished ones), the kept one marked."""
  folder = pathlib.Path(folder)
  sel = json.loads((folder / "selection.json").read_text())
  metric = sweep.select_metric
  lines = [f"Rule: {sel['rule']}.", "",
           f"| arm | candidate | val {metric} | val top-1 err % | kept |",
           "|---|---|---|---|---|"]
  for arm in sweep.arms:
    kept = sel["arms"].get(arm.name, {}).get("folder")
    for cand in arm.candidates():
      cell = arm.cell(sweep.model, sweep.tuning_seed, cand)
      run = collected.load_run(folder, sweep.model, cell.folder, sweep.tuning_seed,
                               details=False)
      if run is None:
        lines.append(f"| {arm.name} | {cell.folder} | (not run yet) | | |")
        continue
      val = run["val"]
      mark = "**yes**" if cell.folder == kept else ("" if kept else "(tuning not finished)")
      lines.append(f"| {arm.name} | {cell.folder} | {val[metric]:.4f} | "
                   f"{100 * val['top1_error']:.2f} | {mark} |")
  edges = []
  for arm in sweep.arms:
    chosen = sel["arms"].get(arm.name)
    for field, value, end in sweep_lib.grid_edges(arm, chosen["candidate"]) if chosen else []:
      axis = dict(arm.grid)[field]
      whole = (" (every point of a two-value grid is an end)" if len(axis) == 2 else "")
      edges.append(f"{arm.name} {field} = {value:g}, the {end} of "
                   f"{', '.join(f'{a:g}' for a in axis)}{whole}")
  if edges:
    lines += ["", "Kept settings at a grid edge (the plan flags them: a better setting may lie "
              "beyond the grid): " + "; ".join(edges) + "."]
  return "\n".join(lines)


def arm_table(kept: dict[str, dict[int, dict]]) -> str:
  head = ("| arm | kept run | seeds | " + " | ".join(t[2] for t in TABLE)
          + " | AURC after TS (x100) | T | final train acc % |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for arm, runs in kept.items():
    if not runs:
      continue
    rs = [runs[s] for s in sorted(runs)]
    cells = [_pm([r[split][key] for r in rs], scale, 2 if scale == 100 else 3)
             for key, split, _, scale in TABLE]
    lines.append(f"| {arm} | {rs[0].get('folder', '')} | {','.join(str(s) for s in sorted(runs))} | "
                 + " | ".join(cells)
                 + f" | {_pm([_aurc_ts(r) for r in rs], 100, 2)}"
                 + f" | {_pm([r['temperature'] for r in rs], 1, 2)} | "
                 f"{_pm([_final_train_accuracy(r) for r in rs], 100, 1)} |")
  return "\n".join(lines)


FITTED_TRAIN_ACCURACY = 0.95

# The regime study's rule (docs/results/regime_plan.md): CE seed 0 on its
# calibration half, nothing from the reported half.
PLAN_GAP = 0.01
PLAN_TEMPERATURE = 1.05
PLAN_SEED = 0


def uses_halves(kept: dict[str, dict[int, dict]]) -> bool:
  """Whether the runs split the test set into calibration / reported halves."""
  return any((r.get("config") or {}).get("calibration_split") == "test_half"
             for runs in kept.values() for r in runs.values())


def plan_regime(run: Optional[dict]) -> tuple[bool, float, float]:
  """The plan's regime rule on CE seed 0: ``(over_confident, gap, temperature)``.

  Over-confident when the calibration-half (``val``) confidence minus
  accuracy is above :data:`PLAN_GAP` and the fitted temperature above
  :data:`PLAN_TEMPERATURE`. ``(False, nan, nan)`` without the run.
  """
  if run is None:
    return False, float("nan"), float("nan")
  gap, t = float(run["val"]["calibration_gap"]), float(run["temperature"])
  return (gap > PLAN_GAP and t > PLAN_TEMPERATURE), gap, t


def plan_regime_line(kept: dict[str, dict[int, dict]], reference: str = "ce") -> str:
  """The plan rule's verdict on the cell, in words."""
  ok, gap, t = plan_regime(kept.get(reference, {}).get(PLAN_SEED))
  if np.isnan(gap):
    return f"Regime rule (plan): CE seed {PLAN_SEED} not collected yet, no verdict."
  return (f"Regime rule (plan, CE seed {PLAN_SEED} on its calibration half): conf-acc "
          f"{100 * gap:+.2f} points, T = {t:.2f}: "
          + ("**over-confident**" if ok else "**not over-confident**")
          + f" (needs conf-acc above {100 * PLAN_GAP:.0f} point and T above "
          f"{PLAN_TEMPERATURE}). The per-seed lines below read the reported half and are "
          "descriptive only.")


def ce_regime(run: dict) -> tuple[bool, str]:
  """Whether one reference (CE) run is in the over-confident regime, and why.

  Over-confident regime (where calibration methods are meant to help): CE
  fits its training set (final-epoch train accuracy >= 95%, on augmented
  batches), is over-confident on test (confidence above accuracy) and
  temperature scaling fitted on validation lowers its test ECE.

  Returns:
    ``(in_regime, description)``.
  """
  train_acc = _final_train_accuracy(run)
  raw, ts = run["test"]["ece"], run["test_ts"]["ece"]
  gap = run["test"]["calibration_gap"]
  fitted = train_acc >= FITTED_TRAIN_ACCURACY
  in_regime = bool(fitted and gap > 0 and ts < raw)
  if in_regime:
    regime = "over-confident regime"
  else:
    why = []
    if not fitted:
      why.append(f"train accuracy below {100 * FITTED_TRAIN_ACCURACY:.0f}% (under-fitted)")
    if gap <= 0:
      why.append("not over-confident on test")
    if ts >= raw:
      why.append("temperature scaling does not lower its test ECE")
    regime = "NOT the over-confident regime: " + ", ".join(why)
  return in_regime, (f"CE final-epoch train accuracy {100 * train_acc:.1f}%, test ECE "
                     f"{100 * raw:.2f}% raw vs {100 * ts:.2f}% after TS (T = "
                     f"{run['temperature']:.2f}), conf-acc {100 * gap:+.2f} points: {regime}")


def regime_lines(kept: dict[str, dict[int, dict]], reference: str = "ce") -> str:
  """Which calibration regime the reference (CE) runs are in, per seed."""
  runs = kept.get(reference, {})
  return "\n".join(f"- seed {s}: {ce_regime(runs[s])[1]}." for s in sorted(runs))


def calibration_verdict_allowed(kept: dict[str, dict[int, dict]], reference: str = "ce") -> bool:
  """Whether the cell's ECE rows carry a verdict.

  With calibration / reported halves: the plan's rule (:func:`plan_regime`).
  Otherwise: every reference run is in the over-confident regime
  (:func:`ce_regime`).
  """
  if uses_halves(kept):
    return plan_regime(kept.get(reference, {}).get(PLAN_SEED))[0]
  runs = kept.get(reference, {})
  return bool(runs) and all(ce_regime(r)[0] for r in runs.values())


# Metrics of the verdict table (labels and scales from COMPARED); the
# calibration ones carry a verdict only in the over-confident regime.
VERDICT = ("top1_error", "ece", "ece_ts", "nll", "nll_ts")
CALIBRATION = frozenset({"ece", "ece_ts"})


def verdict_table(results: dict[tuple[str, str], dict], calibration_allowed: bool) -> str:
  """One row per (comparison, metric): the over-seeds interval in plain words.

  Args:
    results: ``{(a, b): stats.compare_arms output of b - a}``.
    calibration_allowed: whether the reference is in the over-confident
      regime on every seed; if not, ECE rows are reported but carry no verdict.

  Returns:
    A markdown table.
  """
  lines = ["| comparison | metric | mean diff over seeds [95% t-interval] | "
           "seeds where b is lower (one-sided sign test p) | "
           "seeds whose bootstrap CI excludes 0 | verdict |", "|---|---|---|---|---|---|"]
  for (a, b), res in results.items():
    for m, label, scale in COMPARED:
      if m not in VERDICT or m not in res:
        continue
      per_seed, over = res[m]["per_seed"], res[m]["over_seeds"]
      n = len(per_seed)
      wins = sum(iv.estimate < 0 for iv in per_seed.values())
      excl = [f"{s} ({'lower' if iv.high < 0 else 'higher'})" for s, iv in per_seed.items()
              if not iv.includes_zero]
      if n < 2:
        words = "none: one seed only"
      elif m in CALIBRATION and not calibration_allowed:
        words = "none: CE is not in the over-confident regime (difference descriptive only)"
      elif over.includes_zero:
        words = "not resolved (interval includes 0)"
      else:
        words = f"{b} {'better' if over.high < 0 else 'worse'} than {a}"
      digits = 2 if scale == 100 else 3
      lines.append(f"| {b} - {a} | {label} | {over.format(scale, digits)} | {wins}/{n} "
                   f"(p = {stats.sign_test_p(wins, n):.3f}) | "
                   f"{', '.join(excl) or 'none'} | {words} |")
  return "\n".join(lines)


def paired_table(kept: dict[str, dict[int, dict]], a: str, b: str, *,
                 num_resamples: int = 2000,
                 cache: Optional[stats.ResampleCache] = None) -> tuple[str, dict]:
  """Paired differences ``b - a`` (negative = b lower) per seed and over seeds."""
  seeds = sorted(set(kept.get(a, {})) & set(kept.get(b, {})))
  per_seed = {s: (kept[a][s]["records"], kept[b][s]["records"]) for s in seeds
              if kept[a][s]["records"] is not None and kept[b][s]["records"] is not None}
  if not per_seed:
    return f"(no paired runs of {a} and {b} yet)", {}
  res = stats.compare_arms(per_seed, [m for m, _, _ in COMPARED], num_resamples=num_resamples,
                           cache=cache)
  head = ("| metric | " + " | ".join(f"seed {s}: diff [95% bootstrap CI]" for s in per_seed)
          + f" | mean over {len(per_seed)} seed(s) [95% t-interval] | resolved? |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for m, label, scale in COMPARED:
    r = res[m]
    digits = 2 if scale == 100 else 3
    cells = [r["per_seed"][s].format(scale, digits) for s in per_seed]
    over = r["over_seeds"]
    if len(per_seed) < 2:
      resolved = "one seed only"
    elif over.includes_zero:
      resolved = "no (interval includes 0)"
    else:
      resolved = f"yes: {b} {'lower' if over.high < 0 else 'higher'}"
    wins = sum(r["per_seed"][s].estimate < 0 for s in per_seed)
    lines.append(f"| {label} | " + " | ".join(cells) + f" | {over.format(scale, digits)} | "
                 f"{resolved} ({b} lower on {wins}/{len(per_seed)} seeds) |")
  return "\n".join(lines), res


def _split_words(run: dict) -> str:
  if (run.get("config") or {}).get("calibration_split") == "test_half":
    return ("val is the calibration half of the test split, from which the selection, the "
            "temperature, the conformal sets and the OOD thresholds come; test is the other, "
            "reported half; dataset val is the dataset's own validation split, only scored. "
            "The calibration half should look like test (exchangeable), the dataset val need "
            "not")
  return ("val is the dataset's own validation split, from which the selection and the "
          "temperature come")


def val_test_table(kept: dict[str, dict[int, dict]], reference: str = "ce") -> str:
  """The reference's validation-vs-test gap per seed (error and ECE, raw).

  With a calibration split the dataset's own validation split is shown too:
  the calibration half should look like test (exchangeable), the dataset val
  need not.
  """
  runs = kept.get(reference, {})
  if not runs:
    return ""
  rs = [(s, runs[s]) for s in sorted(runs)]
  with_vd = any("val_dataset" in r for _, r in rs)
  head = ("| seed | val err % | test err % | test - val | val ECE % | test ECE % | test - val |"
          + (" dataset val err % | dataset val ECE % |" if with_vd else ""))
  lines = [f"CE on each split, raw probabilities. {_split_words(rs[0][1])}.", "", head,
           "|" + "---|" * (head.count("|") - 1)]
  def pct(d, key):
    value = (d or {}).get(key)
    return "n/a" if value is None else f"{100 * value:.2f}"

  def gap(key):
    v, t = r["val"].get(key), r["test"].get(key)
    return "n/a" if v is None or t is None else f"{100 * (t - v):+.2f}"

  for s, r in rs:
    row = (f"| {s} | {pct(r['val'], 'top1_error')} | {pct(r['test'], 'top1_error')} | "
           f"{gap('top1_error')} | {pct(r['val'], 'ece')} | {pct(r['test'], 'ece')} | "
           f"{gap('ece')} |")
    if with_vd:
      vd = r.get("val_dataset")
      row += f" {pct(vd, 'top1_error')} | {pct(vd, 'ece')} |"
    lines.append(row)
  return "\n".join(lines)


# The calibration verdict: (metric, label, scale); each one but top-1 error
# also after temperature scaling (``<metric>_ts``), which leaves the error alone.
CAL_VERDICT = (("top1_error", "top-1 error (points)", 100), ("ece", "ECE (points)", 100),
               ("adaptive_ece", "adaptive ECE (points)", 100), ("nll", "NLL", 1),
               ("brier", "Brier", 1), ("aurc", "AURC (x100)", 100))
# Calibration errors: a verdict only where the reference is over-confident.
CALIBRATION_ERRORS = frozenset({"ece", "ece_ts", "adaptive_ece", "adaptive_ece_ts"})


def calibration_comparisons(arm: str, reference: str = "ce"
                            ) -> list[tuple[str, str, str, str, str, int]]:
  """Rows of the calibration verdict of one arm against the reference.

  Returns:
    ``(comparison label, metric label, metric of the arm, metric of the
    reference, reference words, scale)``: the arm against the reference raw,
    the arm raw against the reference after TS, and both after TS.
  """
  rows = []
  for m, label, scale in CAL_VERDICT:
    rows.append((f"{arm} - {reference}", label, m, m, reference, scale))
    if m == "top1_error":
      continue
    rows.append((f"{arm} - ({reference} + TS)", label, m, m + "_ts", f"{reference} + TS", scale))
    rows.append((f"({arm} + TS) - ({reference} + TS)", label, m + "_ts", m + "_ts",
                 f"{reference} + TS", scale))
  return rows


def _words(over: stats.Interval, n: int, who: str, ref: str, *, calibration: bool,
           calibration_allowed: bool, lower_is_better: bool = True,
           regime_words: str = "CE is not in the over-confident regime") -> str:
  if over.missing:
    return "n/a (not in the collected records)"
  if n < 2:
    return "none: one seed only"
  if calibration and not calibration_allowed:
    return f"none: {regime_words} (difference descriptive only)"
  if over.includes_zero:
    return "not resolved (interval includes 0)"
  better = (over.high < 0) == lower_is_better
  return f"{who} {'better' if better else 'worse'} than {ref}"


def calibration_verdict_table(kept: dict[str, dict[int, dict]], cache: stats.ResampleCache,
                              calibration_allowed: bool, reference: str = "ce") -> str:
  """Every arm against CE and against CE + TS on every calibration metric.

  Per seed a paired bootstrap of the test examples (the arm's and the
  reference's records, same resamples), over seeds a Student-t interval of the
  per-seed differences; negative = the arm lower = better.
  """
  ref_runs = kept.get(reference, {})
  lines = ["| comparison | metric | mean diff over seeds [95% t-interval] | "
           "seeds where the arm is lower (one-sided sign test p) | "
           "seeds whose bootstrap CI excludes 0 | verdict |", "|---|---|---|---|---|---|"]
  any_row = False
  for arm, runs in kept.items():
    if arm == reference:
      continue
    seeds = [s for s in sorted(set(runs) & set(ref_runs))
             if runs[s]["records"] is not None and ref_runs[s]["records"] is not None]
    if not seeds:
      continue
    who = arm
    for comp, label, m_arm, m_ref, ref_words, scale in calibration_comparisons(arm, reference):
      per_seed = {s: cache.paired(ref_runs[s]["records"], runs[s]["records"], m_arm,
                                  name_a=m_ref, seed=s) for s in seeds}
      over = stats.t_interval([iv.estimate for iv in per_seed.values()])
      n = len(per_seed)
      digits = 2 if scale == 100 else 3
      who = f"{arm} + TS" if m_arm.endswith("_ts") else arm
      words = _words(over, n, who, ref_words, calibration=m_arm in CALIBRATION_ERRORS,
                     calibration_allowed=calibration_allowed)
      if over.missing:
        lines.append(f"| {comp} | {label} | n/a | | | {words} |")
        continue
      wins = sum(iv.estimate < 0 for iv in per_seed.values())
      excl = [f"{s} ({'lower' if iv.high < 0 else 'higher'})" for s, iv in per_seed.items()
              if not iv.includes_zero]
      lines.append(f"| {comp} | {label} | {over.format(scale, digits)} | {wins}/{n} "
                   f"(p = {stats.sign_test_p(wins, n):.3f}) | {', '.join(excl) or 'none'} | "
                   f"{words} |")
      any_row = True
  return "\n".join(lines) if any_row else ""


# ---------------------------------------------------------------------------
# Trust under shift: corruptions, conformal sets, far-OOD detection.
# ---------------------------------------------------------------------------


def shift_by_corruption(run: dict, field: str) -> dict[str, float]:
  """``field`` per corruption averaged over severities 1-5, and the clean value.

  Returns:
    ``{'clean': value, corruption: mean over its severities ..., 'mean': mean
    over the corruptions}`` (corruptions in the order of the records); empty
    without a ``shift`` section.
  """
  recs = run.get("shift") or []
  out: dict[str, float] = {}
  per: dict[str, list[float]] = {}
  for r in recs:
    if r["severity"] == 0:
      out["clean"] = float(r[field])
    else:
      per.setdefault(r["corruption"], []).append(float(r[field]))
  out.update({k: float(np.mean(v)) for k, v in per.items()})
  if per:
    out["mean"] = float(np.mean([out[k] for k in per]))
  return out


def shift_mean(run: dict, field: str) -> float:
  """``field`` averaged over severities 1-5, then over corruptions (NaN if absent)."""
  return shift_by_corruption(run, field).get("mean", float("nan"))


def ood_auroc(run: dict, set_name: str, score: str) -> float:
  """A far-OOD set's AUROC under one score (NaN if absent)."""
  try:
    return float(run["ood"]["sets"][set_name][score]["auroc"])
  except (KeyError, TypeError):
    return float("nan")


def _ordered(items) -> list:
  return list(dict.fromkeys(items))


def ood_keys(kept: dict[str, dict[int, dict]]) -> list[tuple[str, str]]:
  return _ordered((set_name, score) for runs in kept.values() for r in runs.values()
                  for set_name, by in ((r.get("ood") or {}).get("sets") or {}).items()
                  for score in sorted(by))


def _pm_or_na(values: Sequence[float], scale: float, digits: int = 2) -> str:
  x = [v for v in values if v is not None and not np.isnan(v)]
  if not x:
    return "n/a"
  return _pm(x, scale, digits) + ("" if len(x) == len(values) else f" ({len(x)} seeds)")


def shift_tables(kept: dict[str, dict[int, dict]]) -> str:
  """ECE and error under each corruption, and a summary over corruptions."""
  with_shift = {arm: [runs[s] for s in sorted(runs) if runs[s].get("shift")]
                for arm, runs in kept.items()}
  with_shift = {a: rs for a, rs in with_shift.items() if rs}
  if not with_shift:
    return ""
  cols = _ordered(k for rs in with_shift.values() for r in rs
                  for k in shift_by_corruption(r, "ece"))
  cols = ["clean"] + [c for c in cols if c not in ("clean", "mean")] + ["mean"]
  parts = []
  for field, title in (("ece", "ECE %"), ("ece_ts", "ECE after TS % (T fitted on clean val)"),
                       ("top1_error", "Top-1 error %")):
    head = "| arm | " + " | ".join("mean over corruptions" if c == "mean" else c
                                   for c in cols) + " |"
    lines = [f"{title} on the test split under each corruption, averaged over severities "
             "1-5 (clean: the uncorrupted test split), mean ± std over seeds:", "", head,
             "|" + "---|" * (head.count("|") - 1)]
    for arm, rs in with_shift.items():
      by = [shift_by_corruption(r, field) for r in rs]
      lines.append(f"| {arm} | " + " | ".join(
          _pm_or_na([b.get(c, float("nan")) for b in by], 100) for c in cols) + " |")
    parts.append("\n".join(lines))
  head = ("| arm | seeds | ECE % | ECE after TS % | NLL | NLL after TS | top-1 err % | "
          "AURC (x100) |")
  lines = ["Mean over corruptions and severities 1-5, mean ± std over seeds:", "", head,
           "|" + "---|" * (head.count("|") - 1)]
  for arm, rs in with_shift.items():
    cells = [_pm_or_na([shift_mean(r, f) for r in rs], sc, d)
             for f, sc, d in (("ece", 100, 2), ("ece_ts", 100, 2), ("nll", 1, 3),
                              ("nll_ts", 1, 3), ("top1_error", 100, 2), ("aurc", 100, 2))]
    lines.append(f"| {arm} | {','.join(str(r['seed']) for r in rs)} | " + " | ".join(cells)
                 + " |")
  parts.append("\n".join(lines))
  return "\n\n".join(parts)


def conformal_table(kept: dict[str, dict[int, dict]]) -> str:
  """Split-conformal LAC and APS sets on test: coverage, mean size, empty sets."""
  rows = []
  alpha = None
  for arm, runs in kept.items():
    rs = [runs[s] for s in sorted(runs) if runs[s].get("conformal")]
    if not rs:
      continue
    alpha = rs[0]["conformal"].get("alpha", alpha)
    cells = []
    for method in ("lac", "aps"):
      c = [r["conformal"].get(method, {}) for r in rs]
      cells += [_pm_or_na([x.get("coverage", np.nan) for x in c], 100, 1),
                _pm_or_na([x.get("mean_size", np.nan) for x in c], 1, 2),
                _pm_or_na([x.get("empty_fraction", np.nan) for x in c], 100, 1)]
    rows.append(f"| {arm} | " + " | ".join(cells) + " |")
  if not rows:
    return ""
  target = f"{100 * (1 - alpha):.0f}%" if alpha is not None else "1 - alpha"
  head = ("| arm | LAC coverage % | LAC mean set size | LAC empty % | APS coverage % | "
          "APS mean set size | APS empty % |")
  return "\n".join([f"Split-conformal prediction sets on test (temperature-scaled "
                    f"probabilities, calibrated on val; target coverage {target}), "
                    "mean ± std over seeds:", "", head, "|" + "---|" * (head.count("|") - 1)]
                   + rows)


# Cross-source quantities: (label, run -> value, scale, lower_is_better).
CROSS_QUANTITIES = (
    ("cross-source top-1 error (points)", lambda r: r["cross_source"]["raw"]["top1_error"], 100,
     True),
    ("cross-source ECE (points)", lambda r: r["cross_source"]["raw"]["ece"], 100, True),
    ("cross-source ECE after TS (points)", lambda r: r["cross_source"]["ts"]["ece"], 100, True),
    ("cross-source NLL", lambda r: r["cross_source"]["raw"]["nll"], 1, True),
    ("cross-source LAC coverage (points)",
     lambda r: r["cross_source"]["conformal"]["lac"]["coverage"], 100, False),
    ("cross-source Mahalanobis OOD flag rate (points)",
     lambda r: r["cross_source"]["ood_flagged"]["mahalanobis"], 100, True),
)


def _has_cross(kept: dict[str, dict[int, dict]]) -> bool:
  return any(r.get("cross_source") for runs in kept.values() for r in runs.values())


def cross_source_table(kept: dict[str, dict[int, dict]]) -> str:
  """Per arm, the cross-source scores (mean ± std over seeds); empty without them."""
  if not _has_cross(kept):
    return ""
  first = next(r["cross_source"] for runs in kept.values() for r in runs.values()
               if r.get("cross_source"))
  head = ("| arm | seeds | " + " | ".join(q[0].replace("cross-source ", "")
                                          for q in CROSS_QUANTITIES) + " |")
  lines = [f"Cross-source shift: every run scored on {first['source']}'s test images mapped to "
           f"this cell's classes ({first['mapping']}; {first['count']} of "
           f"{first['source_count']} images kept). Temperature, conformal threshold and OOD "
           "thresholds are the run's own, from its calibration half. Mean ± std over seeds:",
           "", head, "|" + "---|" * (head.count("|") - 1)]
  for arm, runs in kept.items():
    rs = [runs[s] for s in sorted(runs) if runs[s].get("cross_source")]
    if not rs:
      continue
    cells = [_pm([get(r) for r in rs], scale, 2 if scale == 100 else 3)
             for _, get, scale, _ in CROSS_QUANTITIES]
    lines.append(f"| {arm} | {','.join(str(r.get('seed', '?')) for r in rs)} | "
                 + " | ".join(cells) + " |")
  return "\n".join(lines)


def ood_table(kept: dict[str, dict[int, dict]]) -> str:
  """Far-OOD AUROC per set and score (test split = in-distribution)."""
  keys = ood_keys(kept)
  if not keys:
    return ""
  sizes = {}
  for runs in kept.values():
    for r in runs.values():
      sizes.update((r.get("ood") or {}).get("set_sizes") or {})
  head = "| arm | " + " | ".join(f"{s} {sc}" for s, sc in keys) + " |"
  lines = ["Far-OOD detection, AUROC % (test split against each far-OOD set; "
           + ", ".join(f"{k}: {v} images" for k, v in sizes.items())
           + "), mean ± std over seeds:", "", head, "|" + "---|" * (head.count("|") - 1)]
  for arm, runs in kept.items():
    rs = [runs[s] for s in sorted(runs) if runs[s].get("ood")]
    if rs:
      lines.append(f"| {arm} | " + " | ".join(
          _pm_or_na([ood_auroc(r, s, sc) for r in rs], 100, 1) for s, sc in keys) + " |")
  return "\n".join(lines)


def trust_quantities(kept: dict[str, dict[int, dict]]) -> list[tuple[str, Any, int, bool]]:
  """``(label, run -> value, scale, lower_is_better)`` of the paired shift/OOD table."""
  out = []
  if any(r.get("shift") for runs in kept.values() for r in runs.values()):
    out += [("mean shifted ECE (points)", lambda r: shift_mean(r, "ece"), 100, True),
            ("mean shifted ECE after TS (points)", lambda r: shift_mean(r, "ece_ts"), 100, True),
            ("mean shifted top-1 error (points)", lambda r: shift_mean(r, "top1_error"), 100,
             True)]
  for set_name, score in ood_keys(kept):
    out.append((f"OOD AUROC {set_name} {score} (points)",
                lambda r, s=set_name, sc=score: ood_auroc(r, s, sc), 100, False))
  if _has_cross(kept):
    out += [(label, lambda r, g=get: g(r) if r.get("cross_source") else float("nan"), scale,
             lower) for label, get, scale, lower in CROSS_QUANTITIES]
  return out


def trust_paired_table(kept: dict[str, dict[int, dict]], reference: str = "ce") -> str:
  """``arm - reference`` per seed and a t-interval over seeds, shift and OOD."""
  quantities = trust_quantities(kept)
  ref = kept.get(reference, {})
  if not quantities or not ref:
    return ""
  lines = ["| comparison | quantity | per-seed differences | mean over seeds [95% t-interval] | "
           "verdict |", "|---|---|---|---|---|"]
  for arm, runs in kept.items():
    if arm == reference:
      continue
    seeds = sorted(set(runs) & set(ref))
    for label, get, scale, lower in quantities:
      diffs = {s: get(runs[s]) - get(ref[s]) for s in seeds}
      diffs = {s: d for s, d in diffs.items() if not np.isnan(d)}
      if not diffs:
        continue
      over = stats.t_interval(list(diffs.values()))
      words = _words(over, len(diffs), arm, reference, calibration=False,
                     calibration_allowed=True, lower_is_better=lower)
      lines.append(f"| {arm} - {reference} | {label} | "
                   + ", ".join(f"{s}: {scale * d:+.2f}" for s, d in diffs.items())
                   + f" | {over.format(scale, 2)} | {words} |")
  return "\n".join(lines) if len(lines) > 2 else ""


def trust_section(kept: dict[str, dict[int, dict]], reference: str = "ce") -> list[str]:
  """The "trust under shift" section's lines; empty when no run has the keys."""
  parts = [t for t in (shift_tables(kept), conformal_table(kept), ood_table(kept),
                       cross_source_table(kept)) if t]
  if not parts:
    return []
  out = ["## Trust under shift: corruptions, conformal sets, far-OOD detection", ""]
  for t in parts:
    out += [t, ""]
  paired = trust_paired_table(kept, reference)
  if paired:
    out += [f"Paired over seeds, arm minus {reference} (same seed): per-seed differences and a "
            "Student-t interval of their mean. Lower is better for ECE and error, higher for "
            "AUROC; the verdict needs two seeds and an interval that excludes 0.", "",
            paired, ""]
  return out


def shift_severity_curves(kept: dict[str, dict[int, dict]]) -> dict[str, dict[str, list]]:
  """Per arm: error, ECE and ECE after TS at each severity, averaged over the
  corruptions and then over the seeds (severity 0 = clean); arms without
  ``shift`` records are left out."""
  out = {}
  for arm, runs in kept.items():
    per_seed = [r["shift"] for r in runs.values() if r.get("shift")]
    if not per_seed:
      continue
    severities = sorted({rec["severity"] for rec in per_seed[0]})
    curve = {"severity": severities}
    for key in ("top1_error", "ece", "ece_ts"):
      curve[key] = [float(np.mean([np.mean([rec[key] for rec in recs if rec["severity"] == sev])
                                   for recs in per_seed])) for sev in severities]
    out[arm] = curve
  return out


def reliability_sums(kept: dict[str, dict[int, dict]], reference: str = "ce"
                     ) -> dict[str, dict]:
  """Reliability-diagram sums of each kept arm, test records of every seed pooled.

  Returns:
    ``{panel: stats.bin_sums(...)}``: the reference raw, the reference after
    temperature scaling (``'<reference> + TS'``), then every other arm raw;
    each panel names the seeds that have per-example records (arms with
    none are left out).
  """
  out = {}
  panels = [(reference, reference, "conf"), (f"{reference} + TS", reference, "conf_ts")]
  panels += [(arm, arm, "conf") for arm in kept if arm != reference]
  for label, arm, key in panels:
    recs = [r["records"] for _, r in sorted(kept.get(arm, {}).items())
            if r.get("records") is not None]
    if recs:
      n = len(recs)
      out[f"{label} ({n} seed{'s' if n != 1 else ''})"] = stats.bin_sums(
          np.concatenate([x[key] for x in recs]), np.concatenate([x["correct"] for x in recs]))
  return out


# (records metric, label, scale); "<m>_ts" is results.json's test_ts[<m>], else test[<m>].
INTERACTION_METRICS = (("top1_error", "top-1 error (points)", 100.0), ("nll", "NLL", 1.0),
                       ("ece", "ECE (points)", 100.0), ("nll_ts", "NLL after TS", 1.0),
                       ("ece_ts", "ECE after TS (points)", 100.0))


def interaction_table(kept: dict[str, dict[int, dict]], first: tuple[str, str],
                      second: tuple[str, str], num_resamples: int = 2000) -> str:
  """``(b2 - a2) - (b1 - a1)`` per seed on the reported metrics, mean over seeds
  with a Student-t interval and a two-level bootstrap interval (seeds, then the
  reported examples, :func:`ols_jax.study.meta.contrast_bootstrap`); the four
  runs of a seed share its test halves.

  Args:
    kept: ``{arm: {seed: run}}`` (:func:`kept_runs`).
    first, second: ``(reference, arm)`` pairs, e.g. (CE, OLS) from a random
      and from a pretrained start.
    num_resamples: bootstrap resamples (0: no bootstrap column).

  Returns:
    A markdown table (empty when no seed has all four runs).
  """
  (a1, b1), (a2, b2) = first, second
  arms = (a1, b1, a2, b2)
  seeds = sorted(set.intersection(*(set(kept.get(x, {})) for x in arms)))
  if not seeds:
    return ""
  rows = ["| metric | " + " | ".join(f"seed {s}" for s in seeds)
          + f" | mean over {len(seeds)} seed(s) [95% t-interval] | "
          "[95% two-level bootstrap] | resolved |",
          "|---|" + "---|" * len(seeds) + "---|---|---|"]
  for name, label, scale in INTERACTION_METRICS:
    split, key = ("test_ts", name[:-3]) if name.endswith("_ts") else ("test", name)

    def value(arm, seed, split=split, key=key):
      return float(kept[arm][seed].get(split, {}).get(key, float("nan")))
    d = [scale * ((value(b2, s) - value(a2, s)) - (value(b1, s) - value(a1, s))) for s in seeds]
    over = stats.t_interval(d)
    groups = [[kept[x][s].get("records") for x in arms] for s in seeds]
    boot = "n/a"
    if num_resamples and len(seeds) >= 2 and all(
        stats.available(r, name) for g in groups for r in g):
      iv, _ = meta.contrast_bootstrap(groups, (name,) * 4, (1.0, -1.0, -1.0, 1.0),
                                      num_resamples=num_resamples)
      boot = f"[{scale * iv.low:+.3f}, {scale * iv.high:+.3f}]"
    resolved = ("n/a" if np.isnan(over.estimate) else
                "no (interval includes 0)" if over.low <= 0.0 <= over.high else "yes")
    rows.append(f"| {label} | " + " | ".join(f"{x:+.3f}" for x in d)
                + f" | {over.estimate:+.3f} [{over.low:+.3f}, {over.high:+.3f}] | {boot} | "
                f"{resolved} |")
  return "\n".join(rows)


def convergence_table(kept: dict[str, dict[int, dict]], reference: str,
                      seeds: Sequence[int]) -> str:
  """How fast and whether each arm trains, against the reference arm.

  Per arm and seed: the first epoch whose validation top-1 error is at or below
  the reference arm's *final* validation error of the same seed ("never" if no
  epoch is); the final validation and training errors; the runs missing from
  the collection (a run that diverges writes no results) and those that end
  above 90% training error.

  Args:
    kept: ``{arm: {seed: run}}`` (:func:`kept_runs`).
    reference: the arm whose final validation error is the bar.
    seeds: the seeds the sweep plans.

  Returns:
    A markdown table (empty when the reference has no collected run).
  """
  ref_runs = kept.get(reference, {})
  if not ref_runs:
    return ""
  bar = {s: float(_epoch_records(r)[-1]["eval/top1_error"])
         for s, r in ref_runs.items() if _epoch_records(r)}
  rows = [f"| arm | runs | epochs to reach {reference}'s final val error, per seed | "
          "final val error (%) | final train error (%) | ending above 90% train error |",
          "|---|---|---|---|---|---|"]
  for arm, runs in kept.items():
    reach, val_err, train_err, stuck = [], [], [], 0
    for seed in sorted(runs):
      recs = _epoch_records(runs[seed])
      if not recs:
        continue
      hit = [int(r["epoch"]) for r in recs if seed in bar and
             float(r["eval/top1_error"]) <= bar[seed] + 1e-12]
      reach.append(f"{seed}: {hit[0] if hit else 'never'}")
      val_err.append(float(recs[-1]["eval/top1_error"]))
      train_err.append(1.0 - _final_train_accuracy(runs[seed]))
      stuck += int(train_err[-1] > 0.9)
    missing = [s for s in seeds if s not in runs]
    count = f"{len(runs)} of {len(seeds)}" + (f" (missing seed {', '.join(map(str, missing))})"
                                              if missing else "")
    rows.append(f"| {arm} | {count} | {', '.join(reach) or 'n/a'} | "
                f"{_pm(val_err, 100.0) if val_err else 'n/a'} | "
                f"{_pm(train_err, 100.0) if train_err else 'n/a'} | {stuck} |")
  return "\n".join(rows)


EPOCH_CURVE_METRICS = (("eval/nll", "val NLL", 1.0), ("eval/ece", "val ECE (%)", 100.0),
                       ("eval/top1_error", "val top-1 error (%)", 100.0),
                       ("train/loss", "train loss", 1.0))


def epoch_curve_table(kept: dict[str, dict[int, dict]], max_columns: int = 7) -> str:
  """The per-epoch curves as numbers: mean [min, max] over seeds at a few epochs.

  The epochs shown are the first, the last and evenly spaced ones between
  (``max_columns`` in all); ``curves.png`` has every epoch.

  Args:
    kept: ``{arm: {seed: run}}`` (:func:`kept_runs`).
    max_columns: how many epochs to show.

  Returns:
    A markdown table (empty when no run has epoch records).
  """
  per_arm = {arm: {s: {int(r["epoch"]): r for r in _epoch_records(run)}
                   for s, run in runs.items()} for arm, runs in kept.items()}
  epochs = sorted({e for seeds in per_arm.values() for recs in seeds.values() for e in recs})
  if not epochs:
    return ""
  if len(epochs) > max_columns:
    idx = np.unique(np.round(np.linspace(0, len(epochs) - 1, max_columns)).astype(int))
    epochs = [epochs[i] for i in idx]
  rows = ["| arm | metric | " + " | ".join(f"epoch {e}" for e in epochs) + " |",
          "|---|---|" + "---|" * len(epochs)]
  for arm, seeds in per_arm.items():
    for key, label, scale in EPOCH_CURVE_METRICS:
      cells = []
      for e in epochs:
        v = scale * np.asarray([float(recs[e][key]) for recs in seeds.values()
                                if e in recs and key in recs[e]], np.float64)
        cells.append("n/a" if v.size == 0 else
                     f"{v.mean():.3f} [{v.min():.3f}, {v.max():.3f}]" if scale == 1.0 else
                     f"{v.mean():.1f} [{v.min():.1f}, {v.max():.1f}]")
      rows.append(f"| {arm} | {label} | " + " | ".join(cells) + " |")
  return "\n".join(rows)


def write_summary(sweep: sweep_lib.Sweep, folder: pathlib.Path,
                  comparisons: Sequence[tuple[str, str]] = (), *,
                  num_resamples: int = 2000) -> pathlib.Path:
  """``summary.md`` and ``curves.png`` of a collected sweep.

  Sections that need results.json keys newer sweeps write (``val_dataset``,
  ``shift``, ``conformal``, ``ood``) are left out when no run has them; record
  metrics older collected records lack (Brier) are printed as n/a.
  """
  folder = pathlib.Path(folder)
  kept = kept_runs(sweep, folder)
  cache = stats.ResampleCache(num_resamples=num_resamples)
  plots.arm_curves({arm: [_epoch_records(runs[s]) for s in sorted(runs)]
                    for arm, runs in kept.items() if runs},
                   folder / "curves.png", title=sweep.title)
  ref = sweep.reference
  comparisons = comparisons or sweep.summary_comparisons()
  halves = uses_halves(kept)
  tuned_on = ("the calibration half of the test split only; \"val\" below is that half"
              if halves else "validation split only")
  reported = "reported half of the test split" if halves else "test split"
  parts = [f"# {sweep.title}", "",
           f"Generated by `python experiments/collect_sweep.py {sweep.name}` from the "
           "collected per-run files in this folder.", "",
           f"## Tuning (seed 0, {tuned_on})", "", selection_table(sweep, folder), "",
           f"## Kept setting of every arm, mean ± std over seeds ({reported})", "",
           arm_table(kept), "",
           "Validation curves of the kept settings (every seed): `curves.png`.", "",
           f"## Regime of the reference ({ref})", ""]
  if halves:
    parts += [plan_regime_line(kept, ref), ""]
  parts += [regime_lines(kept, ref), ""]
  gap = val_test_table(kept, ref)
  if gap:
    parts += [gap, ""]
  sections, results = [], {}
  for a, b in comparisons:
    table, res = paired_table(kept, a, b, num_resamples=num_resamples, cache=cache)
    if res:
      results[(a, b)] = res
    sections += [f"## Paired differences: {b} minus {a}", "",
                 "Negative = lower for " + b + " (better for every metric listed). "
                 f"Per seed: {num_resamples:,} paired bootstrap resamples of the test examples. "
                 "Over seeds: Student-t interval of the mean per-seed difference.", "", table,
                 ""]
  allowed = calibration_verdict_allowed(kept, ref)
  parts += ["## Verdict, in words", "",
            "Negative differences = b lower = b better. A verdict needs at least two seeds and "
            "an over-seeds interval that excludes 0; ECE rows carry a verdict only when CE is "
            + ("over-confident by the plan's regime rule "
               if halves else "in the over-confident regime on every seed ")
            + f"({'it is' if allowed else 'it is not'}, see above).", "",
            verdict_table(results, allowed), ""]
  cal = calibration_verdict_table(kept, cache, allowed, ref)
  if cal:
    parts += ["## Calibration verdict: every arm against CE and against CE + TS", "",
              "Each arm against CE raw, the arm raw against CE after temperature scaling "
              "(CE + TS: the cheap post-hoc baseline a training-time method has to beat), and "
              f"both after TS. Per seed: {num_resamples:,} paired bootstrap resamples of the "
              "test examples; over seeds: Student-t interval of the mean per-seed difference. "
              "Negative = the arm lower = better. ECE and adaptive ECE rows carry a verdict "
              "only when CE is over-confident (the cell's regime verdict above); n/a = not in the "
              "collected records "
              "(collected before that metric was recorded).", "", cal, ""]
  rel = reliability_sums(kept, ref)
  if rel:
    plots.combined_reliability(rel, folder / "reliability.png",
                               title="Kept settings on the test split, seeds pooled")
    parts += ["Reliability diagrams of the kept settings (test split, every collected seed "
              "pooled; CE also after temperature scaling; each panel's ECE is of the pooled "
              "records, not the mean over seeds of the tables): `reliability.png`.", ""]
  shift_curves = shift_severity_curves(kept)
  if shift_curves:
    plots.arm_shift_curves(shift_curves, folder / "shift.png",
                           title=f"{sweep.title}: under corruption")
  parts += trust_section(kept, ref)
  if shift_curves:
    parts += ["Error and ECE against severity, each arm's kept setting (mean over the 8 "
              "corruptions and the collected seeds): `shift.png`.", ""]
  if sweep.interactions:  # a comparison of starts: how each arm trains, not only where it ends
    parts += [f"## Convergence against {ref}", "",
              "Validation = the calibration half. A diverged run writes no results and "
              "shows as missing.", "", convergence_table(kept, ref, sweep.seeds), "",
              "## Per-epoch curves, mean [min, max] over seeds", "",
              epoch_curve_table(kept), ""]
  for first, second in sweep.interactions:
    table = interaction_table(kept, first, second, num_resamples=num_resamples)
    if table:
      parts += [f"## Interaction: ({second[1]} - {second[0]}) minus ({first[1]} - {first[0]})",
                "", "Per seed, on the reported half; negative = the second difference is "
                "lower. Every interval is shown; none is multiplicity-corrected; "
                "\"resolved\" reads the t-interval (the bootstrap, which resamples "
                "only the few seeds there are, is the check).", "", table, ""]
  parts += sections
  path = folder / "summary.md"
  fileio.atomic_write_text(path, "\n".join(parts))
  return path
