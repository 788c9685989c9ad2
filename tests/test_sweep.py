"""Tuned comparisons: candidate grids, selection on validation, the report."""

import json
import pathlib
import sys

import numpy as np
import pytest
from scipy import stats as scipy_stats

from ols_jax import metrics as metrics_lib
from ols_jax.study import collected
from ols_jax.study import grid_runner
from ols_jax.study import stats
from ols_jax.study import sweep as sweep_lib
from ols_jax.study import sweep_report

ARMS = (sweep_lib.Arm("ce", "ce"),
        sweep_lib.Arm("ls", "ls", grid=(("eps", (0.05, 0.1)),)),
        sweep_lib.Arm("ols_zeros", "ols", fixed=(("ols_init", "zeros"),),
                      grid=(("alpha", (0.3, 0.7)),)))
SWEEP = sweep_lib.Sweep("toy", "Toy sweep", "experiments/configs/smoke.py", "tiny_cnn", ARMS,
                        seeds=(0, 1))


def test_cells_and_folders():
  tune = SWEEP.tuning_cells()
  assert [c.folder for c in tune] == ["ce", "ls_eps0.05", "ls_eps0.1",
                                      "ols_zeros_alpha0.3", "ols_zeros_alpha0.7"]
  assert tune[3].overrides == (("ols_init", "zeros"), ("alpha", "0.3"))
  assert all(c.seed == 0 for c in tune)
  final = SWEEP.final_cells({"ls": (("eps", 0.1),), "ce": ()})
  assert [(c.folder, c.seed) for c in final] == [("ce", 1), ("ls_eps0.1", 1)]


def test_every_cell_lists_each_run_once(monkeypatch):
  # ce has no grid: its seed-1 run belongs to the sweep whether or not chosen names it.
  for chosen in ({"ls": (("eps", 0.1),), "ols_zeros": (("alpha", 0.7),)},
                 {"ce": (), "ls": (("eps", 0.1),), "ols_zeros": (("alpha", 0.7),)}):
    every = SWEEP.every_cell(chosen)
    assert [(c.folder, c.seed) for c in every] == [
        ("ce", 0), ("ls_eps0.05", 0), ("ls_eps0.1", 0), ("ols_zeros_alpha0.3", 0),
        ("ols_zeros_alpha0.7", 0), ("ce", 1), ("ls_eps0.1", 1), ("ols_zeros_alpha0.7", 1)]
  # The calibration sweeps: 16 candidates on seed 0, 7 arms on seeds 1-2.
  monkeypatch.syspath_prepend(str(pathlib.Path(__file__).resolve().parent.parent / "experiments"))
  import sweeps  # pylint: disable=import-outside-toplevel
  cal = sweep_lib.find(sweeps.SWEEPS, "cal_brain4")
  chosen = {a.name: a.candidates()[-1] for a in cal.arms}
  assert len(cal.every_cell(chosen)) == 16 + 7 * 2


def test_split_per_seed_sets_the_halves_seed_without_renaming(monkeypatch):
  per_seed = sweep_lib.Sweep("toy2", "Toy", "experiments/configs/smoke.py", "tiny_cnn", ARMS,
                             seeds=(0, 1, 2), split_per_seed=True)
  chosen = {"ls": (("eps", 0.1),), "ols_zeros": (("alpha", 0.7),)}
  plain, split = SWEEP.every_cell(chosen), per_seed.every_cell(chosen)
  # Same folders as without the option; each run carries its own seed's halves.
  assert [c.folder for c in split if c.seed < 2] == [c.folder for c in plain]
  for c in split:
    assert dict(c.overrides)["calibration_split_seed"] == str(c.seed)
  assert ("ols_init", "zeros") in split[3].overrides
  assert all("calibration_split_seed" not in dict(c.overrides) for c in plain)
  # The regime cells: 19 candidates on seed 0, 7 kept arms on seeds 1-4, halves per seed.
  monkeypatch.syspath_prepend(str(pathlib.Path(__file__).resolve().parent.parent / "experiments"))
  import sweeps  # pylint: disable=import-outside-toplevel
  assert len(sweeps.REGIME_CELLS) >= 9
  for cell in sweeps.REGIME_CELLS:
    assert cell.split_per_seed and cell.seeds == (0, 1, 2, 3, 4)
    chosen = {a.name: a.candidates()[-1] for a in cell.arms}
    assert len(cell.every_cell(chosen)) == 19 + 7 * 4
    assert "--config.calibration_split=test_half" in cell.extra
  # The cold-start cells: four untuned arms x 3 seeds; a pretrained arm differs from its
  # random twin only by init_from (same budget, schedule and seeds).
  for cell in sweeps.COLD_START_CELLS:
    cells = cell.every_cell(cell.untuned())
    assert len(cells) == 4 * 3 and cell.split_per_seed
    by = {(c.folder, c.seed): dict(c.overrides) for c in cells}
    for method in ("ce", "ols"):
      for seed in (0, 1, 2):
        pre, rand = by[(f"{method}_pretrained", seed)], by[(f"{method}_random", seed)]
        assert pre.pop("init_from") == sweeps.COLD_START_PRETRAIN and pre == rand


