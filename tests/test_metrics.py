"""Tests of ols_jax.metrics against NumPy / scikit-learn references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import oracles
from hypothesis import given, settings, strategies as st
from sklearn.metrics import roc_auc_score

from ols_jax import metrics

jit_sums = jax.jit(metrics.eval_sums, static_argnames=("num_bins",))
jit_softmax = jax.jit(lambda x: jax.nn.softmax(x.astype(jnp.float32), axis=-1))

# Float32 sums versus float64 NumPy.
TOL = dict(rtol=2e-5, atol=2e-5)


def _sums(logits, labels, mask=None, num_bins=15):
  """Jitted eval_sums with rows zero-padded to 64 or 512 (fewer compiles)."""
  n = logits.shape[0]
  rows = 64 if n <= 64 else 512
  assert n <= rows
  valid = np.ones(n, bool) if mask is None else np.asarray(mask, bool)
  logits = jnp.pad(jnp.asarray(logits), ((0, rows - n), (0, 0)))
  labels = np.pad(np.asarray(labels, np.int32), (0, rows - n))
  return jit_sums(logits, labels, np.pad(valid, (0, rows - n)),
                  num_bins=num_bins)


def _random(n, k, seed, scale=3.0):
  rng = np.random.default_rng(seed)
  logits = (rng.normal(size=(n, k)) * scale).astype(np.float32)
  labels = rng.integers(0, k, size=n).astype(np.int32)
  return logits, labels


def _assert_metrics_close(got, want, tol=None):
  tol = tol or TOL
  assert set(got) >= set(metrics.FINAL_KEYS)
  for key in metrics.FINAL_KEYS:
    np.testing.assert_allclose(got[key], want[key], err_msg=key, **tol)


def _reference(logits, labels, num_bins=15):
  probs = np.asarray(jit_softmax(jnp.asarray(logits)))
  return oracles.numpy_reference_metrics(probs, labels, num_bins)


@pytest.mark.parametrize("k", [2, 5, 10])
def test_finalize_matches_numpy_reference(k):
  logits, labels = _random(257, k, seed=k)
  sums = _sums(logits, labels)
  _assert_metrics_close(metrics.finalize(sums), _reference(logits, labels))


def test_sum_shapes_and_dtypes():
  logits, labels = _random(16, 5, seed=0)
  sums = _sums(logits, labels)
  assert set(sums) == set(metrics.SUM_KEYS)
  for key, value in sums.items():
    assert value.dtype == jnp.float32, key
  assert sums["bin_count"].shape == (15,)
  assert sums["cw_conf"].shape == (5, 15)
  np.testing.assert_allclose(float(sums["count"]), 16.0)
  np.testing.assert_allclose(np.sum(sums["bin_count"]), 16.0)
  # Classwise: every sample lands once per class.
  np.testing.assert_allclose(np.sum(sums["cw_count"], axis=1), 16.0)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 40), k=st.sampled_from([2, 5, 10]),
       scale=st.floats(0.1, 8.0), seed=st.integers(0, 2**31 - 1))
@pytest.mark.slow
def test_hypothesis_padded_batches_match_reference(n, k, scale, seed):
  num_bins = 15
  logits, labels = _random(n, k, seed, scale)
  pad = 64 - n
  rng = np.random.default_rng(seed + 1)
  # Padding carries garbage: huge logits and out-of-range labels.
  padded_logits = np.concatenate(
      [logits, (rng.normal(size=(pad, k)) * 1e4).astype(np.float32)])
  padded_labels = np.concatenate([labels, np.full(pad, -1, np.int32)])
  mask = np.arange(64) < n
  sums = jit_sums(padded_logits, padded_labels, mask, num_bins=num_bins)
  _assert_metrics_close(metrics.finalize(sums),
                        _reference(logits, labels, num_bins))


def test_padding_does_not_change_sums():
  logits, labels = _random(40, 5, seed=3)
  base = _sums(logits, labels)  # zero padding
  pad_logits = np.concatenate([logits, np.full((24, 5), np.nan, np.float32)])
  pad_labels = np.concatenate([labels, np.full(24, 99, np.int32)])
  mask = np.arange(64) < 40
  padded = jit_sums(pad_logits, pad_labels, mask)
  for key in metrics.SUM_KEYS:
    np.testing.assert_allclose(padded[key], base[key], rtol=1e-6, atol=1e-6,
                               err_msg=key)
    assert np.all(np.isfinite(padded[key])), key
  _assert_metrics_close(metrics.finalize(padded), _reference(logits, labels))


def test_interleaved_mask_matches_subset():
  logits, labels = _random(60, 5, seed=11)
  mask = np.random.default_rng(0).random(60) < 0.6
  got = metrics.finalize(_sums(logits, labels, mask))
  _assert_metrics_close(got, _reference(logits[mask], labels[mask]))


def test_bfloat16_logits():
  logits, labels = _random(300, 10, seed=5)
  bf16 = jnp.asarray(logits, jnp.bfloat16)
  sums = _sums(bf16, labels)
  for value in sums.values():
    assert value.dtype == jnp.float32
  want = oracles.numpy_reference_metrics(np.asarray(jit_softmax(bf16)), labels)
  _assert_metrics_close(metrics.finalize(sums), want)


def test_batch_splits_sum_to_one_batch():
  logits, labels = _random(200, 5, seed=9)
  whole = _sums(logits, labels)
  splits = [(0, 64), (64, 128), (128, 192), (192, 200)]
  parts = []
  for lo, hi in splits:
    # Pad every part to 64 rows, as a data loader would.
    parts.append(_sums(logits[lo:hi], labels[lo:hi]))
  merged = metrics.merge_sums(*parts)
  added = jax.tree.map(lambda *xs: sum(xs), *parts)
  for key in metrics.SUM_KEYS:
    np.testing.assert_allclose(merged[key], whole[key], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(added[key], whole[key], rtol=1e-5, atol=1e-4)
  _assert_metrics_close(metrics.finalize(merged), metrics.finalize(whole))


def test_pmap_psum_equals_single_batch():
  n_dev = jax.local_device_count()
  if n_dev < 2:
    pytest.skip("needs several (fake) devices")
  logits, labels = _random(16 * n_dev, 5, seed=2)
  mask = np.ones(16 * n_dev, bool)

  @functools.partial(jax.pmap, axis_name="d")
  def step(lg, lb, m):
    return jax.lax.psum(metrics.eval_sums(lg, lb, m), "d")

  out = step(logits.reshape(n_dev, 16, 5), labels.reshape(n_dev, 16),
             mask.reshape(n_dev, 16))
  out = jax.tree.map(lambda x: x[0], out)
  whole = _sums(logits, labels)
  _assert_metrics_close(metrics.finalize(out), metrics.finalize(whole))


def test_confidence_one_lands_in_last_bin():
  logits = np.zeros((2, 5), np.float32)
  logits[0, 0], logits[1, 1] = 200.0, 30.0
  labels = np.array([0, 2], np.int32)
  probs = np.asarray(jit_softmax(logits))
  assert probs.max(axis=1).tolist() == [1.0, 1.0]
  sums = _sums(logits, labels)
  expected = np.zeros(15)
  expected[-1] = 2.0
  np.testing.assert_array_equal(sums["bin_count"], expected)
  np.testing.assert_array_equal(sums["bin_correct"][-1], 1.0)
  # The classwise p = 1 and p = 0 entries: last and first bins.
  np.testing.assert_array_equal(sums["cw_count"][:, -1], [1, 1, 0, 0, 0])
  np.testing.assert_array_equal(sums["cw_count"][:, 0], [1, 1, 2, 2, 2])
  got = metrics.finalize(sums)
  _assert_metrics_close(got, oracles.numpy_reference_metrics(probs, labels))
  np.testing.assert_allclose(got["ece"], 0.5)


@pytest.mark.parametrize("k,num_bins,expected_bin", [
    (2, 10, 5),   # p = 0.5 is the edge between bins 4 and 5.
    (5, 5, 1),    # p = 0.2 (float32) is the edge between bins 0 and 1.
    (10, 20, 2),  # p = 0.1 = 2 / 20.
])
def test_confidence_on_edge_goes_to_upper_bin(k, num_bins, expected_bin):
  logits = np.zeros((3, k), np.float32)  # uniform softmax: exactly 1 / k
  labels = np.zeros(3, np.int32)
  assert np.all(np.asarray(jit_softmax(logits)) == np.float32(1.0 / k))
  sums = _sums(logits, labels, num_bins=num_bins)
  expected = np.zeros(num_bins)
  expected[expected_bin] = 3.0
  np.testing.assert_array_equal(sums["bin_count"], expected)
  np.testing.assert_array_equal(sums["cw_count"][:, expected_bin], 3.0)
  probs = np.full((3, k), 1.0 / k, np.float32)
  _assert_metrics_close(metrics.finalize(sums),
                        oracles.numpy_reference_metrics(probs, labels,
                                                        num_bins))


def test_bin_indices_on_float32_edges():
  edges = metrics.bin_edges(15)
  assert edges.dtype == np.float32 and edges.shape == (14,)
  values = np.concatenate([[0.0], edges, [1.0]]).astype(np.float32)
  got = np.asarray(jax.jit(metrics.bin_indices)(values))
  np.testing.assert_array_equal(got, [0] + list(range(1, 15)) + [14])
  below = np.nextafter(edges, np.float32(0.0))
  got = np.asarray(metrics.bin_indices(below))
  np.testing.assert_array_equal(got, np.arange(14))
  # The NumPy reference rule agrees.
  np.testing.assert_array_equal(
      np.searchsorted(edges, values, side="right"),
      np.asarray(metrics.bin_indices(values)))


def test_top5_with_few_classes_is_top_k():
  for k in (2, 5):
    logits, labels = _random(50, k, seed=1)
    assert metrics.finalize(_sums(logits, labels))["top5_error"] == 0.0
  logits, labels = _random(50, 10, seed=1)
  got = metrics.finalize(_sums(logits, labels))
  assert 0.0 < got["top5_error"] < got["top1_error"]


def test_known_values_small_example():
  probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
  labels = np.array([0, 1, 0])
  # Two extra classes with probability 0 (logit -inf) keep K = 5.
  logits = np.concatenate([np.log(probs), np.full((3, 2), -np.inf)], axis=1)
  got = metrics.finalize(_sums(logits.astype(np.float32), labels))
  np.testing.assert_allclose(got["accuracy"], 2 / 3, rtol=1e-6)
  np.testing.assert_allclose(got["nll"],
                             -np.mean(np.log([0.7, 0.3, 0.5])), rtol=1e-5)
  brier = np.mean([0.09 + 0.04 + 0.01, 0.01 + 0.49 + 0.36,
                   0.25 + 0.16 + 0.01])
  np.testing.assert_allclose(got["brier"], brier, rtol=1e-5)
  # Bins (15): 0.7 -> bin 10, 0.6 -> bin 9, 0.5 -> bin 7.
  ece = (abs(1 - 0.7) + abs(0 - 0.6) + abs(1 - 0.5)) / 3
  np.testing.assert_allclose(got["ece"], ece, rtol=1e-5)
  np.testing.assert_allclose(got["mce"], 0.6, rtol=1e-5)
  np.testing.assert_allclose(got["mean_confidence"], 0.6, rtol=1e-5)
  np.testing.assert_allclose(got["calibration_gap"], 0.6 - 2 / 3, atol=1e-6)


def test_finalize_empty_is_nan():
  logits, labels = _random(8, 5, seed=0)
  got = metrics.finalize(_sums(logits, labels, np.zeros(8, bool)))
  assert got["count"] == 0.0
  assert all(np.isnan(v) for k, v in got.items() if k != "count")


def test_reliability_curve_consistent_with_finalize():
  logits, labels = _random(500, 5, seed=4)
  sums = _sums(logits, labels)
  curve = metrics.reliability_curve(sums)
  got = metrics.finalize(sums)
  np.testing.assert_allclose(curve["ece"], got["ece"])
  assert curve["edges"].shape == (16,) and curve["centers"].shape == (15,)
  nonempty = curve["count"] > 0
  assert np.all(np.isnan(curve["accuracy"][~nonempty]))
  ece = np.sum(curve["fraction"][nonempty]
               * np.abs(curve["accuracy"] - curve["confidence"])[nonempty])
  np.testing.assert_allclose(ece, got["ece"], rtol=1e-6)
  np.testing.assert_allclose(curve["accuracy_overall"], got["accuracy"],
                             rtol=1e-6)


# ---------------------------------------------------------------------------
# Host metrics.
# ---------------------------------------------------------------------------


def _adaptive_ece_loop(probs, labels, num_bins):
  conf = probs.max(1)
  hit = probs.argmax(1) == labels
  order = np.argsort(conf, kind="stable")
  n = len(conf)
  sizes = [n // num_bins + (1 if b < n % num_bins else 0)
           for b in range(num_bins)]
  total, start = 0.0, 0
  for size in sizes:
    sel = order[start:start + size]
    start += size
    if size:
      total += size / n * abs(hit[sel].mean() - conf[sel].mean())
  return total


def test_adaptive_ece_small_example():
  # Four samples, two bins of two: confidences (0.4, 0.6) and (0.8, 0.9).
  probs = np.array([[0.6, 0.4], [0.4, 0.6], [0.9, 0.1], [0.2, 0.8]])
  labels = np.array([1, 1, 0, 1])
  # Low bin: confidences (0.6, 0.6), hits (0, 1) -> gap 0.1; high bin:
  # confidences (0.8, 0.9), hits (1, 1) -> gap 0.15; weights 1/2 each.
  np.testing.assert_allclose(metrics.adaptive_ece(probs, labels, 2), 0.125)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 200), k=st.integers(2, 6),
       seed=st.integers(0, 2**31 - 1), num_bins=st.sampled_from([3, 15]))
def test_adaptive_ece_matches_loop(n, k, seed, num_bins):
  rng = np.random.default_rng(seed)
  probs = rng.dirichlet(np.ones(k), size=n)
  labels = rng.integers(0, k, n)
  np.testing.assert_allclose(metrics.adaptive_ece(probs, labels, num_bins),
                             _adaptive_ece_loop(probs, labels, num_bins),
                             atol=1e-12)


def test_adaptive_ece_near_zero_when_calibrated():
  rng = np.random.default_rng(0)
  probs = rng.dirichlet(np.ones(4), size=20000)
  labels = np.array([rng.choice(4, p=p) for p in probs])
  assert metrics.adaptive_ece(probs, labels) < 0.02


@pytest.mark.parametrize("k", [3, 6])
def test_auroc_macro_matches_sklearn(k):
  rng = np.random.default_rng(k)
  logits = rng.normal(size=(400, k))
  labels = rng.integers(0, k, 400)
  logits[np.arange(400), labels] += 1.0
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  want = roc_auc_score(labels, probs, multi_class="ovr", average="macro")
  np.testing.assert_allclose(metrics.auroc_macro(probs, labels), want,
                             rtol=1e-12)


def test_auroc_with_ties_matches_sklearn():
  rng = np.random.default_rng(1)
  probs = rng.dirichlet(np.ones(4), size=300)
  probs = np.round(probs, 1)  # many ties
  labels = rng.integers(0, 4, 300)
  want = np.mean([roc_auc_score(labels == c, probs[:, c]) for c in range(4)])
  np.testing.assert_allclose(metrics.auroc_macro(probs, labels), want,
                             rtol=1e-12)


def test_auroc_binary_is_class_one():
  rng = np.random.default_rng(2)
  p1 = rng.random(150)
  labels = (rng.random(150) < p1).astype(int)
  probs = np.stack([1 - p1, p1], axis=1)
  np.testing.assert_allclose(metrics.auroc_macro(probs, labels),
                             roc_auc_score(labels, p1), rtol=1e-12)


def test_auroc_skips_classes_without_positives():
  rng = np.random.default_rng(3)
  probs = rng.dirichlet(np.ones(5), size=200)
  labels = rng.choice([0, 1, 3], size=200)  # classes 2 and 4 never occur
  want = np.mean([roc_auc_score(labels == c, probs[:, c]) for c in (0, 1, 3)])
  np.testing.assert_allclose(metrics.auroc_macro(probs, labels), want,
                             rtol=1e-12)
  assert np.isnan(metrics.auroc_macro(probs[:3], np.zeros(3, int)))


def test_host_metrics_keys_and_values():
  logits, labels = _random(300, 5, seed=8)
  probs = np.asarray(jit_softmax(logits))
  got = metrics.host_metrics(probs, labels)
  assert set(got) == {"adaptive_ece", "auroc_macro"}
  _assert_metrics_close(oracles.numpy_reference_metrics(probs, labels),
                        metrics.finalize(_sums(logits, labels)))
  assert 0.0 <= got["adaptive_ece"] <= 1.0
  assert 0.0 <= got["auroc_macro"] <= 1.0
