"""RadMix: multi-anatomy radiology mix (MR, CT, XR, US), 75 classes at CPU scale (28 px, ResNet-18 width 0.25 small-input stem by default).

Run:
  python experiments/radimagenet.py --config=experiments/configs/radmix.py \
      --workdir=runs/radmix_ols
Other backbones: --config.model=mobilenet_v2|vgg19_bn (--config.width_multiplier=...).
Variants: ``short`` (4 epochs, the earlier under-fitted study); the default (15 epochs) is the
tuned comparison of experiments/sweeps.py.
"""

from ols_jax.config import apply_variant, cpu_config


VARIANTS = {"short": {"num_epochs": 4}}


def get_config(variant: str = ""):
  return apply_variant(cpu_config("radmix", image_size=28, channels=1, num_epochs=15), variant, VARIANTS)
