"""The evaluation forward pass: no loss, no OLS accumulation, no state change.

Kept apart from :mod:`ols_jax.steps` so that inference (``predict``, ``shift``,
the final evaluation) imports no loss code. Runs on one device, under
``jax.jit`` with a sharded batch (``axis_name=None``) and under ``jax.pmap``.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from ols_jax import metrics as metrics_lib
from ols_jax import ops
from ols_jax.train_state import TrainState


def _psum(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def eval_step(state: TrainState, batch: dict[str, jax.Array], *,
              num_bins: int = 15, axis_name: Optional[str] = None,
              with_outputs: bool = True
              ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """Evaluation forward pass (no OLS accumulation, no state change).

  Args:
    state: the :class:`TrainState`.
    batch: ``image``, ``label`` and ``mask`` (padding rows have mask 0).
    num_bins: calibration bins.
    axis_name: pmap axis name or None.
    with_outputs: also return per-example logits and embeddings.

  Returns:
    ``(sums, outputs)``: metric sums (see :func:`ols_jax.metrics.eval_sums`)
    and ``{'logits', 'embedding'}`` per example (empty if not requested).
  """
  labels = batch["label"].astype(jnp.int32)
  mask = ops.valid_mask(batch["label"].shape, batch.get("mask"))
  logits, embedding = state.apply_fn(state.variables(), batch["image"],
                                     train=False, return_embedding=True)
  sums = metrics_lib.eval_sums(logits, labels, mask, num_bins=num_bins)
  sums = _psum(sums, axis_name)
  outputs = {}
  if with_outputs:
    outputs = {"logits": logits.astype(jnp.float32),
               "embedding": embedding.astype(jnp.float32)}
  return sums, outputs
