"""MedMNIST TFDS builder (registered as ``medmnist`` on import)."""

from ols_jax.data.medmnist.medmnist_dataset_builder import Builder

__all__ = ["Builder"]
