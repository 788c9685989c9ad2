"""Breast ultrasound (BreastMNIST), binary, at CPU scale (28 px, ResNet-18 w0.25).

Run:
  python experiments/radimagenet.py --config=experiments/configs/breast_us.py \
      --workdir=runs/breast_us_ols
"""

from ols_jax.config import cpu_config


def get_config():
  c = cpu_config("breastmnist", image_size=28, channels=1, num_epochs=20)
  c.batch_size = 64
  return c
