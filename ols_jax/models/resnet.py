"""ResNet v1.5 (torchvision layout) in Flax linen.

References:
  He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition",
  CVPR 2016.
  torchvision.models.resnet (v1.5: the stride sits in the 3x3 conv of the
  bottleneck).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Type

import flax.linen as nn
import jax
import jax.numpy as jnp

from ols_jax.models import common

Dtype = Any


class BasicBlock(nn.Module):
  """Two 3x3 convs with an identity (or 1x1 projection) shortcut.

  Attributes:
    features: width of the block (output channels = ``features``).
    strides: stride of the first 3x3 conv and of the projection.
  """
  features: int
  strides: int = 1
  dtype: Dtype = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_axis_name: Optional[str] = None
  zero_init_residual: bool = False

  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = lambda zero=False, name=None: common.batch_norm(  # noqa: E731
        train, dtype=self.dtype, momentum=self.bn_momentum,
        epsilon=self.bn_epsilon, axis_name=self.bn_axis_name, zero_init=zero,
        name=name)
    residual = x
    y = common.conv(self.features, 3, strides=self.strides, dtype=self.dtype,
                    name='conv1')(x)
    y = nn.relu(norm(name='bn1')(y))
    y = common.conv(self.features, 3, dtype=self.dtype, name='conv2')(y)
    y = norm(zero=self.zero_init_residual, name='bn2')(y)
    if residual.shape != y.shape:
      residual = common.conv(self.features, 1, strides=self.strides,
                             dtype=self.dtype, name='downsample_conv')(x)
      residual = norm(name='downsample_bn')(residual)
    return nn.relu(y + residual)


class Bottleneck(nn.Module):
  """1x1 reduce, 3x3 (strided, v1.5), 1x1 expand by 4, with shortcut.

  Attributes:
    features: bottleneck width; the block outputs ``4 * features`` channels.
    strides: stride of the 3x3 conv and of the projection.
  """
  features: int
  strides: int = 1
  dtype: Dtype = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_axis_name: Optional[str] = None
  zero_init_residual: bool = False

  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = lambda zero=False, name=None: common.batch_norm(  # noqa: E731
        train, dtype=self.dtype, momentum=self.bn_momentum,
        epsilon=self.bn_epsilon, axis_name=self.bn_axis_name, zero_init=zero,
        name=name)
    out_features = self.features * self.expansion
    residual = x
    y = common.conv(self.features, 1, dtype=self.dtype, name='conv1')(x)
    y = nn.relu(norm(name='bn1')(y))
    y = common.conv(self.features, 3, strides=self.strides, dtype=self.dtype,
                    name='conv2')(y)
    y = nn.relu(norm(name='bn2')(y))
    y = common.conv(out_features, 1, dtype=self.dtype, name='conv3')(y)
    y = norm(zero=self.zero_init_residual, name='bn3')(y)
    if residual.shape != y.shape:
      residual = common.conv(out_features, 1, strides=self.strides,
                             dtype=self.dtype, name='downsample_conv')(x)
      residual = norm(name='downsample_bn')(residual)
    return nn.relu(y + residual)


class ResNet(nn.Module):
  """ResNet v1.5 classifier.

  Attributes:
    stage_sizes: number of blocks in each of the four stages.
    block_cls: ``BasicBlock`` or ``Bottleneck``.
    num_classes: number of output logits.
    small_input: 3x3 stride-1 stem and no max-pool (for 28-64 px inputs).
    width_multiplier: scales every width (64, 128, 256, 512 base widths).
    dropout_rate: dropout before ``fc`` (default 0: none, as torchvision).
    dtype: compute dtype; params are float32, logits float32.
    bn_axis_name: ``axis_name`` of every BatchNorm (cross-device stats).
    zero_init_residual: zero gamma of the last BN of every block.
    bn_momentum: running-average decay (Flax convention, 0.9 = torch 0.1).
    bn_epsilon: BatchNorm epsilon.
    freeze_bn: BatchNorm always uses (and keeps) its running statistics, also
      in training (a frozen backbone).
  """
  stage_sizes: Sequence[int]
  block_cls: Type[nn.Module]
  num_classes: int = 1000
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
      train: batch statistics (and their update) instead of running averages;
        dropout (if any) active, drawing from the ``'dropout'`` rng.
      return_embedding: also return the globally pooled features.

    Returns:
      ``(B, num_classes)`` float32 logits, or ``(logits, embedding)`` with the
      ``(B, D)`` float32 pooled features fed to the final Dense.
    """
    common.check_input(x, 'ResNet')
    x = jnp.asarray(x, self.dtype)
    stem = common.scale_width(64, self.width_multiplier)
    if self.small_input:
      x = common.conv(stem, 3, dtype=self.dtype, name='conv1')(x)
    else:
      x = common.conv(stem, 7, strides=2, dtype=self.dtype, name='conv1')(x)
    bn_train = train and not self.freeze_bn
    x = common.batch_norm(bn_train, dtype=self.dtype, momentum=self.bn_momentum,
                          epsilon=self.bn_epsilon,
                          axis_name=self.bn_axis_name, name='bn1')(x)
    x = nn.relu(x)
    if not self.small_input:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, num_blocks in enumerate(self.stage_sizes):
      features = common.scale_width(64 * 2**stage, self.width_multiplier)
      for block in range(num_blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = self.block_cls(
            features=features,
            strides=strides,
            dtype=self.dtype,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            bn_axis_name=self.bn_axis_name,
            zero_init_residual=self.zero_init_residual,
            name=f'layer{stage + 1}_{block}')(x, train=bn_train)
    return common.classifier_head(
        common.global_avg_pool(x), num_classes=self.num_classes,
        dropout_rate=self.dropout_rate, train=train, dtype=self.dtype,
        kernel_init=common.torch_linear_kernel_init, name='fc',
        return_embedding=return_embedding)


def resnet18(num_classes: int = 1000, **options) -> ResNet:
  """ResNet-18 (basic blocks, stages 2-2-2-2)."""
  return ResNet(stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock,
                num_classes=num_classes, **options)


def resnet34(num_classes: int = 1000, **options) -> ResNet:
  """ResNet-34 (basic blocks, stages 3-4-6-3)."""
  return ResNet(stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock,
                num_classes=num_classes, **options)


def resnet50(num_classes: int = 1000, **options) -> ResNet:
  """ResNet-50 v1.5 (bottleneck blocks, stages 3-4-6-3)."""
  return ResNet(stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck,
                num_classes=num_classes, **options)
