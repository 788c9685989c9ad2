"""Datasets and input pipelines for ols_jax.

Importing this package registers the TFDS builders ``radimagenet`` and
``medmnist`` (no TensorFlow needed).
"""

from ols_jax.data import medmnist  # Registers the `medmnist` builder.
from ols_jax.data import radimagenet  # Registers the `radimagenet` builder.
from ols_jax.data.augment import AUGMENTATIONS
from ols_jax.data.augment import FLIPPING
from ols_jax.data.datasets import calibration_split
from ols_jax.data.datasets import Dataset
from ols_jax.data.datasets import dataset_names
from ols_jax.data.datasets import DatasetInfo
from ols_jax.data.datasets import load_dataset
from ols_jax.data.datasets import load_for_config
from ols_jax.data.errors import DataError
from ols_jax.data.laterality import flip_label_map
from ols_jax.data.pipeline import eval_iterator
from ols_jax.data.pipeline import steps_per_epoch
from ols_jax.data.pipeline import train_iterator

__all__ = [
    "AUGMENTATIONS", "DataError", "calibration_split", "Dataset", "DatasetInfo", "FLIPPING",
    "dataset_names", "eval_iterator", "flip_label_map", "load_dataset", "load_for_config",
    "steps_per_epoch", "train_iterator",
]
