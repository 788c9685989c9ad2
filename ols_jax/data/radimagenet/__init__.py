"""RadImageNet TFDS builder (registered as ``radimagenet`` on import)."""

from ols_jax.data.radimagenet.radimagenet_dataset_builder import Builder

__all__ = ["Builder"]
