"""The regime study's rule, per-cell effects, meta rows and report on synthetic cells."""

import pathlib

import numpy as np
import pytest

from ols_jax.study import meta
from ols_jax.study import pooled
from ols_jax.study import regime
from ols_jax.study import stats


def _run(nll, ece, *, nll_ts=None, ece_ts=None, gap=0.05, temperature=1.5, train=500):
  return {"test": {"nll": nll, "ece": ece, "top1_error": 0.2},
          "test_ts": {"nll": nll if nll_ts is None else nll_ts,
                      "ece": ece if ece_ts is None else ece_ts},
          "val": {"calibration_gap": gap}, "temperature": temperature,
          "split_sizes": {"train": train}, "records": None}


def _cell(name, ce_nll, ols_nll, *, gap=0.05, temperature=1.5, ce_ts_nll=None):
  """A cell whose CE and OLS uniform runs have the given per-seed NLLs (ECE = NLL / 10)."""
  ce_ts_nll = ce_nll if ce_ts_nll is None else ce_ts_nll
  kept = {"ce": {s: _run(a, a / 10, nll_ts=t, gap=gap, temperature=temperature)
                 for s, (a, t) in enumerate(zip(ce_nll, ce_ts_nll))},
          "ols_uniform": {s: _run(b, b / 10) for s, b in enumerate(ols_nll)}}
  return pooled.Cell(name, pathlib.Path(name), kept, [], {}, 60.0 * len(ce_nll), 2 * len(ce_nll))


@pytest.mark.parametrize("gap,temperature,expected", [
    (0.02, 1.2, True), (0.01, 1.2, False), (0.02, 1.05, False), (-0.02, 2.0, False),
    (0.0101, 1.0501, True)])
def test_regime_rule_thresholds_are_strict(gap, temperature, expected):
  ok, g, t = regime.regime_rule(_run(1.0, 0.1, gap=gap, temperature=temperature))
  assert ok is expected and g == gap and t == temperature


def test_regime_rule_reads_seed0_calibration_half_only():
  c = _cell("c", [1.0, 1.0], [0.9, 0.9], gap=0.05, temperature=2.0)
  c.kept["ce"][1]["val"]["calibration_gap"] = -0.5  # another seed cannot change it
  c.kept["ce"][0]["test"]["calibration_gap"] = -0.5  # nor the reported half
  assert regime.cell_regime(c).over_confident
  del c.kept["ce"][0]
  g = regime.cell_regime(c)
  assert not g.over_confident and np.isnan(g.gap)
  assert regime.regime_rule(None)[0] is False


def test_per_seed_diffs_and_ce_ts_reads_the_scaled_metric():
  c = _cell("c", [1.0, 2.0, 3.0], [0.5, 1.5, 2.0], ce_ts_nll=[0.4, 1.0, 1.0])
  assert regime.per_seed_diffs(c, "ols_uniform", "ce", "nll") == pytest.approx(
      {0: -0.5, 1: -0.5, 2: -1.0})
  assert regime.per_seed_diffs(c, "ols_uniform", "ce + TS", "nll") == pytest.approx(
      {0: 0.1, 1: 0.5, 2: 1.0})
  del c.kept["ols_uniform"][1]
  assert set(regime.per_seed_diffs(c, "ols_uniform", "ce", "nll")) == {0, 2}


