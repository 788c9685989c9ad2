"""MobileNetV2 (torchvision layout) in Flax linen.

References:
  Sandler, Howard, Zhu, Zhmoginov, Chen, "MobileNetV2: Inverted Residuals and
  Linear Bottlenecks", CVPR 2018.
  torchvision.models.mobilenetv2 (channel rounding, dropout 0.2, init).
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ols_jax.models import common

Dtype = Any

# (expansion t, output channels c, repeats n, first stride s), as the paper.
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
  """1x1 expand + ReLU6, 3x3 depthwise + ReLU6, linear 1x1 project.

  Attributes:
    features: output channels.
    strides: stride of the depthwise conv.
    expand_ratio: hidden width is ``round(in_channels * expand_ratio)``.
    zero_init_residual: zero gamma of the projection BN of blocks that have an
      identity shortcut.
  """
  features: int
  strides: int
  expand_ratio: int
  dtype: Dtype = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_axis_name: Optional[str] = None
  zero_init_residual: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = lambda zero=False, name=None: common.batch_norm(  # noqa: E731
        train, dtype=self.dtype, momentum=self.bn_momentum,
        epsilon=self.bn_epsilon, axis_name=self.bn_axis_name, zero_init=zero,
        name=name)
    in_features = x.shape[-1]
    hidden = int(round(in_features * self.expand_ratio))
    use_residual = self.strides == 1 and in_features == self.features
    y = x
    if self.expand_ratio != 1:
      y = common.conv(hidden, 1, dtype=self.dtype, name='expand_conv')(y)
      y = nn.relu6(norm(name='expand_bn')(y))
    y = common.conv(hidden, 3, strides=self.strides, groups=hidden,
                    dtype=self.dtype, name='depthwise_conv')(y)
    y = nn.relu6(norm(name='depthwise_bn')(y))
    y = common.conv(self.features, 1, dtype=self.dtype, name='project_conv')(y)
    y = norm(zero=self.zero_init_residual and use_residual,
             name='project_bn')(y)
    if use_residual:
      y = y + x
    return y


class MobileNetV2(nn.Module):
  """MobileNetV2 classifier.

  Attributes:
    num_classes: number of output logits.
    small_input: stride-1 first conv (for 28-64 px inputs); the rest unchanged.
    width_multiplier: torchvision's ``width_mult``; widths rounded to
      multiples of 8, last conv ``1280 * max(1, width_multiplier)``.
    dropout_rate: dropout before the classifier (torchvision 0.2).
    dtype: compute dtype; params are float32, logits float32.
    bn_axis_name: ``axis_name`` of every BatchNorm.
    zero_init_residual: zero gamma of the last BN of residual blocks.
    bn_momentum: running-average decay (Flax convention).
    bn_epsilon: BatchNorm epsilon.
    freeze_bn: BatchNorm always uses (and keeps) its running statistics, also
      in training (a frozen backbone).
  """
  num_classes: int = 1000
  small_input: bool = False
  width_multiplier: float = 1.0
  dropout_rate: float = 0.2
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
      ``(B, num_classes)`` float32 logits, or ``(logits, embedding)`` with the
      ``(B, D)`` float32 pooled features (before dropout).
    """
    common.check_input(x, 'MobileNetV2')
    bn_train = train and not self.freeze_bn
    norm = lambda name: common.batch_norm(  # noqa: E731
        bn_train, dtype=self.dtype, momentum=self.bn_momentum,
        epsilon=self.bn_epsilon, axis_name=self.bn_axis_name, name=name)
    x = jnp.asarray(x, self.dtype)
    width = self.width_multiplier
    stem = common.make_divisible(32 * width)
    last = common.make_divisible(1280 * max(1.0, width))
    x = common.conv(stem, 3, strides=1 if self.small_input else 2,
                    dtype=self.dtype, name='stem_conv')(x)
    x = nn.relu6(norm('stem_bn')(x))
    index = 0
    for expand_ratio, channels, repeats, first_stride in (
        INVERTED_RESIDUAL_SETTING):
      features = common.make_divisible(channels * width)
      for i in range(repeats):
        x = InvertedResidual(
            features=features,
            strides=first_stride if i == 0 else 1,
            expand_ratio=expand_ratio,
            dtype=self.dtype,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            bn_axis_name=self.bn_axis_name,
            zero_init_residual=self.zero_init_residual,
            name=f'block{index}')(x, train=bn_train)
        index += 1
    x = common.conv(last, 1, dtype=self.dtype, name='head_conv')(x)
    x = nn.relu6(norm('head_bn')(x))
    return common.classifier_head(
        common.global_avg_pool(x), num_classes=self.num_classes,
        dropout_rate=self.dropout_rate, train=train, dtype=self.dtype,
        kernel_init=common.classifier_kernel_init, name='classifier',
        return_embedding=return_embedding)


def mobilenet_v2(num_classes: int = 1000, **options) -> MobileNetV2:
  """MobileNetV2 (width multiplier 1.0 by default)."""
  return MobileNetV2(num_classes=num_classes, **options)
