"""Brain MRI, 44 classes (tumour type x sequence) at CPU scale (28 px, ResNet-18 width 0.25 small-input stem by default).

Run:
  python experiments/radimagenet.py --config=experiments/configs/brain_tumor_44.py \
      --workdir=runs/brain_tumor_44_ols
Other backbones: --config.model=mobilenet_v2|vgg19_bn (--config.width_multiplier=...).
"""

from ols_jax.config import cpu_config


def get_config():
  return cpu_config("brain_tumor_44", image_size=28, channels=1, num_epochs=8)
