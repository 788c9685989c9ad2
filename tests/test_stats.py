"""Paired bootstrap and seed intervals (ols_jax.study.stats) against NumPy references."""

from hypothesis import given, settings, strategies as st
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as scipy_stats

from ols_jax import metrics as metrics_lib
from ols_jax.study import stats


def _logits(n=600, k=7, seed=0, scale=3.0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, k, n)
  logits = rng.normal(size=(n, k)) * scale
  logits[np.arange(n), labels] += 2.0
  return logits.astype(np.float32), labels


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [1.0, 0.6, 2.5])
def test_records_reproduce_the_device_metrics(temperature):
  logits, labels = _logits()
  rec = stats.example_records(logits, labels, temperature)
  want = metrics_lib.finalize(metrics_lib.eval_sums(
      jnp.asarray(logits / temperature), jnp.asarray(labels)))
  suffix = "" if temperature == 1.0 else "_ts"
  np.testing.assert_allclose(stats.metric(rec, "top1_error"), want["top1_error"], atol=1e-7)
  np.testing.assert_allclose(stats.metric(rec, "nll" + suffix), want["nll"], rtol=1e-5)
  np.testing.assert_allclose(stats.metric(rec, "ece" + suffix), want["ece"], atol=1e-5)


def test_identical_arms_give_a_zero_interval():
  logits, labels = _logits()
  rec = stats.example_records(logits, labels, 1.3)
  for name in stats.METRICS:
    iv = stats.paired_bootstrap(rec, rec, name, num_resamples=200)
    assert (iv.estimate, iv.low, iv.high) == (0.0, 0.0, 0.0)
    assert iv.includes_zero


def test_a_clear_difference_is_resolved_and_a_tiny_one_is_not():
  logits, labels = _logits(n=2000)
  a = stats.example_records(logits, labels)
  better = logits.copy()
  fix = np.arange(0, 2000, 4)  # make every 4th example right with high margin
  better[fix, labels[fix]] += 20.0
  b = stats.example_records(better, labels)
  iv = stats.paired_bootstrap(a, b, "top1_error", num_resamples=500)
  exact = (1 - b["correct"].mean()) - (1 - a["correct"].mean())
  np.testing.assert_allclose(iv.estimate, exact)
  assert iv.high < 0 and not iv.includes_zero
  assert "better" in stats.verdict(iv)
  one = logits.copy()
  wrong = np.flatnonzero(~a["correct"])[:1]
  one[wrong, labels[wrong]] += 50.0
  iv = stats.paired_bootstrap(a, stats.example_records(one, labels), "top1_error",
                              num_resamples=500)
  assert iv.includes_zero and "no difference" in stats.verdict(iv)


def test_bootstrap_is_paired():
  # b = a with every logit shifted: same predictions, so the paired interval
  # of the error difference is exactly 0 although each error varies a lot.
  logits, labels = _logits(n=300)
  a = stats.example_records(logits, labels)
  b = stats.example_records(logits + 1.0, labels)
  iv = stats.paired_bootstrap(a, b, "top1_error", num_resamples=300)
  assert (iv.low, iv.high) == (0.0, 0.0)


def test_t_interval_and_sign_test():
  iv = stats.t_interval([1.0, 2.0, 3.0])
  np.testing.assert_allclose(iv.estimate, 2.0)
  np.testing.assert_allclose(iv.high - iv.estimate, 4.302652729911275 / np.sqrt(3), rtol=1e-9)
  assert stats.t_interval([0.5]).low == -np.inf
  assert stats.sign_test_p(3, 3) == 0.125
  assert stats.sign_test_p(0, 4) == 1.0


def test_compare_arms_structure():
  logits, labels = _logits(n=400)
  rec = stats.example_records(logits, labels)
  res = stats.compare_arms({0: (rec, rec), 1: (rec, rec)}, ("top1_error", "ece"),
                           num_resamples=50)
  assert set(res) == {"top1_error", "ece"}
  assert set(res["ece"]["per_seed"]) == {0, 1}
  assert res["ece"]["over_seeds"].estimate == 0.0
  assert res["ece"]["over_seeds"].format(100) == "+0.00 [+0.00, +0.00]"


def test_aurc_metric_matches_selective():
  from ols_jax import selective  # pylint: disable=import-outside-toplevel
  logits, labels = _logits(n=300)
  rec = stats.example_records(logits, labels, 2.0)
  np.testing.assert_allclose(stats.metric(rec, "aurc"),
                             selective.aurc(rec["conf"], rec["correct"]))
  np.testing.assert_allclose(stats.metric(rec, "aurc_ts"),
                             selective.aurc(rec["conf_ts"], rec["correct"]))


def _softmax(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [1.0, 0.6, 2.5])
def test_adaptive_ece_and_brier_records_match_the_metrics_module(temperature):
  logits, labels = _logits(n=613)  # 613 = 15 * 40 + 13: uneven equal-mass bins
  rec = stats.example_records(logits, labels, temperature)
  for suffix, t in (("", 1.0), ("_ts", temperature)):
    probs = _softmax(logits.astype(np.float64) / t)  # as example_records: float64
    np.testing.assert_allclose(stats.metric(rec, "adaptive_ece" + suffix),
                               metrics_lib.adaptive_ece(probs, labels), rtol=1e-12, atol=1e-15)
    onehot = np.eye(probs.shape[1])[labels]
    np.testing.assert_allclose(rec["brier" + suffix], ((probs - onehot) ** 2).sum(-1),
                               rtol=1e-10)
    want = metrics_lib.finalize(metrics_lib.eval_sums(jnp.asarray(logits / t),
                                                      jnp.asarray(labels)))
    np.testing.assert_allclose(stats.metric(rec, "brier" + suffix), want["brier"], rtol=1e-5)
  # As collected (float32 arrays), still within the collector's tolerance.
  stored = {k: (v if v.dtype == bool else v.astype(np.float32)) for k, v in rec.items()}
  for name in ("adaptive_ece", "adaptive_ece_ts", "brier", "brier_ts"):
    assert abs(stats.metric(stored, name) - stats.metric(rec, name)) < 1e-5


