"""Chest CT, 4 lung-cancer classes at CPU scale (28 px, ResNet-18 width 0.25 small-input stem by default).

Run:
  python experiments/radimagenet.py --config=experiments/configs/chest_ct.py \
      --workdir=runs/chest_ct_ols
Other backbones: --config.model=mobilenet_v2|vgg19_bn (--config.width_multiplier=...).
Variants (``--config=experiments/configs/chest_ct.py:px64``): ``px64`` (the 64 px file).
"""

from ols_jax.config import apply_variant, cpu_config

VARIANTS = {"px64": {"image_size": 64}}


def get_config(variant: str = ""):
  return apply_variant(cpu_config("chest_ct", image_size=28, channels=1, num_epochs=20),
                       variant, VARIANTS)
