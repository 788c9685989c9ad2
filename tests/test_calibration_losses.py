"""FLSD-53, focal loss and MbLS against NumPy transcriptions of the released code.

References (read at the commits named in docs/METHODS.md):
  torrvision/focal_calibration  Losses/focal_loss_adaptive_gamma.py, focal_loss.py
  by-liu/MbLS                   calibrate/losses/logit_margin_l1.py
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ols_jax import config as config_lib
from ols_jax import losses

jax.config.update("jax_enable_x64", False)


def _np_logsoftmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def released_flsd53(z, y, gamma=3.0):
  """FocalLossAdaptive(gamma=3).forward, summed over the batch (size_average=False)."""
  logpt = _np_logsoftmax(z)[np.arange(len(y)), y]
  pt = np.exp(logpt)
  gamma_dic = {0.2: 5.0, 0.5: 3.0}
  gammas = []
  for p in pt:
    if p >= 0.5:
      gammas.append(gamma)
      continue
    for key in sorted(gamma_dic):
      if p < key:
        gammas.append(gamma_dic[key])
        break
  return np.sum(-1 * (1 - pt) ** np.asarray(gammas) * logpt)


def released_focal(z, y, gamma):
  logpt = _np_logsoftmax(z)[np.arange(len(y)), y]
  return np.sum(-1 * (1 - np.exp(logpt)) ** gamma * logpt)


def released_mbls(z, y, margin=10.0, alpha=0.1):
  """LogitMarginL1(margin, alpha).forward: CE (batch mean) + alpha * mean relu(diff - m)."""
  ce = -_np_logsoftmax(z)[np.arange(len(y)), y].mean()
  diff = z.max(1, keepdims=True) - z
  return ce + alpha * np.maximum(diff - margin, 0.0).mean()


def _batch(seed, b=64, k=7, scale=4.0):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(b, k)) * scale
  y = rng.integers(0, k, b)
  return z, y


def _mean_loss(spec, z, y):
  return jnp.mean(losses.per_example_loss(spec, jnp.asarray(z, jnp.float32),
                                          jnp.asarray(y, jnp.int32)))


@pytest.mark.parametrize("seed", range(4))
def test_flsd53_is_the_released_loss_as_a_batch_mean(seed):
  z, y = _batch(seed)
  got = float(_mean_loss(losses.LossSpec("flsd53", 7), z, y))
  np.testing.assert_allclose(got * len(y), released_flsd53(z, y), rtol=2e-5)


def test_flsd53_gamma_switches_at_0_2():
  # p_y just below and above 0.2 (two classes): gamma 5 then 3.
  k = 2
  for p, g in ((0.19, 5.0), (0.21, 3.0), (0.6, 3.0)):
    z = np.array([[np.log(p), np.log(1 - p)]])
    logp = jax.nn.log_softmax(jnp.asarray(z, jnp.float32))
    assert float(losses.flsd53_gamma(logp, jnp.array([0]))[0]) == g
    got = float(_mean_loss(losses.LossSpec("flsd53", k), z, [0]))
    np.testing.assert_allclose(got, -(1 - p) ** g * np.log(p), rtol=1e-5)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 3.0])
def test_focal_fixed_gamma_is_the_released_loss(gamma):
  z, y = _batch(7)
  got = float(_mean_loss(losses.LossSpec("focal", 7, focal_gamma=gamma), z, y))
  np.testing.assert_allclose(got * len(y), released_focal(z, y, gamma), rtol=2e-5)


def test_focal_gamma_0_is_cross_entropy_and_finite_at_certainty():
  z = np.array([[60.0, 0.0, 0.0], [0.0, 1.0, 2.0]])
  y = [0, 2]
  focal = losses.LossSpec("focal", 3, focal_gamma=0.0)
  ce = losses.LossSpec("ce", 3)
  np.testing.assert_allclose(_mean_loss(focal, z, y), _mean_loss(ce, z, y), rtol=1e-6)
  for spec in (focal, losses.LossSpec("flsd53", 3), losses.LossSpec("focal", 3)):
    g = jax.grad(lambda x, s=spec: _mean_loss(s, x, y))(jnp.asarray(z, jnp.float32))
    assert np.isfinite(np.asarray(g)).all()


def _finite_difference(f, z, h=1e-5):
  g = np.zeros_like(z)
  for idx in np.ndindex(z.shape):
    up, dn = z.copy(), z.copy()
    up[idx] += h
    dn[idx] -= h
    g[idx] = (f(up) - f(dn)) / (2 * h)
  return g


@pytest.mark.parametrize("method", ["flsd53", "mbls"])
def test_gradients_match_the_released_autograd(method):
  # Finite differences of the NumPy transcription give the gradient PyTorch's
  # autograd takes (p_y in the focal factor and the MbLS max both carry
  # gradient); a detached factor or max would differ.
  z, y = _batch(3, b=6, k=5, scale=1.0 if method == "flsd53" else 8.0)
  if method == "flsd53":
    ref = _finite_difference(lambda x: released_flsd53(x, y) / len(y), z)
    spec = losses.LossSpec("flsd53", 5)
  else:
    ref = _finite_difference(lambda x: released_mbls(x, y, margin=3.0), z)
    spec = losses.LossSpec("mbls", 5, mbls_margin=3.0)
  got = jax.grad(lambda x: _mean_loss(spec, x, y))(jnp.asarray(z, jnp.float32))
  np.testing.assert_allclose(np.asarray(got), ref, atol=2e-4)
  if method == "mbls":  # a detached max would give another gradient here
    def detached(x):
      zx = jnp.asarray(x, jnp.float32)
      diff = jax.lax.stop_gradient(zx.max(1, keepdims=True)) - zx
      ce = -jnp.mean(jax.nn.log_softmax(zx)[jnp.arange(len(y)), jnp.asarray(y)])
      return ce + 0.1 * jnp.mean(jax.nn.relu(diff - 3.0))
    other = np.asarray(jax.grad(detached)(z))
    assert np.abs(other - ref).max() > 1e-2


@pytest.mark.parametrize("margin,alpha", [(10.0, 0.1), (5.0, 0.1), (2.0, 0.5)])
def test_mbls_is_the_released_loss(margin, alpha):
  z, y = _batch(11, scale=6.0)
  got = float(_mean_loss(losses.LossSpec("mbls", 7, mbls_margin=margin, mbls_alpha=alpha),
                         z, y))
  np.testing.assert_allclose(got, released_mbls(z, y, margin, alpha), rtol=2e-5)


def test_mbls_is_cross_entropy_inside_the_margin():
  z, y = _batch(2, scale=1.0)  # every logit distance < 10
  np.testing.assert_allclose(_mean_loss(losses.LossSpec("mbls", 7), z, y),
                             _mean_loss(losses.LossSpec("ce", 7), z, y), rtol=1e-6)


@pytest.mark.parametrize("field,value", [
    ("focal_gamma", -1.0), ("mbls_margin", -0.5), ("mbls_alpha", -0.1)])
def test_loss_spec_rejects_negative(field, value):
  with pytest.raises(ValueError, match=field):
    losses.LossSpec(**{"num_classes": 4, field: value})


def test_config_passes_the_new_fields_to_the_loss():
  c = config_lib.base_config()
  c.method, c.focal_gamma, c.mbls_margin, c.mbls_alpha = "mbls", 2.0, 5.0, 0.2
  config_lib.validate(c)
  spec = config_lib.loss_spec(c, 4)
  assert (spec.method, spec.focal_gamma, spec.mbls_margin, spec.mbls_alpha) == (
      "mbls", 2.0, 5.0, 0.2)
