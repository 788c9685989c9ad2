"""Brain MRI, 4 dementia stages (Alzheimer MRI) at CPU scale (28 px, ResNet-18 width 0.25 small-input stem by default).

Run:
  python experiments/radimagenet.py --config=experiments/configs/alzheimer_mri.py \
      --workdir=runs/alzheimer_mri_ols
Other backbones: --config.model=mobilenet_v2|vgg19_bn (--config.width_multiplier=...).
"""

from ols_jax.config import cpu_config


def get_config():
  return cpu_config("alzheimer_mri", image_size=28, channels=1, num_epochs=5)
