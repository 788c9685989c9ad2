"""Properties of the calibration metrics: order invariance, zero on calibrated data, one ECE."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from ols_jax import metrics
from ols_jax.study import stats


def _logits_with_confidence(conf, k=4):
  """Logits whose softmax puts ``conf`` on class 0 and the rest evenly (conf > 1/k)."""
  rest = (1.0 - conf) / (k - 1)
  return np.log(np.stack([conf] + [rest] * (k - 1), axis=-1))


def _ece(logits, labels):
  return metrics.finalize(metrics.eval_sums(jnp.asarray(logits, jnp.float32),
                                            jnp.asarray(labels), None, num_bins=15))["ece"]


class OrderTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_sums_do_not_depend_on_example_order(self):
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(257, 6)) * 3, jnp.float32)
    labels = jnp.asarray(rng.integers(0, 6, 257))
    perm = rng.permutation(257)
    fn = self.variant(lambda z, y: metrics.eval_sums(z, y, None, num_bins=15))
    a = metrics.finalize(fn(logits, labels))
    b = metrics.finalize(fn(logits[perm], labels[perm]))
    for key in ("ece", "mce", "nll", "brier", "top1_error"):
      np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-7, err_msg=key)


def test_ece_is_zero_when_each_bin_is_right_as_often_as_it_is_confident():
  # Bin centres 0.3 ... 0.9: n examples at confidence c, exactly round(c * n) of them correct.
  logits, labels = [], []
  for conf in (0.3, 0.5, 0.7, 0.9):
    n = 100
    hits = int(round(conf * n))
    logits.append(np.repeat(_logits_with_confidence(np.array([conf])), n, axis=0))
    labels.append(np.r_[np.zeros(hits, int), np.ones(n - hits, int)])
  logits, labels = np.concatenate(logits), np.concatenate(labels)
  assert _ece(logits, labels) < 1e-5
  # Every example wrong: the ECE is the mean confidence.
  assert abs(_ece(logits, np.ones_like(labels)) - 0.6) < 1e-5


def test_the_on_device_ece_equals_the_records_ece():
  rng = np.random.default_rng(1)
  logits = (rng.normal(size=(500, 5)) * 2).astype(np.float32)
  labels = rng.integers(0, 5, 500)
  rec = stats.example_records(logits, labels, temperature=1.0)
  np.testing.assert_allclose(stats.metric(rec, "ece"), _ece(logits, labels), rtol=1e-5)
  probs = np.asarray(jax.nn.softmax(logits))
  np.testing.assert_allclose(stats.metric(rec, "adaptive_ece"),
                             metrics.adaptive_ece(probs, labels, num_bins=15), rtol=1e-5)


def test_adaptive_ece_matches_array_split_reference():
  rng = np.random.default_rng(2)
  for n in (1, 7, 15, 16, 301):
    conf = rng.uniform(0.2, 1.0, n)
    correct = (rng.uniform(size=n) < conf).astype(float)
    order = np.argsort(conf, kind="stable")
    want = sum(abs(correct[g].sum() - conf[g].sum())
               for g in np.array_split(order, min(15, n))) / n
    np.testing.assert_allclose(metrics.adaptive_ece_from_confidence(conf, correct), want,
                               rtol=1e-12)
  assert np.isnan(metrics.adaptive_ece_from_confidence(np.zeros(0), np.zeros(0)))


def test_ood_auroc_is_the_binary_auroc_of_in_versus_out():
  from ols_jax import ood  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(3)
  s_in, s_out = np.round(rng.normal(1, 1, 60), 1), np.round(rng.normal(0, 1, 40), 1)  # ties
  pairs = np.mean([(a > b) + 0.5 * (a == b) for a in s_in for b in s_out])
  np.testing.assert_allclose(ood.auroc(s_in, s_out), pairs, rtol=1e-12)
  np.testing.assert_allclose(metrics.binary_auroc(np.r_[s_in, s_out],
                                                  np.arange(100) < 60), pairs, rtol=1e-12)