def test_meta_row_is_random_effects_of_cell_means_and_variances():
  rng = np.random.default_rng(0)
  cells, ys, vs = [], [], []
  for i in range(4):
    ce = rng.uniform(1, 2, 5)
    ols = ce + rng.normal(-0.1 * i, 0.05, 5)
    cells.append(_cell(f"c{i}", list(ce), list(ols)))
    d = ols - ce
    ys.append(d.mean())
    vs.append(d.var(ddof=1) / 5)
  row = regime.meta_row(cells, "ols_uniform", "ce", "nll")
  ref = meta.random_effects(ys, vs)
  assert row.cells == ("c0", "c1", "c2", "c3")
  assert row.result.estimate == pytest.approx(ref.estimate)
  assert row.result.tau2 == pytest.approx(ref.tau2)
  assert (row.result.low, row.result.high) == pytest.approx((ref.low, ref.high))
  one = regime.meta_row(cells[:1], "ols_uniform", "ce", "nll")
  assert one.result is None and "1 cell" in one.why
  # Identical runs (zero spread) and single seeds are left out by name, not silently.
  same = _cell("same", [1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
  lone = _cell("lone", [1.0], [0.5])
  row = regime.meta_row(cells + [same, lone], "ols_uniform", "ce", "nll")
  assert row.cells == ("c0", "c1", "c2", "c3")
  assert [c for c, _ in row.left_out] == ["same", "lone"]
  assert "zero spread" in row.left_out[0][1] and "one paired seed" in row.left_out[1][1]
  assert row.result.estimate == pytest.approx(ref.estimate)
  assert "left out: same (zero spread" in regime.meta_table([(row, float("nan"))])


def test_primary_family_uses_over_confident_cells_and_holm():
  hot = [_cell(f"h{i}", [1.0, 1.2, 1.1], [0.8 - 0.01 * i, 1.1, 0.85]) for i in range(3)]
  cold = _cell("cold", [1.0, 1.0, 1.0], [3.0, 2.0, 2.5], gap=-0.05)
  fam = regime.primary_family(hot + [cold])
  assert len(fam) == len(regime.COMPARATORS) * len(regime.PRIMARY_METRICS)
  with_result = [(r, h) for r, h in fam if r.result is not None]
  # Only CE and CE + TS exist in these cells: 4 rows with a result, none over "cold".
  assert len(with_result) == 4
  assert all("cold" not in r.cells for r, _ in with_result)
  raw = [r.result.p if r.result else np.nan for r, _ in fam]
  np.testing.assert_allclose([h for _, h in fam], stats.holm(raw), equal_nan=True)


def test_report_and_figure(tmp_path):
  cells = [_cell(f"reg_{i}", [1.0, 1.2, 1.1], [0.8, 1.0 + 0.03 * i, 0.9 - 0.02 * i])
           for i in range(3)]
  cells.append(_cell("reg_cold", [1.0, 1.0, 1.0], [0.9, 0.95, 1.0], gap=0.0))
  text = regime.report(cells, {c.name: 6 for c in cells}, "python experiments/regime_meta.py",
                       num_resamples=0)
  assert "Over-confident cells: reg_0, reg_1, reg_2." in text
  assert "| reg_cold | 500 | 6 of 6 | +0.00 | 1.50 | no |" in text
  assert "3 (reg_0, reg_1, reg_2)" in text
  path = regime.regime_map_figure(regime.regime_map_rows(cells), tmp_path / "map.png")
  assert pathlib.Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_on_collected_cells(tmp_path):
  """The entry point runs over the committed cells (or none) and writes both files."""
  import sys
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "experiments"))
  import regime_meta  # pylint: disable=import-outside-toplevel
  out = tmp_path / "regime_meta.md"
  assert regime_meta.main(["reg_breast", "--num_resamples=0", f"--out={out}"]) == 0
  assert out.exists() and (tmp_path / "regime_map.png").exists()
  assert "reg_breast" in out.read_text()


def test_summary_verdict_gate_uses_the_plan_rule_with_halves():
  from ols_jax.study import sweep_report  # pylint: disable=import-outside-toplevel
  c = _cell("c", [1.0, 1.0], [0.9, 0.9], gap=0.05, temperature=2.0)
  for r in c.kept["ce"].values():  # reported half under-confident: the old rule says no
    r["test"]["calibration_gap"] = -0.1
    r["config"] = {"calibration_split": "test_half"}
  assert sweep_report.uses_halves(c.kept)
  assert sweep_report.calibration_verdict_allowed(c.kept)
  assert "**over-confident**" in sweep_report.plan_regime_line(c.kept)
  c.kept["ce"][0]["temperature"] = 1.04
  assert not sweep_report.calibration_verdict_allowed(c.kept)
  assert "**not over-confident**" in sweep_report.plan_regime_line(c.kept)