def _fake_run(workdir, val_nll, val_err, seed, rng):
  workdir.mkdir(parents=True)
  logits = rng.normal(size=(200, 3)) * 2
  labels = rng.integers(0, 3, 200)
  rec = stats.example_records(logits, labels, 1.5)
  test = {k: stats.metric(rec, k) for k in ("top1_error", "ece", "nll")}
  test_ts = {"ece": stats.metric(rec, "ece_ts"), "nll": stats.metric(rec, "nll_ts")}
  for d in (test, test_ts):
    d.update(top1_error=test["top1_error"], top5_error=0.0, calibration_gap=0.02)
  (workdir / "results.json").write_text(json.dumps({
      "val": {"nll": val_nll, "top1_error": val_err}, "test": test, "test_ts": test_ts,
      "temperature": 1.5, "seed": seed}))
  (workdir / "metrics.jsonl").write_text(json.dumps(
      {"epoch": 1, "eval/top1_error": val_err, "eval/nll": val_nll, "eval/ece": 0.1,
       "train/accuracy": 0.9}) + "\n")
  return rec


def test_selection_uses_validation_and_breaks_ties_on_error(tmp_path):
  rng = np.random.default_rng(0)
  scores = {"ce": (1.0, 0.3), "ls_eps0.05": (0.9, 0.31), "ls_eps0.1": (0.8, 0.35),
            "ols_zeros_alpha0.3": (0.7, 0.30), "ols_zeros_alpha0.7": (0.7, 0.29)}
  for c in SWEEP.tuning_cells()[:-1]:
    _fake_run(c.workdir(tmp_path), *scores[c.folder], 0, rng)
  chosen = sweep_lib.select(SWEEP, tmp_path)
  assert set(chosen) == {"ce", "ls"}  # ols_zeros has not finished tuning
  assert chosen["ls"]["folder"] == "ls_eps0.1"  # lower val NLL wins over lower error
  _fake_run(SWEEP.tuning_cells()[-1].workdir(tmp_path), *scores["ols_zeros_alpha0.7"], 0, rng)
  chosen = sweep_lib.write_selection(SWEEP, tmp_path)
  assert chosen["ols_zeros"]["folder"] == "ols_zeros_alpha0.7"  # tie: lower error
  doc = json.loads((tmp_path / "selection.json").read_text())
  assert doc["rule"].startswith("lowest validation nll on seed 0")


def test_grid_edges_name_the_end_a_kept_setting_takes():
  arm = sweep_lib.Arm("ols_momentum", "ols", grid=(("ols_momentum", (0.5, 0.9)),
                                                   ("alpha", (0.3, 0.5, 0.7)),
                                                   ("tag", ("a", "b"))))
  assert sweep_lib.grid_edges(arm, (("ols_momentum", 0.9), ("alpha", 0.5), ("tag", "a"))) == [
      ("ols_momentum", 0.9, "highest")]
  # Lists from selection.json work as well; a non-numeric axis is never an edge.
  assert sweep_lib.grid_edges(arm, [["ols_momentum", 0.5], ["alpha", 0.3], ["tag", "b"]]) == [
      ("ols_momentum", 0.5, "lowest"), ("alpha", 0.3, "lowest")]
  assert sweep_lib.grid_edges(sweep_lib.Arm("ce", "ce"), ()) == []
  one = sweep_lib.Arm("ls", "ls", grid=(("ls_eps", (0.1,)),))
  assert sweep_lib.grid_edges(one, (("ls_eps", 0.1),)) == []


def test_selection_table_flags_a_kept_setting_at_a_grid_edge(tmp_path):
  rng = np.random.default_rng(0)
  scores = {"ce": (1.0, 0.3), "ls_eps0.05": (0.9, 0.31), "ls_eps0.1": (0.8, 0.35),
            "ols_zeros_alpha0.3": (0.7, 0.30), "ols_zeros_alpha0.7": (0.6, 0.29)}
  for c in SWEEP.tuning_cells():
    _fake_run(c.workdir(tmp_path), *scores[c.folder], 0, rng)
  sweep_lib.write_selection(SWEEP, tmp_path)
  text = sweep_report.selection_table(SWEEP, tmp_path)
  assert text.splitlines()[-1] == (
      "Kept settings at a grid edge (the plan flags them: a better setting may lie beyond "
      "the grid): ls eps = 0.1, the highest of 0.05, 0.1 (every point of a two-value grid "
      "is an end); ols_zeros alpha = 0.7, the highest of 0.3, 0.7 (every point of a "
      "two-value grid is an end).")


