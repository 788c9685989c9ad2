"""Seconds-long end-to-end run for tests: tiny CNN on 28 px brain MRI.

Run:
  python experiments/radimagenet.py --config=experiments/configs/smoke.py \
      --workdir=runs/smoke
Uses a 512-image subset-sized budget by running 2 short epochs on the full
(4,781 image) train split at batch 128 with a tiny model.
"""

from ols_jax.config import base_config


def get_config():
  c = base_config()
  c.dataset = "brain_tumor_mri"
  c.image_size = 28
  c.channels = 1
  c.model = "tiny_cnn"
  c.method = "ols"
  c.num_epochs = 2
  c.batch_size = 128
  c.eval_batch_size = 256
  c.learning_rate = 0.05
  c.log_every_steps = 10
  c.tsne_samples = 300
  return c
