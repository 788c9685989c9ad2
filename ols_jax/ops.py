"""Small numeric helpers shared by the losses, the OLS update and the metrics."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def valid_mask(shape, mask: Optional[jax.Array] = None) -> jax.Array:
  """float32 validity weights: ``mask`` as float32, or ones of ``shape``."""
  if mask is None:
    return jnp.ones(shape, jnp.float32)
  return mask.astype(jnp.float32)


def label_log_prob(log_probs: jax.Array, labels: jax.Array) -> jax.Array:
  """``log_probs[i, labels[i]]`` for each row: ``(B, K), (B,) -> (B,)``."""
  return jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]


def hard_cross_entropy(log_probs: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example cross-entropy against integer labels, from log-probabilities."""
  return -label_log_prob(log_probs, labels)


def soft_cross_entropy(log_probs: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-example cross-entropy against target distributions ``(B, K)``."""
  return -jnp.sum(targets * log_probs, axis=-1)