def _edge_sweep():
  from ols_jax.study import sweep as sweep_lib  # pylint: disable=import-outside-toplevel
  arms = (sweep_lib.Arm("ce", "ce"),
          sweep_lib.Arm("ls", "ls", grid=(("eps", (0.01, 0.05, 0.1)),)),
          sweep_lib.Arm("ols_uniform", "ols", fixed=(("ols_init", "uniform"),),
                        grid=(("alpha", (0.3, 0.5, 0.7)),)),
          sweep_lib.Arm("ols_momentum", "ols", grid=(("ols_momentum", (0.5, 0.9)),
                                                     ("alpha", (0.5, 0.9)))))
  cell = sweep_lib.Sweep("reg_toy", "Toy", "experiments/configs/smoke.py", "tiny_cnn", arms,
                         seeds=(0, 1, 2), split_per_seed=True, extra=("--cpu_devices=1",))
  selection = {"arms": {
      "ce": {"candidate": [], "folder": "ce", "scores": {"ce": {"val_nll": 1.0,
                                                               "val_top1_error": 0.3}}},
      "ls": {"candidate": [["eps", 0.05]], "folder": "ls_eps0.05",
             "scores": {"ls_eps0.05": {"val_nll": 0.9, "val_top1_error": 0.3}}},
      "ols_uniform": {"candidate": [["alpha", 0.3]], "folder": "ols_uniform_alpha0.3",
                      "scores": {"ols_uniform_alpha0.3": {"val_nll": 0.8,
                                                          "val_top1_error": 0.3}}},
      "ols_momentum": {"candidate": [["ols_momentum", 0.9], ["alpha", 0.9]],
                       "folder": "ols_momentum_ols_momentum0.9_alpha0.9", "scores": {}}}}
  beyond = {"ls": {"eps": {"lowest": (0.001,), "highest": (0.2,)}},
            "ols_uniform": {"alpha": {"lowest": (0.1, 0.2), "highest": (0.9,)}}}
  return cell, selection, sweep_lib.edge_check(cell, selection, beyond)


def test_edge_check_runs_past_the_ends_the_kept_settings_take():
  cell, _, edge = _edge_sweep()
  # ls kept inside its grid, ols_momentum not named: only OLS's low end is checked.
  assert edge.name == "edge_reg_toy" and [a.name for a in edge.arms] == ["ols_uniform"]
  assert edge.seeds == (0,) and not edge.summary and edge.extra == cell.extra
  cells = edge.tuning_cells()
  assert [c.folder for c in cells] == ["ols_uniform_alpha0.1", "ols_uniform_alpha0.2"]
  # The same run the cell would have made: its fixed flags and seed 0's halves.
  assert dict(cells[0].overrides) == {"ols_init": "uniform", "alpha": "0.1",
                                      "calibration_split_seed": "0"}
  assert edge.final_cells({"ols_uniform": cells[0]}) == []
  from ols_jax.study import sweep as sweep_lib  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError, match="ols_momentum.*one-field grid"):
    sweep_lib.edge_check(cell, {"arms": {"ols_momentum": {"candidate": [["ols_momentum", 0.9],
                                                                        ["alpha", 0.9]]}}},
                         {"ols_momentum": {}})


def test_edge_rows_say_whether_the_selection_would_move(tmp_path):
  import json  # pylint: disable=import-outside-toplevel
  _, selection, edge = _edge_sweep()

  def put(folder, nll, err):
    d = tmp_path / "tiny_cnn" / folder
    d.mkdir(parents=True, exist_ok=True)
    (d / "seed0.json").write_text(json.dumps({"val": {"nll": nll, "top1_error": err}}))

  (row,) = regime.edge_rows(selection, edge, tmp_path)
  assert row["status"] == "not run yet" and row["kept"] == 0.3
  assert row["kept_score"] == (0.8, 0.3)
  put("ols_uniform_alpha0.1", 0.85, 0.2)
  assert regime.edge_rows(selection, edge, tmp_path)[0]["status"] == "not run yet"
  put("ols_uniform_alpha0.2", 0.8, 0.3)  # a tie on NLL and error does not move it
  (row,) = regime.edge_rows(selection, edge, tmp_path)
  assert row["status"] == "not binding"
  assert row["beyond"] == [(0.1, (0.85, 0.2)), (0.2, (0.8, 0.3))]
  put("ols_uniform_alpha0.2", 0.8, 0.29)  # equal NLL, lower error: the rule moves
  assert regime.edge_rows(selection, edge, tmp_path)[0]["status"] == "binding"
  text = regime.edge_table([("reg_toy", regime.edge_rows(selection, edge, tmp_path))])
  assert ("| reg_toy | ols_uniform | alpha = 0.3: 0.8000 (30.00) | alpha = 0.1: 0.8500 (20.00); "
          "alpha = 0.2: 0.8000 (29.00) | **yes** (the edge binds) |") in text