@pytest.mark.slow
def test_report_from_collected_files(tmp_path):
  rng = np.random.default_rng(1)
  kept = {"ce": "ce", "ls": "ls_eps0.1", "ols_zeros": "ols_zeros_alpha0.3"}
  scores = {"ce": {"ce": {"val_nll": 1.0, "val_top1_error": 0.3}},
            "ls": {"ls_eps0.1": {"val_nll": 0.9, "val_top1_error": 0.3}},
            "ols_zeros": {"ols_zeros_alpha0.3": {"val_nll": 0.8, "val_top1_error": 0.3}}}
  (tmp_path / "selection.json").write_text(json.dumps({"rule": "r", "arms": {
      a: {"folder": f, "candidate": [], "scores": scores[a]} for a, f in kept.items()}}))
  for arm, folder in kept.items():
    for seed in (0, 1):
      src = tmp_path / "src" / arm / str(seed)
      rec = _fake_run(src, 1.0, 0.3, seed, rng)
      dest = tmp_path / "tiny_cnn" / folder
      dest.mkdir(parents=True, exist_ok=True)
      (dest / f"seed{seed}.json").write_text((src / "results.json").read_text())
      (dest / f"seed{seed}_metrics.jsonl").write_text((src / "metrics.jsonl").read_text())
      np.savez(dest / f"seed{seed}_records.npz", **rec)
  path = sweep_report.write_summary(SWEEP, tmp_path, [("ce", "ls"), ("ls", "ols_zeros")])
  text = path.read_text()
  assert "## Paired differences: ls minus ce" in text
  assert "mean over 2 seed(s) [95% t-interval]" in text
  assert "| ols_zeros | ols_zeros_alpha0.3 | 0,1 |" in text
  assert "seed 0: CE final-epoch train accuracy 90.0%" in text
  assert "NOT the over-confident regime: train accuracy below 95% (under-fitted)" in text
  assert "## Verdict, in words" in text
  assert "none: CE is not in the over-confident regime" in text
  assert (tmp_path / "curves.png").stat().st_size > 1000
  assert (tmp_path / "reliability.png").stat().st_size > 1000
  assert "`reliability.png`" in text
  # Its panels: CE raw, CE after TS, then the other arms; the seeds' test
  # records pooled, binned as the metrics module bins (NumPy reference below).
  kept_runs = sweep_report.kept_runs(SWEEP, tmp_path)
  sums = sweep_report.reliability_sums(kept_runs)
  assert list(sums) == ["ce (2 seeds)", "ce + TS (2 seeds)", "ls (2 seeds)",
                        "ols_zeros (2 seeds)"]
  recs = [kept_runs["ce"][s]["records"] for s in (0, 1)]
  conf = np.concatenate([r["conf_ts"] for r in recs])
  correct = np.concatenate([r["correct"] for r in recs]).astype(np.float64)
  bins = np.minimum((conf * 15).astype(int), 14)
  np.testing.assert_allclose(sums["ce + TS (2 seeds)"]["bin_count"],
                             np.bincount(bins, minlength=15))
  ece = np.abs(np.bincount(bins, correct, 15) - np.bincount(bins, conf, 15)).sum() / len(conf)
  np.testing.assert_allclose(metrics_lib.reliability_curve(sums["ce + TS (2 seeds)"])["ece"],
                             ece, rtol=1e-6)


def _iv(est, low, high):
  return stats.Interval(est, low, high)


def test_verdict_words_follow_intervals_and_regime():
  better = {"per_seed": {0: _iv(-2, -3, -1), 1: _iv(-1, -2, 0.5), 2: _iv(-3, -4, -2)},
            "over_seeds": _iv(-2, -3.5, -0.5)}
  unresolved = {"per_seed": {0: _iv(1, 0.2, 2), 1: _iv(-1, -2, 0.5)},
                "over_seeds": _iv(0, -12, 12)}
  worse = {"per_seed": {0: _iv(1, 0.5, 1.5), 1: _iv(2, 1, 3)}, "over_seeds": _iv(1.5, 0.2, 2.8)}
  one_seed = {"per_seed": {0: _iv(-2, -3, -1)}, "over_seeds": _iv(-2, -np.inf, np.inf)}
  results = {("ce", "ols"): {"top1_error": better, "ece": better, "nll": worse},
             ("ls", "ols"): {"top1_error": unresolved, "ece_ts": one_seed}}
  rows = sweep_report.verdict_table(results, calibration_allowed=False).splitlines()[2:]
  words = {(r.split(" | ")[0][2:], r.split(" | ")[1]): r.split(" | ")[-1][:-2] for r in rows}
  assert words[("ols - ce", "top-1 error (points)")] == "ols better than ce"
  assert words[("ols - ce", "ECE (points)")].startswith("none: CE is not in the over-confident")
  assert words[("ols - ce", "NLL")] == "ols worse than ce"
  assert words[("ols - ls", "top-1 error (points)")] == "not resolved (interval includes 0)"
  assert words[("ols - ls", "ECE after TS (points)")] == "none: one seed only"
  assert "3/3 (p = 0.125)" in rows[0]
  assert "0 (lower), 2 (lower)" in rows[0]
  allowed = sweep_report.verdict_table(results, calibration_allowed=True)
  assert "| ECE (points) | -200.00 [-350.00, -50.00] | 3/3" in allowed
  assert allowed.splitlines()[3].endswith("| ols better than ce |")


