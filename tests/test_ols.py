"""Properties of the OLS core functions against a small NumPy reference."""

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import oracles

from ols_jax import ols

# Example counts: conftest's hypothesis profiles (25 in the full suite, 8 in the quick tier).


# --------------------------------------------------------------------------
# NumPy reference, written independently of the library.
# --------------------------------------------------------------------------

def np_softmax(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def np_accumulate(sums, counts, logits, labels, mask=None):
  sums, counts = sums.astype(np.float64).copy(), counts.astype(np.float64).copy()
  p = np_softmax(np.asarray(logits, np.float32))
  for i in range(len(labels)):
    if mask is not None and not mask[i]:
      continue
    if int(np.argmax(p[i])) == int(labels[i]):
      sums[labels[i]] += p[i]
      counts[labels[i]] += 1
  return sums, counts


def np_next(sums, counts, prev=None, threshold=None):
  k = len(counts)
  out = np.full((k, k), 1.0 / k)
  for c in range(k):
    if counts[c] > 0:
      out[c] = sums[c] / counts[c]
      if threshold is not None and prev[c].max() >= threshold:
        out[c] = prev[c]
  return out


def np_loss(logits, labels, s, alpha, mask=None):
  z = np.asarray(logits, np.float64)
  logp = z - z.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  m = np.ones(len(labels)) if mask is None else np.asarray(mask, np.float64)
  hard = -logp[np.arange(len(labels)), labels]
  soft = -(s[labels] * logp).sum(-1)
  return float(((alpha * hard + (1 - alpha) * soft) * m).sum() / max(m.sum(), 1))


def batches(k_max=7, b_max=24):
  @st.composite
  def strategy(draw):
    k = draw(st.integers(2, k_max))
    b = draw(st.integers(1, b_max))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, b)
    logits = rng.normal(size=(b, k)).astype(np.float32) * 3
    # Make many samples correct so rows are exercised.
    logits[np.arange(b), labels] += rng.uniform(0, 4, b).astype(np.float32)
    mask = rng.random(b) < 0.8
    return k, logits, labels.astype(np.int32), mask
  return strategy()


# --------------------------------------------------------------------------
# init
# --------------------------------------------------------------------------

@pytest.mark.parametrize("k", [2, 5, 165])
def test_init_variants(k):
  uni = ols.init(k).soft_labels
  np.testing.assert_allclose(uni, np.full((k, k), 1 / k), rtol=1e-6)
  assert float(jnp.abs(ols.init(k, "zeros").soft_labels).sum()) == 0
  ls = np.asarray(ols.init(k, "label_smoothing", eps=0.2).soft_labels)
  np.testing.assert_allclose(np.diag(ls), 0.8, rtol=1e-6)
  np.testing.assert_allclose(ls[0, 1], 0.2 / (k - 1), rtol=1e-6)
  np.testing.assert_allclose(ls.sum(-1), 1.0, rtol=1e-5)
  st_ = ols.init(k)
  assert st_.prob_sums.dtype == jnp.float32 and st_.counts.dtype == jnp.float32
  assert float(st_.counts.sum()) == 0


def test_init_errors():
  with pytest.raises(ValueError, match="init"):
    ols.init(4, "gaussian")
  with pytest.raises(ValueError, match="num_classes"):
    ols.init(1)
  with pytest.raises(ValueError, match="eps"):
    ols.init(4, "label_smoothing", eps=1.5)


# --------------------------------------------------------------------------
# accumulate
# --------------------------------------------------------------------------

class AccumulateTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @hypothesis.given(data=batches())
  def test_matches_numpy_reference(self, data):
    k, logits, labels, mask = data
    acc = self.variant(ols.accumulate)
    out = acc(ols.init(k), logits, labels, mask)
    ref_s, ref_c = np_accumulate(np.zeros((k, k)), np.zeros(k), logits, labels, mask)
    np.testing.assert_allclose(out.prob_sums, ref_s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.counts, ref_c)
    np.testing.assert_array_equal(out.soft_labels, ols.init(k).soft_labels)

  @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
  def test_duplicate_labels_all_counted(self):
    logits = jnp.array([[5., 0., 0.]] * 6)  # six correct samples of class 0
    labels = jnp.zeros((6,), jnp.int32)

    def fn(lg, lb):
      return ols.accumulate(ols.init(3), lg, lb).counts

    # Under pmap, chex broadcasts the inputs to every device and returns the
    # first device's output.
    counts = self.variant(fn)(logits, labels)
    np.testing.assert_array_equal(counts, [6., 0., 0.])


