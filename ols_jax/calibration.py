"""Post-hoc temperature scaling.

A single temperature ``T > 0`` divides the logits; it is fitted on validation
logits by minimising the negative log-likelihood. The NLL is convex in the
inverse temperature ``beta = 1 / T``; the fit is a golden-section search over
``log T`` in a bracket followed by safeguarded Newton steps in ``beta``, all in
float64 NumPy, so it is deterministic.

References:
  Guo et al., "On Calibration of Modern Neural Networks", ICML 2017.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0


def _as_float64(logits, labels):
  z = np.asarray(jax.device_get(logits), np.float64)
  y = np.asarray(jax.device_get(labels)).astype(np.int64)
  if z.ndim != 2 or y.shape != z.shape[:1]:
    raise ValueError(f"expected logits (N, K) and labels (N,), got "
                     f"{z.shape} and {y.shape}")
  if z.shape[0] == 0:
    raise ValueError("fit_temperature: no validation samples")
  if np.any((y < 0) | (y >= z.shape[1])):
    raise ValueError("fit_temperature: labels out of range")
  if not np.all(np.isfinite(z)):
    raise ValueError("fit_temperature: logits must be finite")
  return z, y


def _nll_and_derivatives(beta: float, z: np.ndarray, z_true: np.ndarray):
  """Mean NLL of ``softmax(beta * z)`` and its first two beta-derivatives."""
  s = beta * z
  s_max = np.max(s, axis=1, keepdims=True)
  e = np.exp(s - s_max)
  norm = np.sum(e, axis=1, keepdims=True)
  p = e / norm
  lse = np.log(norm[:, 0]) + s_max[:, 0]
  nll = float(np.mean(lse - beta * z_true))
  mean_z = np.sum(p * z, axis=1)
  grad = float(np.mean(mean_z - z_true))
  hess = float(np.mean(np.sum(p * z * z, axis=1) - mean_z ** 2))
  return nll, grad, max(hess, 0.0)


def temperature_nll(logits, labels, temperature: float) -> float:
  """Mean NLL of ``softmax(logits / temperature)`` (float64, host side).

  Args:
    logits: ``(N, K)`` logits.
    labels: ``(N,)`` integer labels.
    temperature: ``T > 0``.

  Returns:
    The mean negative log-likelihood.
  """
  z, y = _as_float64(logits, labels)
  z_true = z[np.arange(z.shape[0]), y]
  return _nll_and_derivatives(1.0 / float(temperature), z, z_true)[0]


def fit_temperature(logits, labels, *, log_t_range: tuple[float, float] = (-3.0, 3.0),
                    golden_iters: int = 60, newton_iters: int = 30) -> float:
  """Fits the temperature that minimises the validation NLL.

  Args:
    logits: ``(N, K)`` validation logits (JAX or NumPy, any float dtype).
    labels: ``(N,)`` integer labels.
    log_t_range: bracket for ``log T``.
    golden_iters: golden-section iterations over ``log T``.
    newton_iters: maximum safeguarded Newton steps in ``beta = 1 / T``.

  Returns:
    The fitted ``T`` as a Python float, inside ``exp(log_t_range)``. Its NLL
    never exceeds the NLL at ``T = 1`` when 1 lies in the bracket.

  References:
    Guo et al., "On Calibration of Modern Neural Networks", ICML 2017.
  """
  z, y = _as_float64(logits, labels)
  z_true = z[np.arange(z.shape[0]), y]
  lo, hi = float(log_t_range[0]), float(log_t_range[1])
  if not lo < hi:
    raise ValueError(f"log_t_range: expected lo < hi, got {log_t_range!r}")

  def f(log_t):
    return _nll_and_derivatives(math.exp(-log_t), z, z_true)[0]

  # Golden-section search: the NLL is convex in beta = exp(-log T) and hence
  # unimodal in log T.
  a, b = lo, hi
  c = b - _INV_PHI * (b - a)
  d = a + _INV_PHI * (b - a)
  fc, fd = f(c), f(d)
  for _ in range(golden_iters):
    if fc <= fd:
      b, d, fd = d, c, fc
      c = b - _INV_PHI * (b - a)
      fc = f(c)
    else:
      a, c, fc = c, d, fd
      d = a + _INV_PHI * (b - a)
      fd = f(d)
  best_log_t, best = (c, fc) if fc <= fd else (d, fd)

  # Newton refinement in beta, kept inside the bracket and accepted only when
  # it lowers the NLL.
  beta_lo, beta_hi = math.exp(-hi), math.exp(-lo)
  beta = math.exp(-best_log_t)
  for _ in range(newton_iters):
    _, grad, hess = _nll_and_derivatives(beta, z, z_true)
    if hess <= 0.0 or grad == 0.0:
      break
    new_beta = min(max(beta - grad / hess, beta_lo), beta_hi)
    new_val = _nll_and_derivatives(new_beta, z, z_true)[0]
    if not new_val < best:
      break
    step = abs(new_beta - beta)
    beta, best = new_beta, new_val
    if step <= 1e-12 * max(beta, 1.0):
      break
  temperature = 1.0 / beta

  if lo <= 0.0 <= hi and f(0.0) < best:
    temperature = 1.0
  return float(temperature)


def apply_temperature(logits: jax.Array, temperature: float) -> jax.Array:
  """Divides logits by the temperature, keeping their dtype.

  Args:
    logits: ``(..., K)`` logits.
    temperature: ``T > 0``.

  Returns:
    ``logits / T``.
  """
  logits = jnp.asarray(logits)
  return (logits.astype(jnp.float32) / jnp.float32(temperature)).astype(logits.dtype)