# ---------------------------------------------------------------------------
# The calibration verdict's sections, from a synthetic collected folder.
# ---------------------------------------------------------------------------

KEPT = {"ce": "ce", "ls": "ls_eps0.1", "ols_zeros": "ols_zeros_alpha0.3"}
CORRUPTIONS = ("noise", "blur")


def _collected_run(dest, seed, logits, labels, rng, *, new_keys=True, train_acc=0.9):
  """One collected run: seed<k>.json, metrics.jsonl and float32 records."""
  rec = stats.example_records(logits, labels, 1.5)
  dest.mkdir(parents=True, exist_ok=True)
  test = {k: stats.metric(rec, k) for k in ("top1_error", "ece", "nll", "adaptive_ece",
                                            "brier", "aurc")}
  test_ts = {k: stats.metric(rec, k + "_ts") for k in ("ece", "nll", "adaptive_ece", "brier",
                                                       "aurc")}
  for d in (test, test_ts):
    d.update(top1_error=test["top1_error"], top5_error=0.0, calibration_gap=0.02)
  r = {"val": {"nll": 1.0, "top1_error": float(rng.uniform(0.2, 0.4)),
               "ece": float(rng.uniform(0.01, 0.1)), "calibration_gap": -0.01},
       "test": test, "test_ts": test_ts, "temperature": 1.5, "seed": seed,
       "wall_time_s": float(rng.uniform(100, 200))}
  if new_keys:
    r["config"] = {"calibration_split": "test_half"}
    r["val_dataset"] = {"top1_error": float(rng.uniform(0.3, 0.5)),
                        "ece": float(rng.uniform(0.05, 0.2))}
    r["conformal"] = {"alpha": 0.1, **{m: {
        "coverage": float(rng.uniform(0.85, 0.95)), "mean_size": float(rng.uniform(1, 3)),
        "empty_fraction": float(rng.uniform(0, 0.05)), "qhat": 0.9, "target_coverage": 0.9}
        for m in ("lac", "aps")}}
    r["ood"] = {"set_sizes": {"far": 50}, "sets": {"far": {
        s: {"auroc": float(rng.uniform(0.6, 0.95)), "fpr_at_95tpr": 0.5, "flagged_fraction": 0.3}
        for s in ("msp", "mahalanobis")}}}
    r["shift"] = [{"corruption": "none", "severity": 0, "top1_error": test["top1_error"],
                   "ece": test["ece"], "nll": test["nll"], "ece_ts": test_ts["ece"],
                   "nll_ts": test_ts["nll"], "aurc": test["aurc"]}]
    for c in CORRUPTIONS:
      for sev in range(1, 6):
        r["shift"].append({"corruption": c, "severity": sev,
                           **{k: float(rng.uniform(0, 1)) for k in
                              ("top1_error", "ece", "nll", "ece_ts", "nll_ts", "aurc")}})
  (dest / f"seed{seed}.json").write_text(json.dumps(r))
  (dest / f"seed{seed}_metrics.jsonl").write_text(json.dumps(
      {"epoch": 1, "eval/top1_error": 0.3, "eval/nll": 1.0, "eval/ece": 0.1,
       "train/accuracy": train_acc}) + "\n")
  keep = [k for k in rec if new_keys or not k.startswith("brier")]
  np.savez(dest / f"seed{seed}_records.npz",
           **{k: rec[k] if k == "correct" else rec[k].astype(np.float32) for k in keep})
  return r


def _collected_folder(root, *, new_keys=True, seeds=(0, 1)):
  """A collected sweep in ``root``; ls has a clearly lower NLL than ce on each seed."""
  rng = np.random.default_rng(7)
  (root / "selection.json").write_text(json.dumps({"rule": "r", "arms": {
      a: {"folder": f, "candidate": [], "scores": {}} for a, f in KEPT.items()}}))
  runs = {a: {} for a in KEPT}
  for seed in seeds:
    labels = rng.integers(0, 3, 200)
    base = rng.normal(size=(200, 3)) * 2
    boost = np.eye(3)[labels] * 3.0
    for arm, logits in (("ce", base), ("ls", base + boost),
                        ("ols_zeros", base + rng.normal(size=(200, 3)))):
      runs[arm][seed] = _collected_run(root / "tiny_cnn" / KEPT[arm], seed, logits, labels, rng,
                                       new_keys=new_keys)
  return runs


