"""Abdominal CT organs (OrganAMNIST), 11 classes at CPU scale (28 px, ResNet-18 width 0.25 small-input stem by default).

Run:
  python experiments/radimagenet.py --config=experiments/configs/organamnist.py \
      --workdir=runs/organamnist_ols
Other backbones: --config.model=mobilenet_v2|vgg19_bn (--config.width_multiplier=...).
Variants: ``short`` (2 epochs, the earlier under-fitted study), ``converged`` (10 epochs).
"""

from ols_jax.config import apply_variant, cpu_config


VARIANTS = {"short": {"num_epochs": 2}, "converged": {"num_epochs": 10}}


def get_config(variant: str = ""):
  return apply_variant(cpu_config("organamnist", image_size=28, channels=1, num_epochs=8), variant, VARIANTS)
