"""Tables of a tuned comparison (:mod:`ols_jax.sweep`) from its collected files.

The collected layout (written by ``experiments/collect_sweep.py``) under
``docs/results/<sweep>/``: ``selection.json`` and, per run,
``<model>/<run folder>/seed<k>.json`` (results.json), ``seed<k>_metrics.jsonl`` and
``seed<k>_records.npz`` (per-example test records, :func:`ols_jax.stats.example_records`).
Everything here reads only those files, so the report can be rebuilt on a
machine where the runs are gone.
"""

from __future__ import annotations

import json
import pathlib
from typing import Optional, Sequence

import numpy as np

from ols_jax import plots
from ols_jax import stats
from ols_jax import sweep as sweep_lib
from ols_jax.logging_utils import read_metrics

# (results key, split, label, scale) of the per-arm table.
TABLE = (("top1_error", "test", "Top-1 err %", 100), ("top5_error", "test", "Top-5 err %", 100),
         ("ece", "test", "ECE %", 100), ("ece", "test_ts", "ECE after TS %", 100),
         ("calibration_gap", "test", "conf-acc %", 100), ("nll", "test", "NLL", 1),
         ("nll", "test_ts", "NLL after TS", 1))
COMPARED = (("top1_error", "top-1 error (points)", 100), ("ece", "ECE (points)", 100),
            ("ece_ts", "ECE after TS (points)", 100), ("nll", "NLL", 1),
            ("nll_ts", "NLL after TS", 1), ("aurc", "AURC (x100)", 100),
            ("aurc_ts", "AURC after TS (x100)", 100))


def load_run(folder: pathlib.Path, model: str, run: str, seed: int) -> Optional[dict]:
  base = pathlib.Path(folder) / model / run
  path = base / f"seed{seed}.json"
  if not path.exists():
    return None
  run = json.loads(path.read_text())
  run["metrics"] = read_metrics(base / f"seed{seed}_metrics.jsonl")
  rec = base / f"seed{seed}_records.npz"
  run["records"] = dict(np.load(rec)) if rec.exists() else None
  return run


def kept_runs(sweep: sweep_lib.Sweep, folder: pathlib.Path) -> dict[str, dict[int, dict]]:
  """``{arm: {seed: run}}`` for each arm's kept candidate (``selection.json``)."""
  sel = json.loads((pathlib.Path(folder) / "selection.json").read_text())["arms"]
  out = {}
  for arm in sweep.arms:
    if arm.name not in sel:
      continue
    name = sel[arm.name]["folder"]
    runs = {s: load_run(folder, sweep.model, name, s) for s in sweep.seeds}
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
      path = folder / sweep.model / cell.folder / f"seed{sweep.tuning_seed}.json"
      if not path.exists():
        lines.append(f"| {arm.name} | {cell.folder} | (not run yet) | | |")
        continue
      val = json.loads(path.read_text())["val"]
      mark = "**yes**" if cell.folder == kept else ("" if kept else "(tuning not finished)")
      lines.append(f"| {arm.name} | {cell.folder} | {val[metric]:.4f} | "
                   f"{100 * val['top1_error']:.2f} | {mark} |")
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
  """True when every reference run is in the over-confident regime."""
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
                 num_resamples: int = 2000) -> tuple[str, dict]:
  """Paired differences ``b - a`` (negative = b lower) per seed and over seeds."""
  seeds = sorted(set(kept.get(a, {})) & set(kept.get(b, {})))
  per_seed = {s: (kept[a][s]["records"], kept[b][s]["records"]) for s in seeds
              if kept[a][s]["records"] is not None and kept[b][s]["records"] is not None}
  if not per_seed:
    return f"(no paired runs of {a} and {b} yet)", {}
  res = stats.compare_arms(per_seed, [m for m, _, _ in COMPARED], num_resamples=num_resamples)
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


def write_summary(sweep: sweep_lib.Sweep, folder: pathlib.Path,
                  comparisons: Sequence[tuple[str, str]] = ()) -> pathlib.Path:
  """``summary.md`` and ``curves.png`` of a collected sweep."""
  folder = pathlib.Path(folder)
  kept = kept_runs(sweep, folder)
  plots.arm_curves({arm: [_epoch_records(runs[s]) for s in sorted(runs)]
                    for arm, runs in kept.items() if runs},
                   folder / "curves.png", title=sweep.title)
  comparisons = comparisons or [("ce", a.name) for a in sweep.arms if a.name != "ce"]
  parts = [f"# {sweep.title}", "",
           f"Generated by `python experiments/collect_sweep.py {sweep.name}` from the "
           "collected per-run files in this folder.", "",
           "## Tuning (seed 0, validation split only)", "", selection_table(sweep, folder), "",
           "## Kept setting of every arm, mean ± std over seeds (test split)", "",
           arm_table(kept), "",
           "Validation curves of the kept settings (every seed): `curves.png`.", "",
           "## Regime of the reference (CE)", "", regime_lines(kept), ""]
  sections, results = [], {}
  for a, b in comparisons:
    table, res = paired_table(kept, a, b)
    if res:
      results[(a, b)] = res
    sections += [f"## Paired differences: {b} minus {a}", "",
                 "Negative = lower for " + b + " (better for every metric listed). "
                 "Per seed: 2,000 paired bootstrap resamples of the test examples. Over seeds: "
                 "Student-t interval of the mean per-seed difference.", "", table, ""]
  allowed = calibration_verdict_allowed(kept)
  parts += ["## Verdict, in words", "",
            "Negative differences = b lower = b better. A verdict needs at least two seeds and "
            "an over-seeds interval that excludes 0; ECE rows carry a verdict only when CE is "
            "in the over-confident regime on every seed "
            f"({'it is' if allowed else 'it is not'}, see above).", "",
            verdict_table(results, allowed), ""] + sections
  path = folder / "summary.md"
  tmp = folder / "summary.md.tmp"
  tmp.write_text("\n".join(parts))
  tmp.replace(path)
  return path
