"""Tuned comparisons: candidate grids, selection on validation, the report."""

import json

import numpy as np

from ols_jax import stats
from ols_jax import sweep as sweep_lib
from ols_jax import sweep_report

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
