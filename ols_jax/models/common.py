"""Helpers shared by the model zoo: initialisers, channel rounding, pooling."""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

# Kaiming/He normal with fan_out, as torchvision initialises its convolutions.
# For a Flax kernel (kh, kw, in, out) fan_out = kh * kw * out, like PyTorch's
# (out, in, kh, kw); for depthwise kernels (kh, kw, 1, C) both give kh * kw * C.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

# PyTorch's default nn.Linear weight init, kaiming_uniform(a=sqrt(5)), is
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)) = variance_scaling(1/3, fan_in, uniform).
torch_linear_kernel_init = nn.initializers.variance_scaling(
    1.0 / 3.0, 'fan_in', 'uniform')

# torchvision VGG / MobileNetV2 classifiers: N(0, 0.01), zero bias.
classifier_kernel_init = nn.initializers.normal(stddev=0.01)


def make_divisible(value: float, divisor: int = 8,
                   min_value: Optional[int] = None) -> int:
  """Rounds a channel count to a multiple of ``divisor`` like torchvision.

  Args:
    value: the unrounded channel count.
    divisor: the multiple to round to.
    min_value: lower bound; defaults to ``divisor``.

  Returns:
    The nearest multiple of ``divisor`` (never below ``min_value``), bumped up
    by one ``divisor`` if rounding lost more than 10% of ``value``.
  """
  if min_value is None:
    min_value = divisor
  new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
  if new_value < 0.9 * value:
    new_value += divisor
  return int(new_value)


def scale_width(channels: int, multiplier: float) -> int:
  """``round(channels * multiplier)``, at least 1 (ResNet / VGG widths)."""
  if multiplier == 1.0:
    return int(channels)
  return max(1, int(round(channels * multiplier)))


def torch_padding(kernel_size: int) -> Tuple[Tuple[int, int], Tuple[int, int]]:
  """Symmetric ``(k - 1) // 2`` padding, as PyTorch's ``padding=k // 2``.

  Flax's ``'SAME'`` pads asymmetrically for stride 2 on even inputs; explicit
  symmetric padding gives torchvision's output sizes and receptive fields.
  """
  pad = (kernel_size - 1) // 2
  return ((pad, pad), (pad, pad))


def batch_norm(train: bool, *, dtype: Dtype, momentum: float, epsilon: float,
               axis_name: Optional[str], zero_init: bool = False,
               name: Optional[str] = None) -> nn.BatchNorm:
  """A BatchNorm with gamma 1 (or 0) and beta 0; batch stats in train mode."""
  return nn.BatchNorm(
      use_running_average=not train,
      momentum=momentum,
      epsilon=epsilon,
      dtype=dtype,
      param_dtype=jnp.float32,
      axis_name=axis_name,
      scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones,
      bias_init=nn.initializers.zeros,
      name=name)


def conv(features: int, kernel_size: int, *, strides: int = 1,
         use_bias: bool = False, groups: int = 1, dtype: Dtype = jnp.float32,
         name: Optional[str] = None) -> nn.Conv:
  """A square convolution with torchvision padding and initialisation."""
  return nn.Conv(
      features=features,
      kernel_size=(kernel_size, kernel_size),
      strides=(strides, strides),
      padding=torch_padding(kernel_size),
      feature_group_count=groups,
      use_bias=use_bias,
      dtype=dtype,
      param_dtype=jnp.float32,
      kernel_init=conv_kernel_init,
      bias_init=nn.initializers.zeros,
      name=name)


@functools.lru_cache(maxsize=None)
def _adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
  """``(out_size, in_size)`` averaging matrix with torchvision's bin rule."""
  matrix = np.zeros((out_size, in_size), np.float32)
  for i in range(out_size):
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)  # ceil((i + 1) * in / out)
    matrix[i, start:end] = 1.0 / (end - start)
  return matrix


def adaptive_avg_pool2d(x: jax.Array,
                        output_size: Sequence[int] | int) -> jax.Array:
  """Adaptive average pooling over the spatial axes of NHWC ``x``.

  Bin ``i`` of an axis of length ``n`` pooled to ``m`` covers
  ``[floor(i * n / m), ceil((i + 1) * n / m))``, as ``torch.nn.AdaptiveAvgPool2d``;
  for ``n < m`` input values are replicated.

  Args:
    x: ``(B, H, W, C)`` array.
    output_size: ``(oh, ow)`` or a single int for both.

  Returns:
    ``(B, oh, ow, C)`` array of the dtype of ``x``.
  """
  if isinstance(output_size, int):
    output_size = (output_size, output_size)
  out_h, out_w = (int(s) for s in output_size)
  _, height, width, _ = x.shape
  if height == 0 or width == 0:
    raise ValueError(f'adaptive_avg_pool2d got an empty feature map {x.shape}')
  if (height, width) == (out_h, out_w):
    return x
  if height % out_h == 0 and width % out_w == 0:
    # Bins are disjoint and equal: a plain reshape-mean is exact and cheaper.
    b, _, _, c = x.shape
    x = x.reshape(b, out_h, height // out_h, out_w, width // out_w, c)
    return jnp.mean(x, axis=(2, 4), dtype=jnp.float32).astype(x.dtype)
  pool_h = jnp.asarray(_adaptive_pool_matrix(height, out_h))
  pool_w = jnp.asarray(_adaptive_pool_matrix(width, out_w))
  y = jnp.einsum('oh,bhwc->bowc', pool_h, x.astype(jnp.float32))
  y = jnp.einsum('pw,bowc->bopc', pool_w, y)
  return y.astype(x.dtype)


def global_avg_pool(x: jax.Array) -> jax.Array:
  """Mean over H and W of NHWC ``x``, accumulated and returned in float32."""
  return jnp.mean(x, axis=(1, 2), dtype=jnp.float32)


def check_input(x: jax.Array, model: str) -> None:
  """Raises ``ValueError`` unless ``x`` is a 4-D ``(B, H, W, C)`` array."""
  if x.ndim != 4:
    raise ValueError(f'{model} expects (B, H, W, C) input, got shape {x.shape}')



def classifier_head(embedding: jax.Array, *, num_classes: int, dropout_rate: float,
                    train: bool, dtype: Dtype, kernel_init, name: str,
                    return_embedding: bool):
  """Dropout (train only) + Dense on the pooled embedding; float32 logits.

  Called from inside a parent's ``nn.compact`` method, so the Dense and
  Dropout become the parent's submodules (param names ``name``/kernel|bias).

  Returns:
    logits, or ``(logits, embedding)`` when ``return_embedding``.
  """
  y = embedding
  if dropout_rate > 0.0:
    y = nn.Dropout(dropout_rate, deterministic=not train)(y)
  logits = nn.Dense(num_classes, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=kernel_init, bias_init=nn.initializers.zeros,
                    name=name)(y)
  logits = jnp.asarray(logits, jnp.float32)
  return (logits, embedding) if return_embedding else logits
