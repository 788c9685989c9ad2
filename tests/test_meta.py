"""Random-effects meta-analysis and the two-level bootstrap against known answers."""

import numpy as np
import pytest
from scipy import stats as scipy_stats

from ols_jax.study import meta


def test_hand_worked_example():
  # y = (0, 2, 4), v = 1: w = 1, FE mean 2, Q = 8, C = 3 - 3/3 = 2, tau^2 = (8 - 2) / 2 = 3;
  # w* = 1/4, RE mean 2, se_RE^2 = 4/3, HK se^2 = (8/4) / (2 * 3/4) = 4/3, I^2 = 6/8.
  r = meta.random_effects([0.0, 2.0, 4.0], [1.0, 1.0, 1.0])
  assert r.k == 3 and r.q == pytest.approx(8.0) and r.tau2 == pytest.approx(3.0)
  assert r.estimate == pytest.approx(2.0) and r.i2 == pytest.approx(0.75)
  assert r.se_re == pytest.approx(np.sqrt(4 / 3)) and r.se == pytest.approx(np.sqrt(4 / 3))
  t2 = scipy_stats.t.ppf(0.975, 2)
  assert (r.low, r.high) == pytest.approx((2 - t2 * np.sqrt(4 / 3), 2 + t2 * np.sqrt(4 / 3)))
  t1 = scipy_stats.t.ppf(0.975, 1)  # k - 2 = 1 df
  half = t1 * np.sqrt(3 + 4 / 3)
  assert (r.pred_low, r.pred_high) == pytest.approx((2 - half, 2 + half))
  assert r.p == pytest.approx(2 * scipy_stats.t.sf(2 / np.sqrt(4 / 3), 2))
  # Fixed effect: mean 2, se 1/sqrt(3), normal interval.
  assert r.fixed.estimate == pytest.approx(2.0)
  assert r.fixed.high - 2 == pytest.approx(scipy_stats.norm.ppf(0.975) / np.sqrt(3))


def test_homogeneous_cells_give_zero_tau_and_the_fixed_mean():
  r = meta.random_effects([1.0, 1.1, 0.9, 1.0], [0.5, 0.5, 0.5, 0.5])
  assert r.tau2 == 0.0 and r.i2 == 0.0
  assert r.estimate == pytest.approx(r.fixed.estimate)


def test_against_statsmodels_reference():
  sm = pytest.importorskip("statsmodels.stats.meta_analysis",
                           reason="statsmodels (the reference implementation) not installed")
  rng = np.random.default_rng(3)
  for k in (3, 5, 9):
    y = rng.normal(0.2, 0.5, k)
    v = rng.uniform(0.01, 0.2, k)
    ours = meta.random_effects(y, v)
    ref = sm.combine_effects(y, v, method_re="dl", use_t=True)
    assert ours.tau2 == pytest.approx(ref.tau2, rel=1e-9, abs=1e-12)
    assert ours.estimate == pytest.approx(ref.mean_effect_re, rel=1e-9)
    assert ours.se == pytest.approx(ref.sd_eff_w_re_hksj, rel=1e-9)
    assert ours.se_re == pytest.approx(ref.sd_eff_w_re, rel=1e-9)
    assert ours.q == pytest.approx(ref.q, rel=1e-9)
    _, _, _, (lo, hi) = ref.conf_int(use_t=True)
    assert (ours.low, ours.high) == pytest.approx((lo, hi), rel=1e-9)
    assert ours.fixed.estimate == pytest.approx(ref.mean_effect_fe, rel=1e-9)


def test_hartung_knapp_interval_covers_at_its_level():
  # Cells drawn from the model: y_i ~ N(mu, v_i + tau^2). HK keeps nominal coverage.
  rng = np.random.default_rng(0)
  hits = 0
  trials = 2000
  for _ in range(trials):
    v = rng.uniform(0.02, 0.2, 8)
    y = rng.normal(0.3, np.sqrt(v + 0.05))
    r = meta.random_effects(y, v)
    hits += r.low <= 0.3 <= r.high
  assert 0.93 <= hits / trials <= 0.97


