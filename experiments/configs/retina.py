"""Retinal fundus photos (RetinaMNIST), 5 DR grades at CPU scale (28 px, ResNet-18 width 0.25 small-input stem by default).

Run:
  python experiments/radimagenet.py --config=experiments/configs/retina.py \
      --workdir=runs/retina_ols
Other backbones: --config.model=mobilenet_v2|vgg19_bn (--config.width_multiplier=...).
Variants: ``short`` (12 epochs, as the earlier study ran).
"""

from ols_jax.config import apply_variant, cpu_config


VARIANTS = {"short": {"num_epochs": 12}}


def get_config(variant: str = ""):
  return apply_variant(cpu_config("retinamnist", image_size=28, channels=3, num_epochs=20), variant, VARIANTS)