def _loaded_records(root, arm, seed):
  return dict(np.load(root / "tiny_cnn" / KEPT[arm] / f"seed{seed}_records.npz"))


def _t(values):
  x = np.asarray(values, np.float64)
  half = scipy_stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
  return x.mean(), x.mean() - half, x.mean() + half


def _section(text, title):
  return text.split(f"\n## {title}")[1].split("\n## ")[0]


def _row(text, start):
  rows = [line for line in text.splitlines() if line.startswith(start)]
  assert len(rows) == 1, (start, rows)
  return rows[0]


def test_calibration_sections_against_hand_computations(tmp_path):
  runs = _collected_folder(tmp_path)
  text = sweep_report.write_summary(SWEEP, tmp_path, [("ce", "ls")], num_resamples=100
                                    ).read_text()
  # (a) CE's validation-vs-test gap, with the dataset's own val split.
  r0 = runs["ce"][0]
  want = (f"| 0 | {100 * r0['val']['top1_error']:.2f} | {100 * r0['test']['top1_error']:.2f} | "
          f"{100 * (r0['test']['top1_error'] - r0['val']['top1_error']):+.2f} | "
          f"{100 * r0['val']['ece']:.2f} | {100 * r0['test']['ece']:.2f} | "
          f"{100 * (r0['test']['ece'] - r0['val']['ece']):+.2f} | "
          f"{100 * r0['val_dataset']['top1_error']:.2f} | {100 * r0['val_dataset']['ece']:.2f} |")
  assert want in text
  assert "val is the calibration half of the test split" in text
  # (b) arm raw against CE + TS: per-seed differences of the records, t over seeds.
  full, text = text, _section(text, "Calibration verdict")
  recs = {(a, s): _loaded_records(tmp_path, a, s) for a in KEPT for s in (0, 1)}
  for metric, label, scale, digits in (("ece", "ECE (points)", 100, 2),
                                       ("brier", "Brier", 1, 3),
                                       ("adaptive_ece", "adaptive ECE (points)", 100, 2)):
    d = [stats.metric(recs["ls", s], metric) - stats.metric(recs["ce", s], metric + "_ts")
         for s in (0, 1)]
    mean, low, high = (scale * v for v in _t(d))
    row = _row(text, f"| ls - (ce + TS) | {label} |")
    assert f"| {mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}] |" in row
  d = [stats.metric(recs["ls", s], "nll_ts") - stats.metric(recs["ce", s], "nll_ts")
       for s in (0, 1)]
  mean, low, high = _t(d)
  row = _row(text, "| (ls + TS) - (ce + TS) | NLL |")
  assert f"| {mean:+.3f} [{low:+.3f}, {high:+.3f}] | 2/2 (p = 0.250) |" in row
  assert high < 0 and row.endswith("| ls + TS better than ce + TS |")
  assert _row(text, "| ls - ce | ECE (points) |").endswith(
      "| none: CE is not in the over-confident regime (difference descriptive only) |")
  assert "| ols_zeros - ce | Brier |" in text
  assert "| ls - (ce + TS) | top-1 error" not in text  # TS leaves the error alone
  text = full
  # (c) shift: ECE per corruption averaged over severities 1-5, mean ± std over seeds.
  def by(r, field, c):
    return np.mean([x[field] for x in r["shift"] if x["corruption"] == c])
  noise = [100 * by(runs["ls"][s], "ece", "noise") for s in (0, 1)]
  mean_ece = [100 * np.mean([by(runs["ls"][s], "ece", c) for c in CORRUPTIONS])
              for s in (0, 1)]
  clean = [100 * runs["ls"][s]["test"]["ece"] for s in (0, 1)]
  trust = _section(text, "Trust under shift")
  row = [line for line in trust.splitlines() if line.startswith("| ls | ")][0]  # ECE table
  assert row.startswith(f"| ls | {np.mean(clean):.2f} ± {np.std(clean, ddof=1):.2f} | "
                        f"{np.mean(noise):.2f} ± {np.std(noise, ddof=1):.2f} |")
  assert row.endswith(f"| {np.mean(mean_ece):.2f} ± {np.std(mean_ece, ddof=1):.2f} |")
  # Conformal and OOD tables.
  lac = [100 * runs["ols_zeros"][s]["conformal"]["lac"]["coverage"] for s in (0, 1)]
  assert f"| ols_zeros | {np.mean(lac):.1f} ± {np.std(lac, ddof=1):.1f} |" in text
  assert "target coverage 90%" in text and "far: 50 images" in text
  # Paired over seeds: mean shifted ECE and each OOD AUROC, arm minus CE.
  d = [np.mean([by(runs["ls"][s], "ece", c) for c in CORRUPTIONS])
       - np.mean([by(runs["ce"][s], "ece", c) for c in CORRUPTIONS]) for s in (0, 1)]
  mean, low, high = (100 * v for v in _t(d))
  row = _row(text, "| ls - ce | mean shifted ECE (points) |")
  assert (f"0: {100 * d[0]:+.2f}, 1: {100 * d[1]:+.2f} | {mean:+.2f} [{low:+.2f}, "
          f"{high:+.2f}] |") in row
  d = [runs["ols_zeros"][s]["ood"]["sets"]["far"]["mahalanobis"]["auroc"]
       - runs["ce"][s]["ood"]["sets"]["far"]["mahalanobis"]["auroc"] for s in (0, 1)]
  mean, low, high = (100 * v for v in _t(d))
  row = _row(text, "| ols_zeros - ce | OOD AUROC far mahalanobis (points) |")
  assert f"| {mean:+.2f} [{low:+.2f}, {high:+.2f}] |" in row
  assert "| ols_zeros - ce | OOD AUROC far msp (points) |" in text


