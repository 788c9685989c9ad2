"""The two new OLS arms against NumPy transcriptions: momentum on S, OLS + MbLS."""

import chex
import flax.struct
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ols_jax import config as config_lib
from ols_jax import losses
from ols_jax import ols
from ols_jax import steps


# Example counts: conftest's hypothesis profiles (25 in the full suite, 8 in the quick tier).


def np_next_with_momentum(sums, counts, prev, m):
  """S_t = m S_{t-1} + (1 - m) S_new, rows of an all-zero S_{t-1} taking S_new."""
  k = len(counts)
  new = np.full((k, k), 1.0 / k)
  for c in range(k):
    if counts[c] > 0:
      new[c] = sums[c] / counts[c]
  out = new.copy()
  for c in range(k):
    if prev[c].sum() > 0:
      out[c] = m * prev[c] + (1 - m) * new[c]
  return out


def np_ols_mbls(z, y, s, alpha, margin, weight):
  """Batch mean of alpha CE + (1 - alpha) CE(S[y]) + weight * mean_k relu(max z - z_k - margin)."""
  z = np.asarray(z, np.float64)
  logp = z - z.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  hard = -logp[np.arange(len(y)), y]
  soft = -(s[y] * logp).sum(-1)
  pen = np.maximum(z.max(-1, keepdims=True) - z - margin, 0.0).mean(-1)
  return float((alpha * hard + (1 - alpha) * soft + weight * pen).mean())


@st.composite
def epoch_sums(draw):
  k = draw(st.integers(2, 8))
  rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
  counts = rng.integers(0, 4, k).astype(np.float32)
  sums = (rng.dirichlet(np.ones(k), size=k) * counts[:, None]).astype(np.float32)
  prev = rng.dirichlet(np.ones(k), size=k).astype(np.float32)
  if draw(st.booleans()):
    prev[rng.integers(0, k)] = 0.0  # a row still at the "zeros" start
  return sums, counts, prev


class MomentumTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @hypothesis.given(data=epoch_sums(), m=st.sampled_from([0.0, 0.3, 0.5, 0.9]))
  def test_matches_numpy(self, data, m):
    sums, counts, prev = data
    state = ols.OLSState(jnp.asarray(prev), jnp.asarray(sums), jnp.asarray(counts))
    fn = self.variant(lambda st_: ols.next_soft_labels(st_, momentum=m))
    out = fn(state)
    np.testing.assert_allclose(out.soft_labels,
                               np_next_with_momentum(sums, counts, prev, m),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out.counts, np.zeros_like(counts))
    np.testing.assert_array_equal(out.prob_sums, np.zeros_like(sums))


@hypothesis.given(data=epoch_sums())
def test_momentum_zero_is_ols_exactly(data):
  sums, counts, prev = data
  state = ols.OLSState(jnp.asarray(prev), jnp.asarray(sums), jnp.asarray(counts))
  np.testing.assert_array_equal(ols.next_soft_labels(state, momentum=0.0).soft_labels,
                                ols.next_soft_labels(state).soft_labels)


@hypothesis.given(data=epoch_sums(), m=st.sampled_from([0.5, 0.9]))
def test_momentum_rows_stay_distributions(data, m):
  sums, counts, prev = data
  state = ols.OLSState(jnp.asarray(prev), jnp.asarray(sums), jnp.asarray(counts))
  out = np.asarray(ols.next_soft_labels(state, momentum=m).soft_labels)
  assert (out >= 0).all()
  np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-5)


def test_momentum_example_by_hand():
  prev = jnp.array([[0.5, 0.5], [0.0, 0.0]])
  state = ols.OLSState(prev, jnp.array([[1.8, 0.2], [0.3, 0.7]]), jnp.array([2.0, 1.0]))
  out = np.asarray(ols.next_soft_labels(state, momentum=0.9).soft_labels)
  np.testing.assert_allclose(out[0], [0.9 * 0.5 + 0.1 * 0.9, 0.9 * 0.5 + 0.1 * 0.1], rtol=1e-6)
  np.testing.assert_allclose(out[1], [0.3, 0.7], rtol=1e-6)  # zero start: S_new as is


@pytest.mark.parametrize("m", [-0.1, 1.0])
def test_momentum_out_of_range(m):
  with pytest.raises(ValueError, match="momentum"):
    ols.next_soft_labels(ols.init(3), momentum=m)
  with pytest.raises(ValueError, match="ols_momentum"):
    losses.LossSpec("ols", 3, ols_momentum=m)
  c = config_lib.base_config()
  c.ols_momentum = m
  with pytest.raises(config_lib.ConfigError, match="config.ols_momentum"):
    config_lib.validate(c)