@pytest.mark.parametrize("n", [1, 7, 15, 16, 31])
def test_adaptive_ece_bins_split_like_array_split(n):
  rng = np.random.default_rng(n)
  probs = _softmax(rng.normal(size=(n, 4)) * 2)
  labels = rng.integers(0, 4, n)
  correct = probs.argmax(1) == labels
  np.testing.assert_allclose(stats.adaptive_ece(probs.max(1), correct),
                             metrics_lib.adaptive_ece(probs, labels), rtol=1e-12, atol=1e-15)
  assert np.isnan(stats.adaptive_ece(np.zeros(0), np.zeros(0, bool)))


def test_records_without_brier_give_na_not_a_crash():
  logits, labels = _logits(n=200)
  rec = stats.example_records(logits, labels, 1.4)
  old = {k: v for k, v in rec.items() if not k.startswith("brier")}
  assert not stats.available(old, "brier") and stats.available(old, "adaptive_ece_ts")
  assert np.isnan(stats.metric(old, "brier_ts"))
  iv = stats.paired_bootstrap(old, rec, "brier", num_resamples=20)
  assert iv.missing and iv.format(1) == "n/a" and "n/a" in stats.verdict(iv)
  res = stats.compare_arms({0: (old, rec), 1: (old, rec)}, ("brier", "nll"), num_resamples=20)
  assert res["brier"]["over_seeds"].missing
  assert res["nll"]["over_seeds"].estimate == 0.0
  assert stats.t_interval([]).missing and stats.t_interval([1.0, np.nan]).missing
  with pytest.raises(ValueError):
    stats.metric(rec, "nope")


def test_cache_gives_the_paired_bootstrap_and_cross_metric_pairs():
  logits, labels = _logits(n=300)
  a = stats.example_records(logits, labels, 1.7)
  b = stats.example_records(logits * 0.8 + 0.3, labels, 1.1)
  cache = stats.ResampleCache(num_resamples=150)
  for name, name_a in (("ece", None), ("nll_ts", None), ("adaptive_ece", "adaptive_ece_ts"),
                       ("brier", "brier_ts"), ("aurc", "aurc_ts")):
    want = stats.paired_bootstrap(a, b, name, num_resamples=150, seed=3, name_a=name_a)
    got = cache.paired(a, b, name, seed=3, name_a=name_a)
    assert got == want
    np.testing.assert_allclose(
        want.estimate, stats.metric(b, name) - stats.metric(a, name_a or name))
  # One pass per (records, seed): a second comparison reuses the values.
  assert len(cache._values) == 2  # pylint: disable=protected-access
  res = stats.compare_arms({3: (a, b)}, ("ece",), against={"ece": "ece_ts"}, cache=cache)
  assert res["ece"]["per_seed"][3] == cache.paired(a, b, "ece", seed=3, name_a="ece_ts")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-5, 5, allow_nan=False), min_size=2, max_size=9),
       st.floats(0.5, 0.99))
def test_t_test_p_agrees_with_the_t_interval(values, level):
  x = np.asarray(values)
  iv = stats.t_interval(x, level)
  p = stats.t_test_p(x)
  if x.std(ddof=1) > 1e-6 and abs(p - (1 - level)) > 1e-9:
    assert (p < 1 - level) == (not iv.includes_zero)
  if x.std(ddof=1) > 1e-6:
    np.testing.assert_allclose(p, scipy_stats.ttest_1samp(x, 0.0).pvalue, rtol=1e-9)


def test_t_test_p_edge_cases():
  assert np.isnan(stats.t_test_p([0.3]))
  assert np.isnan(stats.t_test_p([0.3, np.nan, 0.1]))
  assert stats.t_test_p([0.5, 0.5, 0.5]) == 0.0
  assert stats.t_test_p([0.0, 0.0]) == 1.0


def test_holm_on_a_hand_worked_family():
  # Sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, then 0.04 * 1
  # = 0.04 is raised to the running maximum 0.06.
  np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
  np.testing.assert_allclose(stats.holm([0.5, 0.9]), [1.0, 1.0])
  out = stats.holm([0.01, np.nan, 0.02])
  np.testing.assert_allclose(out[[0, 2]], [0.02, 0.02])
  assert np.isnan(out[1])
  assert stats.holm([]).shape == (0,)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=20))
def test_holm_properties(p):
  p = np.asarray(p)
  adj = stats.holm(p)
  assert np.all(adj >= p - 1e-15) and np.all(adj <= 1.0)
  order = np.argsort(p, kind="stable")
  assert np.all(np.diff(adj[order]) >= -1e-15)  # the order of the raw p-values is kept
  bonferroni = np.minimum(p * len(p), 1.0)
  assert np.all(adj <= bonferroni + 1e-12)  # Holm rejects whatever Bonferroni rejects