def test_older_collected_folder_omits_the_new_sections(tmp_path):
  _collected_folder(tmp_path, new_keys=False)
  text = sweep_report.write_summary(SWEEP, tmp_path, [("ce", "ls")], num_resamples=50
                                    ).read_text()
  assert "## Trust under shift" not in text and "dataset val" not in text
  assert "val is the dataset's own validation split" in text
  assert _row(_section(text, "Calibration verdict"), "| ls - (ce + TS) | Brier |") == (
      "| ls - (ce + TS) | Brier | n/a | | | n/a (not in the collected records) |")
  # Adaptive ECE needs only conf_ts/correct, which older records have: it is computed.
  d = [stats.metric(_loaded_records(tmp_path, "ls", s), "adaptive_ece")
       - stats.metric(_loaded_records(tmp_path, "ce", s), "adaptive_ece_ts") for s in (0, 1)]
  mean, low, high = (100 * v for v in _t(d))
  row = _row(_section(text, "Calibration verdict"), "| ls - (ce + TS) | adaptive ECE (points) |")
  assert f"| {mean:+.2f} [{low:+.2f}, {high:+.2f}] |" in row
  assert "## Paired differences: ls minus ce" in text


def test_collector_saves_and_checks_the_new_arrays(tmp_path):
  rng = np.random.default_rng(3)
  logits, labels = rng.normal(size=(120, 4)) * 3, rng.integers(0, 4, 120)
  rec = stats.example_records(logits, labels, 0.8)
  probs = np.exp(logits / 0.8 - np.log(np.exp(logits / 0.8).sum(-1, keepdims=True)))
  results = {"test": {k: stats.metric(rec, k) for k in ("top1_error", "ece", "nll", "brier")},
             "test_ts": {"brier": stats.metric(rec, "brier_ts"),
                         "adaptive_ece": metrics_lib.adaptive_ece(probs, labels)}}
  path = tmp_path / "seed0_records.npz"
  collected.save_records(rec, results, path, where="toy")
  saved = dict(np.load(path))
  assert set(saved) == {"correct", "conf", "logp", "brier", "conf_ts", "logp_ts", "brier_ts"}
  np.testing.assert_allclose(stats.metric(saved, "brier_ts"), results["test_ts"]["brier"],
                             atol=1e-6)
  results["test"]["brier"] += 0.01
  with pytest.raises(collected.RecordMismatchError, match="brier"):
    collected.save_records(rec, results, tmp_path / "bad.npz", where="toy")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["seed0_records.npz"]


