"""Brain MRI, 44 classes (tumour type x sequence) at CPU scale (28 px, ResNet-18 width 0.25 small-input stem by default).

Run:
  python experiments/radimagenet.py --config=experiments/configs/brain_tumor_44.py \
      --workdir=runs/brain_tumor_44_ols
Other backbones: --config.model=mobilenet_v2|vgg19_bn (--config.width_multiplier=...).
Variants: ``fitted`` (15 epochs, the calibration-verdict cell of experiments/sweeps.py).
"""

from ols_jax.config import apply_variant, cpu_config

VARIANTS = {"fitted": {"num_epochs": 15}}


def get_config(variant: str = ""):
  return apply_variant(cpu_config("brain_tumor_44", image_size=28, channels=1, num_epochs=8),
                       variant, VARIANTS)
