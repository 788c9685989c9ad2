"""VGG-19 and VGG-19-BN (torchvision layout) in Flax linen.

References:
  Simonyan, Zisserman, "Very Deep Convolutional Networks for Large-Scale
  Image Recognition", ICLR 2015.
  torchvision.models.vgg (configuration "E", adaptive 7x7 pool, init).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from ols_jax.models import common

Dtype = Any

# Configuration "E": conv widths, 'M' = 2x2 max-pool with stride 2.
VGG19_CONFIG = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M',
                512, 512, 512, 512, 'M', 512, 512, 512, 512, 'M')

# Max-pools removed by ``small_input`` (the first two: total stride 32 -> 8,
# mirroring the ResNet small-input stem).
SMALL_INPUT_SKIPPED_POOLS = 2


class VGG(nn.Module):
  """VGG classifier with torchvision's adaptive 7x7 average pool.

  Attributes:
    config: conv widths and ``'M'`` (max-pool) markers.
    num_classes: number of output logits.
    batch_norm: conv -> BN -> ReLU (``vgg19_bn``) instead of conv -> ReLU.
    small_input: drop the first two max-pools (total stride 8, for 28-64 px
      inputs); parameter count unchanged.
    width_multiplier: scales conv widths and the 4096 classifier width.
    dropout_rate: dropout after each hidden classifier layer (0.5).
    dtype: compute dtype; params are float32, logits float32.
    bn_axis_name: ``axis_name`` of every BatchNorm (``batch_norm=True``).
    zero_init_residual: accepted for a uniform interface; VGG has no residual
      blocks, so it has no effect.
    bn_momentum: running-average decay (Flax convention).
    bn_epsilon: BatchNorm epsilon.
    freeze_bn: BatchNorm always uses (and keeps) its running statistics, also
      in training (a frozen backbone).
  """
  config: Sequence[Union[int, str]] = VGG19_CONFIG
  num_classes: int = 1000
  batch_norm: bool = False
  small_input: bool = False
  width_multiplier: float = 1.0
  dropout_rate: float = 0.5
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
      x: ``(B, H, W, C)`` float images (at least 32 px, or 8 px with
        ``small_input``).
      train: batch statistics for BN and active dropout (``'dropout'`` rng).
      return_embedding: also return the penultimate features.

    Returns:
      ``(B, num_classes)`` float32 logits, or ``(logits, embedding)`` where the
      ``(B, D)`` float32 embedding is the output of the second hidden
      classifier layer (after ReLU, before its dropout), i.e. the input of the
      last Dense in eval mode.
    """
    common.check_input(x, 'VGG')
    x = jnp.asarray(x, self.dtype)
    dense = lambda features, name: nn.Dense(  # noqa: E731
        features,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        kernel_init=common.classifier_kernel_init,
        bias_init=nn.initializers.zeros,
        name=name)
    pools_to_skip = SMALL_INPUT_SKIPPED_POOLS if self.small_input else 0
    conv_index = 0
    for item in self.config:
      if item == 'M':
        if pools_to_skip:
          pools_to_skip -= 1
          continue
        if x.shape[1] < 2 or x.shape[2] < 2:
          raise ValueError(
              f'VGG feature map {x.shape[1:3]} too small to max-pool; the '
              'input needs at least 32 px (use small_input=True for smaller '
              'images)')
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        continue
      features = common.scale_width(int(item), self.width_multiplier)
      x = common.conv(features, 3, use_bias=True, dtype=self.dtype,
                      name=f'conv{conv_index}')(x)
      if self.batch_norm:
        x = common.batch_norm(train and not self.freeze_bn, dtype=self.dtype,
                              momentum=self.bn_momentum,
                              epsilon=self.bn_epsilon,
                              axis_name=self.bn_axis_name,
                              name=f'bn{conv_index}')(x)
      x = nn.relu(x)
      conv_index += 1
    x = common.adaptive_avg_pool2d(x, (7, 7))
    x = x.reshape((x.shape[0], -1))
    hidden = common.scale_width(4096, self.width_multiplier)
    x = nn.relu(dense(hidden, 'fc0')(x))
    if self.dropout_rate > 0.0:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.relu(dense(hidden, 'fc1')(x))
    embedding = jnp.asarray(x, jnp.float32)
    if self.dropout_rate > 0.0:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    logits = jnp.asarray(dense(self.num_classes, 'fc2')(x), jnp.float32)
    if return_embedding:
      return logits, embedding
    return logits


def vgg19(num_classes: int = 1000, **options) -> VGG:
  """VGG-19 (configuration E) without BatchNorm."""
  return VGG(num_classes=num_classes, batch_norm=False, **options)


def vgg19_bn(num_classes: int = 1000, **options) -> VGG:
  """VGG-19 (configuration E) with BatchNorm after every conv."""
  return VGG(num_classes=num_classes, batch_norm=True, **options)
