"""Chest CT, 4 lung-cancer classes at CPU scale (28 px, ResNet-18 width 0.25 small-input stem by default).

Run:
  python experiments/radimagenet.py --config=experiments/configs/chest_ct.py \
      --workdir=runs/chest_ct_ols
Other backbones: --config.model=mobilenet_v2|vgg19_bn (--config.width_multiplier=...).
"""

from ols_jax.config import cpu_config


def get_config():
  return cpu_config("chest_ct", image_size=28, channels=1, num_epochs=20)
