"""The paper's setting: RadImageNet at 224 px, ResNet-50, SGD with momentum.

Run (after building RadImageNet, see docs/DATA.md):
  python experiments/radimagenet.py --config=experiments/configs/radimagenet.py \
      --workdir=runs/radimagenet_resnet50_ols \
      --config.manual_dir=/data/radimagenet_raw --config.data_dir=/data/tfds
Switch the backbone with --config.model=mobilenet_v2 or --config.model=vgg19_bn,
the method with --config.method=ce|ls|ls_kminus1|tfkd_reg|tfkd_paper|kd|ols.

Schedule: 30 epochs, batch 256, lr 0.1 (linear warm-up over 1 epoch) with
cosine decay, weight decay 1e-4, momentum 0.9; bfloat16 compute on
accelerators (float32 parameters, loss and OLS statistics).
"""

from ols_jax.config import base_config


def get_config():
  c = base_config()
  c.dataset = "radimagenet"
  c.image_size = 224
  c.channels = 3
  c.augment = "rrc_flip"
  c.model = "resnet50"
  c.small_input = False
  c.dtype = "bfloat16"
  c.method = "ols"
  c.alpha = 0.5
  c.num_epochs = 30
  c.batch_size = 256
  c.eval_batch_size = 512
  c.learning_rate = 0.1
  c.warmup_epochs = 1.0
  c.schedule = "cosine"
  c.weight_decay = 1e-4
  c.num_workers = 8
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2000
  return c
