"""Any MedMNIST 2D subset by name, through the `medmnist` TFDS builder.

Run (offline: put the official npz, e.g. dermamnist.npz, into MANUAL_DIR):
  python experiments/radimagenet.py --config=experiments/configs/medmnist.py:dermamnist \
      --workdir=runs/dermamnist_ols --config.manual_dir=MANUAL_DIR \
      --config.data_dir=~/tensorflow_datasets
The argument after ':' is the subset (default pathmnist); size with
--config.image_size=28|64|128|224 (the builder config `<subset>_<size>`).
"""

from ols_jax.config import cpu_config
from ols_jax.data import medmnist_info


def get_config(subset: str = "pathmnist"):
  info = medmnist_info.SUBSETS.get(subset)
  channels = info.channels if info is not None else 3
  c = cpu_config(f"medmnist/{subset}", image_size=28, channels=channels, num_epochs=15)
  return c
