"""Model zoo: ResNet-18/34/50, MobileNetV2, VGG-19(-BN) and a tiny CNN.

Every model is a Flax linen module called as
``model.apply(variables, x, train=False, return_embedding=False)`` on
``(B, H, W, C)`` float images; it returns float32 logits ``(B, K)`` or
``(logits, embedding)``. Build one with ``create(name, num_classes, **options)``,
or a run's with ``from_config(config, num_classes)``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ols_jax.models import common
from ols_jax.models.mobilenet_v2 import InvertedResidual
from ols_jax.models.mobilenet_v2 import mobilenet_v2
from ols_jax.models.mobilenet_v2 import MobileNetV2
from ols_jax.models.resnet import BasicBlock
from ols_jax.models.resnet import Bottleneck
from ols_jax.models.resnet import resnet18
from ols_jax.models.resnet import resnet34
from ols_jax.models.resnet import resnet50
from ols_jax.models.resnet import ResNet
from ols_jax.models.tiny import tiny_cnn
from ols_jax.models.tiny import TinyCNN
from ols_jax.models.vgg import VGG
from ols_jax.models.vgg import vgg19
from ols_jax.models.vgg import vgg19_bn

_BUILDERS: Dict[str, Callable[..., nn.Module]] = {
    'resnet18': resnet18,
    'resnet34': resnet34,
    'resnet50': resnet50,
    'mobilenet_v2': mobilenet_v2,
    'vgg19': vgg19,
    'vgg19_bn': vgg19_bn,
    'tiny_cnn': tiny_cnn,
}

MODEL_NAMES = tuple(_BUILDERS)


def _normalise(name: Any) -> str:
  """Lower case without ``-``, ``_`` and spaces ('ResNet-18' -> 'resnet18')."""
  return ''.join(ch for ch in str(name).lower() if ch not in '-_ ')


_ALIASES = {_normalise(name): name for name in MODEL_NAMES}

# Options every model accepts (a model where one has no meaning ignores it).
OPTION_NAMES = ('small_input', 'width_multiplier', 'dropout_rate', 'dtype',
                'bn_axis_name', 'zero_init_residual', 'bn_momentum',
                'bn_epsilon', 'freeze_bn')

_SHARED_OPTIONS = ('small_input', 'width_multiplier', 'dropout_rate', 'dtype')
_BN_OPTIONS = ('bn_axis_name', 'bn_momentum', 'bn_epsilon', 'freeze_bn')
_RESIDUAL_OPTIONS = _SHARED_OPTIONS + _BN_OPTIONS + ('zero_init_residual',)

# The classifier layer of each model: what a backbone learning-rate multiplier
# or a frozen backbone leaves at the full learning rate.
HEAD_NAMES: Dict[str, str] = {
    'resnet18': 'fc', 'resnet34': 'fc', 'resnet50': 'fc',
    'mobilenet_v2': 'classifier', 'vgg19': 'fc2', 'vgg19_bn': 'fc2',
    'tiny_cnn': 'classifier',
}

# The options that change each model (the rest of OPTION_NAMES it ignores).
_USED_OPTIONS: Dict[str, tuple] = {
    'resnet18': _RESIDUAL_OPTIONS,
    'resnet34': _RESIDUAL_OPTIONS,
    'resnet50': _RESIDUAL_OPTIONS,
    'mobilenet_v2': _RESIDUAL_OPTIONS,
    'vgg19': _SHARED_OPTIONS,
    'vgg19_bn': _SHARED_OPTIONS + _BN_OPTIONS,
    'tiny_cnn': _SHARED_OPTIONS + _BN_OPTIONS,
}

# Canonical trainable parameter counts (224 px, 3 channels, 1000 classes),
# equal to torchvision's.
CANONICAL_PARAM_COUNTS = {
    'resnet18': 11_689_512,
    'resnet34': 21_797_672,
    'resnet50': 25_557_032,
    'mobilenet_v2': 3_504_872,
    'vgg19': 143_667_240,
    'vgg19_bn': 143_678_248,
}


class UnknownOptionError(TypeError, ValueError):
  """An option ``create`` does not know (both a TypeError and a ValueError)."""


def _check_options(name: str, options: Dict[str, Any]) -> None:
  """Validates option names and the obvious value ranges."""
  unknown = sorted(set(options) - set(OPTION_NAMES))
  if unknown:
    raise UnknownOptionError(
        f'unknown option(s) {unknown} for model {name!r}; valid options: '
        f'{", ".join(OPTION_NAMES)}')
  if 'dropout_rate' in options:
    rate = options['dropout_rate']
    if not 0.0 <= float(rate) < 1.0:
      raise ValueError(f'dropout_rate must be in [0, 1), got {rate}')
  if 'width_multiplier' in options and not float(
      options['width_multiplier']) > 0.0:
    raise ValueError(
        f'width_multiplier must be > 0, got {options["width_multiplier"]}')
  if 'bn_momentum' in options and not 0.0 <= float(
      options['bn_momentum']) < 1.0:
    raise ValueError(f'bn_momentum must be in [0, 1), got '
                     f'{options["bn_momentum"]}')


def _canonical(name: str) -> str:
  """The registry key of a model name; ValueError listing valid names."""
  key = _ALIASES.get(_normalise(name))
  if key is None:
    raise ValueError(
        f'unknown model {name!r}; valid names: {", ".join(MODEL_NAMES)}')
  return key


def used_options(name: str) -> tuple:
  """The options of ``OPTION_NAMES`` that change model ``name``.

  ``create`` accepts every option for every model; the others are ignored
  (e.g. ``zero_init_residual`` for a model without residual blocks).

  Args:
    name: one of ``MODEL_NAMES`` (case, ``-`` and ``_`` are ignored).

  Returns:
    A tuple of option names.

  Raises:
    ValueError: unknown ``name``.
  """
  return _USED_OPTIONS[_canonical(name)]


def create(name: str, num_classes: int, **options) -> nn.Module:
  """Builds a model of the zoo.

  Args:
    name: one of ``MODEL_NAMES`` (case, ``-`` and ``_`` are ignored).
    num_classes: number of output logits.
    **options: any of ``OPTION_NAMES``: ``small_input``, ``width_multiplier``,
      ``dropout_rate``, ``dtype``, ``bn_axis_name``, ``zero_init_residual``,
      ``bn_momentum``, ``bn_epsilon``.

  Returns:
    An unbound Flax module.

  Raises:
    ValueError: unknown ``name`` (the message lists valid names) or a bad
      value.
    UnknownOptionError: an unknown option (a ``TypeError`` and ``ValueError``).
  """
  key = _canonical(name)
  if isinstance(num_classes, bool) or int(num_classes) != num_classes or (
      num_classes < 1):
    raise ValueError(f'num_classes must be a positive int, got {num_classes}')
  _check_options(key, options)
  return _BUILDERS[key](num_classes=int(num_classes), **options)


def from_config(config: Any, num_classes: int,
                bn_axis_name: Optional[str] = None) -> nn.Module:
  """A run config's model, given only the options that model uses.

  Training builds its model here, and so does everything that restores a
  finished run (predict, a KD teacher).

  Args:
    config: a run config (``model``, ``small_input``, ``width_multiplier``,
      ``dtype``, ``dropout_rate`` (< 0: the model's default),
      ``zero_init_residual``, ``freeze_backbone``: BatchNorm statistics frozen).
    num_classes: number of output logits.
    bn_axis_name: the pmap axis that BatchNorm averages over, or None.

  Returns:
    An unbound Flax module (:func:`create`).
  """
  options = {'small_input': bool(config.small_input),
             'freeze_bn': bool(config.get('freeze_backbone', False)),
             'width_multiplier': float(config.width_multiplier),
             'dtype': jnp.bfloat16 if config.dtype == 'bfloat16' else jnp.float32,
             'zero_init_residual': bool(config.zero_init_residual),
             'bn_axis_name': bn_axis_name}
  if config.dropout_rate >= 0:
    options['dropout_rate'] = float(config.dropout_rate)
  used = used_options(config.model)
  return create(config.model, num_classes,
                **{k: v for k, v in options.items() if k in used})


def count_params(params: Any) -> int:
  """Total number of elements in a pytree of arrays or ``ShapeDtypeStruct``s.

  Args:
    params: e.g. ``variables['params']`` (from ``init`` or ``jax.eval_shape``).

  Returns:
    The number of scalars as a Python int.
  """
  return int(sum(int(np.prod(leaf.shape))
                 for leaf in jax.tree_util.tree_leaves(params)))


__all__ = [
    'BasicBlock', 'Bottleneck', 'CANONICAL_PARAM_COUNTS', 'HEAD_NAMES', 'InvertedResidual',
    'MODEL_NAMES',
    'MobileNetV2', 'OPTION_NAMES', 'ResNet', 'TinyCNN', 'UnknownOptionError',
    'VGG', 'common', 'count_params', 'create', 'from_config', 'mobilenet_v2',
    'resnet18',
    'resnet34', 'resnet50', 'tiny_cnn', 'used_options', 'vgg19', 'vgg19_bn',
]