def test_collected_layout_read_back_and_restored(tmp_path):
  """One reader and one restore for the collected layout (both pipelines)."""
  docs, runs_dir = tmp_path / "docs", tmp_path / "runs"
  docs.mkdir()
  _collected_folder(docs)
  (docs / "tiny_cnn" / "ce" / "seed0_old.json").write_text("{}")  # not a run: skipped
  rows = collected.load_all(docs)
  assert [(r["variant"], r["seed"]) for r in rows] == [
      (f, s) for f in sorted(KEPT.values()) for s in (0, 1)]
  run = collected.load_run(docs, "tiny_cnn", "ls_eps0.1", 1)
  assert run["metrics"][0]["train/accuracy"] == 0.9 and set(run["records"]) >= {"correct"}
  assert "metrics" not in collected.load_run(docs, "tiny_cnn", "ce", 0, details=False)
  assert collected.load_run(docs, "tiny_cnn", "ce", 5) is None
  assert collected.restore(docs, runs_dir) == 6
  for folder in KEPT.values():
    for seed in (0, 1):
      work = runs_dir / "tiny_cnn" / folder / f"seed{seed}"
      assert sorted(p.name for p in work.iterdir()) == ["metrics.jsonl", "results.json"]
      assert (work / "results.json").read_text() == (
          docs / "tiny_cnn" / folder / f"seed{seed}.json").read_text()
  assert collected.restore(docs, runs_dir) == 0  # never overwrites
  # A restored folder is collected again as it was (no records: no checkpoint needed).
  again = tmp_path / "again"
  work = runs_dir / "tiny_cnn" / "ce" / "seed1"
  assert collected.collect_run(work, again, 1, records=False)
  assert sorted(p.name for p in again.iterdir()) == ["seed1.json", "seed1_metrics.jsonl"]
  assert not collected.collect_run(tmp_path / "unfinished", again, 2)


def test_cells_run_the_library_command_line():
  cell = SWEEP.tuning_cells()[1]
  out = pathlib.Path("out")
  cmd = grid_runner.command(cell, "cfg.py", out)
  assert cmd[:3] == [sys.executable, "-m", "ols_jax.cli"]
  assert "--config=cfg.py" in cmd and "--config.eps=0.05" in cmd
  script = grid_runner.command(cell, "cfg.py", out, entry_point=pathlib.Path("entry.py"))
  assert script[:2] == [sys.executable, "entry.py"] and script[2:] == cmd[3:]


def test_shift_severity_curves_average_corruptions_then_seeds(tmp_path):
  from ols_jax import plots  # pylint: disable=import-outside-toplevel
  from ols_jax.study import sweep_report  # pylint: disable=import-outside-toplevel

  def recs(offset):
    out = [{"corruption": "none", "severity": 0, "top1_error": 0.1 + offset, "ece": 0.05,
            "ece_ts": 0.04}]
    for name, extra in (("blur", 0.0), ("noise", 0.2)):
      for sev in (1, 2):
        out.append({"corruption": name, "severity": sev, "top1_error": 0.1 * sev + extra + offset,
                    "ece": 0.01 * sev, "ece_ts": 0.02 * sev})
    return out

  kept = {"ce": {0: {"shift": recs(0.0)}, 1: {"shift": recs(0.1)}}, "ls": {0: {}}}
  curves = sweep_report.shift_severity_curves(kept)
  assert set(curves) == {"ce"}
  c = curves["ce"]
  assert c["severity"] == [0, 1, 2]
  # severity 1: corruptions mean 0.2 (+offset), seeds mean offset 0.05 -> 0.25
  np.testing.assert_allclose(c["top1_error"], [0.15, 0.25, 0.35])
  np.testing.assert_allclose(c["ece_ts"], [0.04, 0.02, 0.04])
  path = plots.arm_shift_curves(curves, tmp_path / "shift.png")
  assert (tmp_path / "shift.png").stat().st_size > 0 and path.endswith("shift.png")


def test_job_env_caps_every_thread_pool_and_keeps_the_parent():
  base = {"XLA_FLAGS": "--xla_dump_to=/x", "OMP_NUM_THREADS": "3", "PATH": "/bin"}
  one = grid_runner.job_env(base, 1)
  assert one["XLA_FLAGS"] == "--xla_dump_to=/x --xla_cpu_multi_thread_eigen=false"
  assert one["OMP_NUM_THREADS"] == "3"  # the caller's own setting wins
  assert one["OPENBLAS_NUM_THREADS"] == one["MKL_NUM_THREADS"] == "1"
  four = grid_runner.job_env({}, 4)
  assert four["XLA_FLAGS"] == "--xla_force_host_platform_device_count=4"
  assert all(four[v] == "4" for v in grid_runner.THREAD_POOL_VARS)
  assert grid_runner.job_env(base, 0) == base
  assert base == {"XLA_FLAGS": "--xla_dump_to=/x", "OMP_NUM_THREADS": "3", "PATH": "/bin"}