def test_bad_input_is_refused():
  with pytest.raises(ValueError, match="at least 2"):
    meta.random_effects([1.0], [1.0])
  with pytest.raises(ValueError, match="> 0"):
    meta.random_effects([1.0, 2.0], [1.0, 0.0])
  with pytest.raises(ValueError, match="NaN"):
    meta.random_effects([1.0, np.nan], [1.0, 1.0])
  with pytest.raises(ValueError, match="one length"):
    meta.random_effects([1.0, 2.0], [1.0])


def test_cell_effect_is_the_mean_and_its_variance():
  m, v = meta.cell_effect([1.0, 2.0, 3.0, 6.0])
  assert m == 3.0 and v == pytest.approx(np.var([1, 2, 3, 6], ddof=1) / 4)


def test_two_level_bootstrap_variance_matches_its_exact_value():
  # Arm a: always right (error 0); arm b: seed s wrong with rate p_s on n examples. One
  # bootstrap draw picks a seed J uniformly, then resamples its examples:
  # Var = [pop.var(m_J) + mean(m_J (1 - m_J) / n)] / S for the mean of S draws.
  rng = np.random.default_rng(1)
  n, rates = 60, (0.1, 0.3, 0.2, 0.45)
  pairs = []
  for p in rates:
    wrong = rng.random(n) < p
    a = {"correct": np.ones(n, bool)}
    b = {"correct": ~wrong}
    pairs.append((a, b))
  m = np.array([np.mean(~b["correct"]) for _, b in pairs])
  s = len(pairs)
  exact = (np.var(m) + np.mean(m * (1 - m) / n)) / s
  iv, se = meta.two_level_bootstrap(pairs, "top1_error", num_resamples=4000, seed=0)
  assert iv.estimate == pytest.approx(m.mean())
  assert se ** 2 == pytest.approx(exact, rel=0.1)
  assert iv.low < m.mean() < iv.high


def _records_with_errors(correct):
  correct = np.asarray(correct, bool)
  return {"correct": correct, "conf": np.full(len(correct), 0.7),
          "logp": np.where(correct, -0.1, -2.0)}


def test_contrast_bootstrap_of_one_run_has_the_binomial_standard_error():
  # One seed: the error rate's bootstrap SE is sqrt(p (1 - p) / n). Three seeds
  # holding the same records: seed resampling adds nothing, and the mean of
  # three independent example resamples has SE sqrt(p (1 - p) / (3 n)).
  n, p = 400, 0.25
  rec = _records_with_errors(np.arange(n) >= p * n)
  for seeds in (1, 3):
    iv, se = meta.contrast_bootstrap([[rec]] * seeds, ("top1_error",), (1.0,),
                                     num_resamples=3000, seed=1)
    assert iv.estimate == pytest.approx(p)
    assert se == pytest.approx(np.sqrt(p * (1 - p) / (seeds * n)), rel=0.08)


def test_contrast_bootstrap_interaction_vanishes_when_the_starts_agree():
  rng = np.random.default_rng(0)
  groups = []
  for _ in range(3):
    a, b = (_records_with_errors(rng.random(60) < q) for q in (0.5, 0.8))
    groups.append([a, b, a, b])  # (b - a) twice: the interaction is 0 in every resample
  iv, se = meta.contrast_bootstrap(groups, ("nll",) * 4, (1.0, -1.0, -1.0, 1.0),
                                   num_resamples=200)
  assert iv.estimate == pytest.approx(0.0, abs=1e-12)
  assert (iv.low, iv.high, se) == pytest.approx((0.0, 0.0, 0.0), abs=1e-12)


def test_two_level_bootstrap_is_the_paired_contrast():
  rng = np.random.default_rng(2)
  pairs = [tuple(_records_with_errors(rng.random(50) < q) for q in (0.6, 0.7))
           for _ in range(4)]
  got = meta.two_level_bootstrap(pairs, "top1_error", num_resamples=300, seed=3)
  want = meta.contrast_bootstrap(pairs, ("top1_error", "top1_error"), (-1.0, 1.0),
                                 num_resamples=300, seed=3)
  assert got == want
  with pytest.raises(ValueError, match="names"):
    meta.contrast_bootstrap(pairs, ("nll",), (1.0, -1.0))