def test_edge_sweep_of_a_cell_without_selection_is_a_clear_error(tmp_path):
  import sys  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "experiments"))
  import sweeps  # pylint: disable=import-outside-toplevel
  with pytest.raises(FileNotFoundError, match="no selection.json of reg_breast"):
    sweeps.find("edge_reg_breast", tmp_path)
  with pytest.raises(KeyError):
    sweeps.find("edge_reg_nowhere", tmp_path)
  assert sweeps.find("reg_breast").name == "reg_breast"


def test_extension_runs_the_other_seeds_of_the_setting_an_edge_would_keep():
  from ols_jax.study import sweep as sweep_lib  # pylint: disable=import-outside-toplevel
  cell, _, _ = _edge_sweep()
  ext = sweep_lib.extension(cell, {"ols_uniform": ("alpha", 0.2)})
  assert ext.name == "ext_reg_toy" and ext.seeds == (1, 2) and not ext.summary
  runs = ext.every_cell({"ols_uniform": (("alpha", 0.2),)})
  # Seeds 1 and 2 only (seed 0 is the edge check's), the cell's folder names,
  # flags and per-seed halves; nothing is chosen on seed 1 (one candidate).
  assert [(c.folder, c.seed) for c in runs] == [("ols_uniform_alpha0.2", 1),
                                                ("ols_uniform_alpha0.2", 2)]
  assert dict(runs[1].overrides) == {"ols_init": "uniform", "alpha": "0.2",
                                     "calibration_split_seed": "2"}
  # A one-point grid has nothing to tune: every seed runs in phase 1 at once.
  assert ext.untuned() == {"ols_uniform": (("alpha", 0.2),)}
  assert len(ext.tuning_cells() + ext.final_cells(ext.untuned())) == 2
  assert regime.extended_setting({"status": "binding", "field": "alpha", "beyond": [
      (0.1, (0.7, 0.2)), (0.2, (0.6, 0.3)), (0.05, None)]}) == ("alpha", 0.2)
  assert regime.extended_setting({"status": "not binding", "field": "alpha",
                                  "beyond": [(0.1, (0.9, 0.2))]}) is None


def test_extended_cell_swaps_in_complete_extensions_only(tmp_path):
  import json  # pylint: disable=import-outside-toplevel
  cell = _cell("reg_toy", [1.0, 1.2, 1.1], [0.9, 1.0, 1.0], gap=0.05, temperature=2.0)

  sweep, _, _ = _edge_sweep()

  def put(base, seed, nll):
    d = tmp_path / base / "tiny_cnn" / "ols_uniform_alpha0.2"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed{seed}.json").write_text(json.dumps(_run(nll, nll / 10)))

  put("edge", 0, 0.5)
  put("ext", 1, 0.6)
  args = (cell, sweep, {"ols_uniform": ("alpha", 0.2)}, tmp_path / "edge", tmp_path / "ext")
  partial = regime.extended_cell(*args)
  assert partial.kept["ols_uniform"] is cell.kept["ols_uniform"]  # seed 2 missing: unchanged
  assert partial.missing == ["ols_uniform (extended grid, alpha = 0.2): seed 2 not "
                             "collected; plan-grid runs used"]
  put("ext", 2, 0.7)
  full = regime.extended_cell(*args)
  assert full.missing == [] and full.kept["ce"] is cell.kept["ce"]
  assert regime.per_seed_diffs(full, "ols_uniform", "ce", "nll") == pytest.approx(
      {0: -0.5, 1: -0.6, 2: -0.4})
  text = regime.report([cell], {"reg_toy": 6}, "cmd", num_resamples=0,
                       edges=[("reg_toy", [])], sensitivity=[full],
                       extended=["reg_toy: ols_uniform alpha = 0.2 (plan grid kept 0.3)"])
  tail = text.split("## Sensitivity")[1]
  assert "- reg_toy: ols_uniform alpha = 0.2 (plan grid kept 0.3)" in tail
  assert "| 1 | ols_uniform - ce | NLL |" in tail and "-0.500" in tail
