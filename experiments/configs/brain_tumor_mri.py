"""Brain MRI, 4 classes (glioma, meningioma, no tumour, pituitary) at CPU scale (28 px, ResNet-18 width 0.25 small-input stem by default).

Run:
  python experiments/radimagenet.py --config=experiments/configs/brain_tumor_mri.py \
      --workdir=runs/brain_tumor_mri_ols
Other backbones: --config.model=mobilenet_v2|vgg19_bn (--config.width_multiplier=...).
Variants (``--config=experiments/configs/brain_tumor_mri.py:short``): ``short`` (4 epochs),
``long`` (20 epochs, no augmentation: train accuracy reaches 100%), ``ten_epochs``.
"""

from ols_jax.config import apply_variant, cpu_config


VARIANTS = {
    "short": {"num_epochs": 4},
    "long": {"num_epochs": 20, "augment": "none"},
    "ten_epochs": {"num_epochs": 10},
}


def get_config(variant: str = ""):
  return apply_variant(cpu_config("brain_tumor_mri", image_size=28, channels=1, num_epochs=15), variant, VARIANTS)
