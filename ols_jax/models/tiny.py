"""A tiny, fast CNN for tests and smoke runs (a few thousand parameters)."""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ols_jax.models import common

Dtype = Any

TINY_WIDTHS = (8, 16, 32)


class TinyCNN(nn.Module):
  """Three 3x3 conv-BN-ReLU layers, global average pool, Dense.

  Attributes:
    num_classes: number of output logits.
    small_input: stride 1 in the first conv (otherwise stride 2); the second
      and third convs always have stride 2.
    width_multiplier: scales the (8, 16, 32) conv widths.
    dropout_rate: dropout before the classifier (default 0, i.e. none).
    dtype: compute dtype; params are float32, logits float32.
    bn_axis_name: ``axis_name`` of every BatchNorm.
    zero_init_residual: accepted for a uniform interface; no effect (no
      residual blocks).
    bn_momentum: running-average decay (Flax convention).
    bn_epsilon: BatchNorm epsilon.
    freeze_bn: BatchNorm always uses (and keeps) its running statistics.
  """
  num_classes: int = 10
  small_input: bool = False
  width_multiplier: float = 1.0
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None
  zero_init_residual: bool = False
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  freeze_bn: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               return_embedding: bool = False):
    """Runs the network.

    Args:
      x: ``(B, H, W, C)`` float images.
      train: batch statistics for BN and active dropout (``'dropout'`` rng).
      return_embedding: also return the globally pooled features.

    Returns:
      ``(B, num_classes)`` float32 logits, or ``(logits, embedding)``.
    """
    common.check_input(x, 'TinyCNN')
    x = jnp.asarray(x, self.dtype)
    for i, width in enumerate(TINY_WIDTHS):
      strides = 1 if (i == 0 and self.small_input) else 2
      x = common.conv(common.scale_width(width, self.width_multiplier), 3,
                      strides=strides, dtype=self.dtype, name=f'conv{i}')(x)
      x = common.batch_norm(train and not self.freeze_bn, dtype=self.dtype,
                            momentum=self.bn_momentum,
                            epsilon=self.bn_epsilon,
                            axis_name=self.bn_axis_name, name=f'bn{i}')(x)
      x = nn.relu(x)
    return common.classifier_head(
        common.global_avg_pool(x), num_classes=self.num_classes,
        dropout_rate=self.dropout_rate, train=train, dtype=self.dtype,
        kernel_init=common.torch_linear_kernel_init, name='classifier',
        return_embedding=return_embedding)


def tiny_cnn(num_classes: int = 10, **options) -> TinyCNN:
  """The tiny test CNN."""
  return TinyCNN(num_classes=num_classes, **options)
