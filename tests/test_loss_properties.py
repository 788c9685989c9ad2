"""Property tests of every loss: finite values and gradients, and the limits that equal CE.

Each property runs under ``chex.variants`` with and without jit.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from ols_jax import losses

K = 5


def _batch(seed, scale):
  rng = np.random.default_rng(seed)
  logits = jnp.asarray(rng.normal(size=(16, K)) * scale, jnp.float32)
  labels = jnp.asarray(rng.integers(0, K, 16), jnp.int32)
  s = rng.random((K, K)) + 1e-3
  soft = jnp.asarray(s / s.sum(1, keepdims=True), jnp.float32)
  teacher = jnp.asarray(rng.normal(size=(16, K)) * scale, jnp.float32)
  return logits, labels, soft, teacher


def _mean_loss(spec, logits, labels, soft, teacher):
  kwargs = {}
  if spec.uses_ols:
    kwargs["soft_labels"] = soft
  if spec.method == "kd":
    kwargs["teacher_logits"] = teacher
  return jnp.mean(losses.per_example_loss(spec, logits, labels, **kwargs))


class FiniteTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(method=losses.METHODS, scale=(1.0, 50.0))
  def test_value_and_gradient_are_finite(self, method, scale):
    spec = losses.LossSpec(method=method, num_classes=K)
    logits, labels, soft, teacher = _batch(0, scale)
    fn = self.variant(jax.value_and_grad(
        lambda z: _mean_loss(spec, z, labels, soft, teacher)))
    value, grad = fn(logits)
    chex.assert_tree_all_finite((value, grad))
    chex.assert_shape(grad, logits.shape)
    self.assertGreaterEqual(float(value), 0.0)


class LimitTest(chex.TestCase):
  """The hyper-parameter values at which a method is exactly hard-label CE (or OLS)."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(
      dict(method="ls", kw=dict(eps=0.0)),
      dict(method="ls_kminus1", kw=dict(eps=0.0)),
      dict(method="ols", kw=dict(alpha=1.0)),
      dict(method="focal", kw=dict(focal_gamma=0.0)),
      dict(method="mbls", kw=dict(mbls_margin=1e6)),
      dict(method="mbls", kw=dict(mbls_alpha=0.0)),
  )
  def test_limit_is_cross_entropy(self, method, kw):
    ce = losses.LossSpec(method="ce", num_classes=K)
    spec = losses.LossSpec(method=method, num_classes=K, **kw)
    for seed, scale in ((0, 1.0), (1, 8.0)):
      logits, labels, soft, teacher = _batch(seed, scale)
      got = self.variant(jax.value_and_grad(
          lambda z, s=spec: _mean_loss(s, z, labels, soft, teacher)))(logits)
      want = jax.value_and_grad(lambda z: _mean_loss(ce, z, labels, soft, teacher))(logits)
      chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_ols_mbls_with_an_unreachable_margin_is_ols(self):
    ols_spec = losses.LossSpec(method="ols", num_classes=K, alpha=0.3)
    both = losses.LossSpec(method="ols_mbls", num_classes=K, alpha=0.3, mbls_margin=1e6)
    logits, labels, soft, teacher = _batch(2, 4.0)
    got = self.variant(lambda z: _mean_loss(both, z, labels, soft, teacher))(logits)
    want = _mean_loss(ols_spec, logits, labels, soft, teacher)
    chex.assert_trees_all_close(got, want, rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_ols_alpha_zero_is_cross_entropy_against_the_soft_row(self):
    spec = losses.LossSpec(method="ols", num_classes=K, alpha=0.0)
    logits, labels, soft, teacher = _batch(3, 2.0)
    got = self.variant(lambda z: _mean_loss(spec, z, labels, soft, teacher))(logits)
    z = np.asarray(logits, np.float64)
    logp = z - z.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    want = -np.mean(np.sum(np.asarray(soft)[np.asarray(labels)] * logp, axis=1))
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