@flax.struct.dataclass
class _Holder:
  """The one field of a TrainState that the epoch boundary reads."""
  ols: ols.OLSState


def test_epoch_boundary_applies_the_configs_momentum():
  c = config_lib.base_config()
  c.ols_momentum = 0.5
  spec = config_lib.loss_spec(c, 2)
  assert spec.ols_momentum == 0.5
  prev = jnp.array([[0.6, 0.4], [0.5, 0.5]])
  acc = ols.OLSState(prev, jnp.array([[1.0, 0.0], [0.0, 2.0]]), jnp.array([1.0, 2.0]))
  out = steps.epoch_boundary(_Holder(ols=acc), momentum=spec.ols_momentum)
  np.testing.assert_allclose(out.ols.soft_labels, [[0.8, 0.2], [0.25, 0.75]], rtol=1e-6)


class OLSMbLSTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @hypothesis.given(seed=st.integers(0, 2**31 - 1), alpha=st.floats(0, 1),
                    margin=st.sampled_from([0.5, 2.0, 5.0, 10.0]),
                    weight=st.sampled_from([0.0, 0.1, 0.5]))
  def test_matches_numpy(self, seed, alpha, margin, weight):
    rng = np.random.default_rng(seed)
    k, b = int(rng.integers(2, 9)), int(rng.integers(1, 33))
    z = (rng.normal(size=(b, k)) * 6).astype(np.float32)
    y = rng.integers(0, k, b).astype(np.int32)
    s = rng.dirichlet(np.ones(k), size=k).astype(np.float32)
    spec = losses.LossSpec("ols_mbls", k, alpha=alpha, mbls_margin=margin, mbls_alpha=weight)
    got = self.variant(lambda z_, y_, s_: jnp.mean(
        losses.per_example_loss(spec, z_, y_, soft_labels=s_)))(z, y, s)
    np.testing.assert_allclose(got, np_ols_mbls(z, y, s, alpha, margin, weight),
                               rtol=2e-5, atol=1e-5)


def test_ols_mbls_limits():
  rng = np.random.default_rng(5)
  z = (rng.normal(size=(32, 6)) * 8).astype(np.float32)
  y = rng.integers(0, 6, 32)
  s = rng.dirichlet(np.ones(6), size=6).astype(np.float32)
  def mean(spec):
    return float(jnp.mean(losses.per_example_loss(spec, z, y, soft_labels=s)))
  # A margin no logit distance reaches: OLS exactly.
  np.testing.assert_allclose(mean(losses.LossSpec("ols_mbls", 6, alpha=0.4, mbls_margin=1e4)),
                             mean(losses.LossSpec("ols", 6, alpha=0.4)), rtol=1e-6)
  # alpha 1: MbLS exactly.
  np.testing.assert_allclose(mean(losses.LossSpec("ols_mbls", 6, alpha=1.0, mbls_margin=3.0)),
                             mean(losses.LossSpec("mbls", 6, mbls_margin=3.0)), rtol=1e-6)
  assert losses.LossSpec("ols_mbls", 6).uses_ols
  with pytest.raises(ValueError, match="soft_labels"):
    losses.per_example_loss(losses.LossSpec("ols_mbls", 6), z, y)


def test_ols_mbls_gradient_flows_through_the_max_and_not_into_s():
  z = jnp.array([[8.0, 0.0, -1.0]], jnp.float32)
  y = jnp.array([1])
  s = jnp.full((3, 3), 1 / 3, jnp.float32)
  spec = losses.LossSpec("ols_mbls", 3, alpha=0.5, mbls_margin=2.0, mbls_alpha=1.0)
  f = lambda z_, s_: jnp.mean(losses.per_example_loss(spec, z_, y, soft_labels=s_))
  gz, gs = jax.grad(f, argnums=(0, 1))(z, s)
  p = np.asarray(jax.nn.softmax(z[0]))
  onehot = np.eye(3)[1]
  ce_grad = 0.5 * (p - onehot) + 0.5 * (p - 1 / 3)
  # relu(8 - z_k - 2): active for k = 1 (6 - ...) and k = 2; d/dz_0 = 2/3, d/dz_k = -1/3.
  pen_grad = np.array([2 / 3, -1 / 3, -1 / 3])
  np.testing.assert_allclose(gz[0], ce_grad + pen_grad, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(gs, np.zeros((3, 3)))