@pytest.mark.slow
@hypothesis.given(data=batches(), split_seed=st.integers(0, 1000))
def test_additive_over_splits_and_permutation_invariant(data, split_seed):
  k, logits, labels, mask = data
  rng = np.random.default_rng(split_seed)
  whole = ols.accumulate(ols.init(k), logits, labels, mask)
  # Any split into consecutive pieces.
  cuts = np.sort(rng.integers(0, len(labels) + 1, 2))
  state = ols.init(k)
  for lo, hi in zip([0, *cuts], [*cuts, len(labels)]):
    if hi > lo:
      state = ols.accumulate(state, logits[lo:hi], labels[lo:hi], mask[lo:hi])
  np.testing.assert_allclose(state.prob_sums, whole.prob_sums, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(state.counts, whole.counts)
  # Permutation.
  perm = rng.permutation(len(labels))
  permuted = ols.accumulate(ols.init(k), logits[perm], labels[perm], mask[perm])
  np.testing.assert_allclose(permuted.prob_sums, whole.prob_sums, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(permuted.counts, whole.counts)


def test_padding_never_counts():
  logits = jnp.array([[4., 0.], [4., 0.], [0., 4.]])
  labels = jnp.array([0, 0, 1])
  out = ols.accumulate(ols.init(2), logits, labels, jnp.array([1., 0., 0.]))
  np.testing.assert_array_equal(out.counts, [1., 0.])
  np.testing.assert_allclose(out.prob_sums[1], [0., 0.])
  # Even garbage logits in padded rows (NaN) must not leak in.
  bad = logits.at[2].set(jnp.nan)
  out = ols.accumulate(ols.init(2), bad, labels, jnp.array([1., 1., 0.]))
  assert np.isfinite(np.asarray(out.prob_sums)).all()


def test_wrong_predictions_do_not_count_and_ties_take_first_index():
  # Sample 0: predicted 1, label 0 -> no count. Sample 1: tie between 0 and 1,
  # argmax picks 0 -> counts for label 0, not for label 1.
  logits = jnp.array([[0., 3., 0.], [2., 2., 0.], [2., 2., 0.]])
  labels = jnp.array([0, 0, 1])
  out = ols.accumulate(ols.init(3), logits, labels)
  np.testing.assert_array_equal(out.counts, [1., 0., 0.])
  np.testing.assert_allclose(out.prob_sums[0], jax.nn.softmax(logits[1]), rtol=1e-6)


def test_bfloat16_logits_accumulate_in_float32():
  k, b = 4, 4096
  rng = np.random.default_rng(0)
  labels = jnp.asarray(rng.integers(0, k, b), jnp.int32)
  logits = jax.nn.one_hot(labels, k) * 6.0
  state = ols.init(k)
  step = jax.jit(ols.accumulate)
  for _ in range(8):
    state = step(state, logits.astype(jnp.bfloat16), labels)
  assert state.prob_sums.dtype == jnp.float32 and state.counts.dtype == jnp.float32
  expected = np.bincount(np.asarray(labels), minlength=k) * 8.0
  # A bf16 running sum would stall at 256; float32 counts exactly.
  np.testing.assert_array_equal(state.counts, expected)
  p0 = float(jax.nn.softmax(jnp.array([6., 0., 0., 0.]))[0])
  np.testing.assert_allclose(state.prob_sums[jnp.arange(k), jnp.arange(k)],
                             expected * p0, rtol=1e-2)


# --------------------------------------------------------------------------
# next_soft_labels
# --------------------------------------------------------------------------

class NextSoftLabelsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @hypothesis.given(data=batches())
  def test_rows_are_distributions_and_match_reference(self, data):
    k, logits, labels, mask = data
    state = ols.accumulate(ols.init(k), logits, labels, mask)
    nxt = self.variant(ols.next_soft_labels)(state)
    s = np.asarray(nxt.soft_labels)
    assert (s >= 0).all()
    np.testing.assert_allclose(s.sum(-1), 1.0, rtol=1e-5)
    ref_s, ref_c = np_accumulate(np.zeros((k, k)), np.zeros(k), logits, labels, mask)
    np.testing.assert_allclose(s, np_next(ref_s, ref_c), rtol=1e-5, atol=1e-6)
    for c in range(k):
      if ref_c[c] == 0:
        np.testing.assert_allclose(s[c], 1.0 / k, rtol=1e-6)
    assert float(jnp.abs(nxt.prob_sums).sum()) == 0
    assert float(jnp.abs(nxt.counts).sum()) == 0


def test_freeze_rule():
  prev = jnp.array([[0.9, 0.05, 0.05], [0.5, 0.4, 0.1], [0.95, 0.03, 0.02]])
  state = ols.OLSState(soft_labels=prev,
                       prob_sums=jnp.array([[1.4, .3, .3], [.2, 1.6, .2], [0., 0., 0.]]),
                       counts=jnp.array([2., 2., 0.]))
  out = np.asarray(ols.next_soft_labels(state, freeze_threshold=0.88).soft_labels)
  np.testing.assert_allclose(out[0], prev[0])          # confident + correct: kept
  np.testing.assert_allclose(out[1], [.1, .8, .1])     # below threshold: updated
  np.testing.assert_allclose(out[2], [1 / 3] * 3, rtol=1e-6)  # no correct: uniform
  ref = np_next(np.asarray(state.prob_sums), np.asarray(state.counts),
                np.asarray(prev), 0.88)
  np.testing.assert_allclose(out, ref, rtol=1e-6)
  off = np.asarray(ols.next_soft_labels(state).soft_labels)
  np.testing.assert_allclose(off[0], [.7, .15, .15], rtol=1e-6)


# --------------------------------------------------------------------------
# loss
# --------------------------------------------------------------------------

class LossTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @hypothesis.given(data=batches(), alpha=st.floats(0, 1))
  def test_matches_reference(self, data, alpha):
    k, logits, labels, mask = data
    s = np.random.default_rng(k).dirichlet(np.ones(k), size=k).astype(np.float32)
    got = self.variant(ols.loss)(logits, labels, s, alpha, mask)
    np.testing.assert_allclose(got, np_loss(logits, labels, s, alpha, mask),
                               rtol=1e-5, atol=1e-5)


def test_alpha_one_is_plain_cross_entropy():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(16, 6)).astype(np.float32)
  labels = rng.integers(0, 6, 16)
  s = rng.dirichlet(np.ones(6), size=6).astype(np.float32)
  ce = -jax.nn.log_softmax(logits)[np.arange(16), labels].mean()
  np.testing.assert_allclose(ols.loss(logits, labels, s, 1.0), ce, rtol=1e-6)


@pytest.mark.slow
@hypothesis.given(data=batches(), alpha=st.floats(0, 1))
def test_gradient_is_analytic_and_none_flows_into_s(data, alpha):
  k, logits, labels, _ = data
  b = len(labels)
  s = np.random.default_rng(b).dirichlet(np.ones(k), size=k).astype(np.float32)
  g_logits, g_s = jax.grad(ols.loss, argnums=(0, 2))(logits, labels, s, alpha)
  p = np_softmax(logits)
  onehot = np.eye(k)[labels]
  srow = s[labels]
  expected = ((alpha + (1 - alpha) * srow.sum(-1, keepdims=True)) * p
              - alpha * onehot - (1 - alpha) * srow) / b
  np.testing.assert_allclose(g_logits, expected, rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(g_s, np.zeros_like(s))


def test_row_entropy():
  s = jnp.array([[1., 0.], [.5, .5]])
  np.testing.assert_allclose(ols.row_entropy(s), [0., np.log(2)], rtol=1e-6)


@pytest.mark.slow
@hypothesis.given(data=batches())
def test_batch_statistics_equals_one_accumulate(data):
  """The segment_sum per-batch statistic equals one scatter-add accumulation."""
  k, logits, labels, mask = data
  sums, counts = oracles.batch_statistics(logits, labels, k, mask)
  acc = ols.accumulate(ols.init(k), logits, labels, mask)
  np.testing.assert_allclose(sums, acc.prob_sums, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(counts, acc.counts)