@pytest.mark.slow
def test_a_sweep_without_a_ce_arm_reports_against_its_reference(tmp_path):
  arms = (sweep_lib.Arm("ce_random", "ce"), sweep_lib.Arm("ols_random", "ols"))
  sweep = sweep_lib.Sweep(name="t", title="t", config="c.py", model="tiny_cnn", arms=arms,
                          seeds=(0, 1), reference="ce_random",
                          comparisons=(("ce_random", "ols_random"),))
  rng = np.random.default_rng(2)
  (tmp_path / "selection.json").write_text(json.dumps({"rule": "r", "arms": {
      a.name: {"folder": a.name, "candidate": [], "scores": {}} for a in arms}}))
  for arm in arms:
    for seed in (0, 1):
      src = tmp_path / "src" / arm.name / str(seed)
      rec = _fake_run(src, 1.0, 0.3, seed, rng)
      dest = tmp_path / "tiny_cnn" / arm.name
      dest.mkdir(parents=True, exist_ok=True)
      (dest / f"seed{seed}.json").write_text((src / "results.json").read_text())
      (dest / f"seed{seed}_metrics.jsonl").write_text((src / "metrics.jsonl").read_text())
      np.savez(dest / f"seed{seed}_records.npz", **rec)
  text = sweep_report.write_summary(sweep, tmp_path, list(sweep.comparisons),
                                    num_resamples=50).read_text()
  assert "## Regime of the reference (ce_random)" in text
  assert "## Paired differences: ols_random minus ce_random" in text


def test_interaction_is_the_difference_of_paired_differences():
  def run(err, nll):
    return {"test": {"top1_error": err, "nll": nll, "ece": 0.1},
            "test_ts": {"nll": nll, "ece": 0.1}}
  kept = {"ce_r": {0: run(.3, 1.0), 1: run(.3, 1.1), 2: run(.3, 1.0)},
          "ols_r": {0: run(.3, .9), 1: run(.3, 1.0)},
          "ce_p": {0: run(.2, .8), 1: run(.2, .8)}, "ols_p": {0: run(.2, .6), 1: run(.2, .5)}}
  table = sweep_report.interaction_table(kept, ("ce_r", "ols_r"), ("ce_p", "ols_p"))
  # Seeds 0 and 1 have all four runs: (0.6 - 0.8) - (0.9 - 1.0) = -0.1, (0.5 - 0.8) - (1.0 - 1.1) = -0.2.
  nll = next(line for line in table.splitlines() if line.startswith("| NLL |"))
  cells = [c.strip() for c in nll.strip("|").split("|")]
  assert cells[1:3] == ["-0.100", "-0.200"] and cells[3].startswith("-0.150 [")
  assert cells[4] == "n/a"  # no per-example records here: no bootstrap
  assert "mean over 2 seed(s)" in table
  assert sweep_report.interaction_table(kept, ("ce_r", "ols_r"), ("ce_p", "nope")) == ""


def _run_with_errors(val_errors, train_acc=0.95):
  return {"metrics": [{"epoch": e + 1, "eval/top1_error": v, "eval/nll": 2.0 * v,
                       "eval/ece": v / 2.0, "train/loss": 1.0 - e / 10.0,
                       "train/accuracy": train_acc}
                      for e, v in enumerate(val_errors)]
          + [{"step": 99, "train/loss": 0.5}]}  # a step record: no eval keys, ignored


def test_convergence_table_counts_epochs_to_the_reference_bar_per_seed():
  kept = {"ce_random": {0: _run_with_errors([0.6, 0.4, 0.3]), 1: _run_with_errors([0.5, 0.2])},
          "ols_pretrained": {0: _run_with_errors([0.35, 0.3, 0.25]),
                             1: _run_with_errors([0.9, 0.9], train_acc=0.05)}}
  table = sweep_report.convergence_table(kept, "ce_random", seeds=(0, 1, 2))
  rows = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]]
          for r in table.splitlines()[2:]}
  # The reference reaches its own final error at its last epoch.
  assert rows["ce_random"][1] == "0: 3, 1: 2"
  # seed 0: bar 0.3, first reached at epoch 2; seed 1: bar 0.2, never.
  assert rows["ols_pretrained"][1] == "0: 2, 1: never"
  assert rows["ols_pretrained"][0] == "2 of 3 (missing seed 2)"
  assert rows["ols_pretrained"][4] == "1"  # seed 1 ends at 95% training error
  assert rows["ce_random"][4] == "0"
  assert sweep_report.convergence_table(kept, "ce", seeds=(0,)) == ""


def test_epoch_curve_table_shows_mean_and_range_at_spread_epochs():
  kept = {"ce": {0: _run_with_errors([0.5] * 10), 1: _run_with_errors([0.3] * 10)}}
  table = sweep_report.epoch_curve_table(kept, max_columns=4)
  header = table.splitlines()[0]
  assert [c.strip() for c in header.split("|")[3:-1]] == [
      "epoch 1", "epoch 4", "epoch 7", "epoch 10"]
  err_row = next(r for r in table.splitlines() if "val top-1 error" in r)
  assert "40.0 [30.0, 50.0]" in err_row
  nll_row = next(r for r in table.splitlines() if "val NLL" in r)
  assert "0.800 [0.600, 1.000]" in nll_row
  assert sweep_report.epoch_curve_table({"ce": {}}) == ""
