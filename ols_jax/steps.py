"""The pure train step and the OLS epoch boundary (the evaluation forward pass
is :func:`ols_jax.inference.eval_step`, which needs no loss code).

The same functions run on one device, under ``jax.jit`` with a sharded batch
(pass ``axis_name=None``; XLA inserts the collectives) and under ``jax.pmap``
(pass the pmap ``axis_name``; gradients, metrics and loss normalisers are
summed across devices explicitly).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

from ols_jax import losses
from ols_jax import ols
from ols_jax import ops
from ols_jax.train_state import TrainState


def _psum(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def train_step(state: TrainState, batch: dict[str, jax.Array],
               teacher_variables: Any = None, *, spec: losses.LossSpec,
               teacher_apply: Optional[Callable[..., Any]] = None,
               axis_name: Optional[str] = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimiser update, plus the OLS accumulation of the same forward pass.

  Args:
    state: the current :class:`TrainState`.
    batch: ``image (B,H,W,C)``, ``label (B,)`` and optional ``mask (B,)``.
    teacher_variables: variables of the KD teacher (``kd`` only).
    spec: the loss description (static).
    teacher_apply: the teacher's ``apply`` (static, ``kd`` only).
    axis_name: the pmap axis name, or None on one device / under jit sharding.

  Returns:
    ``(new_state, metrics)`` where metrics are on-device sums over the (global)
    batch: ``loss_sum``, ``correct``, ``count``, and ``grad_norm``.

  References:
    Zhang et al., "Delving Deep into Label Smoothing", IEEE TIP 2021, Alg. 1.
  """
  images, labels = batch["image"], batch["label"].astype(jnp.int32)
  mask = ops.valid_mask(batch["label"].shape, batch.get("mask"))
  count = _psum(jnp.sum(mask), axis_name)
  rng = jax.random.fold_in(state.rng, state.step)
  if axis_name is not None:
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  teacher_logits = None
  if spec.needs_teacher:
    teacher_logits = teacher_apply(teacher_variables, images, train=False)

  def loss_fn(params):
    logits, updates = state.apply_fn(
        state.variables(params), images, train=True,
        mutable=["batch_stats"], rngs={"dropout": rng})
    per_example = losses.per_example_loss(
        spec, logits, labels, soft_labels=state.ols.soft_labels,
        teacher_logits=teacher_logits) * mask
    loss_sum = jnp.sum(per_example)
    return loss_sum / jnp.maximum(count, 1.0), (logits, updates, loss_sum)

  grads, (logits, updates, loss_sum) = jax.grad(
      loss_fn, has_aux=True)(state.params)
  grads = _psum(grads, axis_name)
  opt_updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, opt_updates)
  new_ols = state.ols
  if spec.uses_ols:
    # Per device under pmap; summed once at the epoch boundary.
    new_ols = ols.accumulate(state.ols, logits, labels, mask)

  # Same as argmax(logits) == labels, without XLA CPU's slow variadic argmax.
  correct = ols.label_is_argmax(logits, labels).astype(jnp.float32) * mask
  metrics = {
      "loss_sum": _psum(loss_sum, axis_name),
      "correct": _psum(jnp.sum(correct), axis_name),
      "count": count,
      "grad_norm": optax.tree.norm(grads),
  }
  new_state = state.replace(
      step=state.step + 1, params=params, opt_state=opt_state, ols=new_ols,
      batch_stats=updates.get("batch_stats", state.batch_stats))
  return new_state, metrics


def epoch_boundary(state: TrainState, *, freeze_threshold: Optional[float] = None,
                   momentum: float = 0.0,
                   axis_name: Optional[str] = None) -> TrainState:
  """Turns the epoch's OLS sums into the next soft labels.

  Under pmap the per-device sums and counts are summed first, so every replica
  gets the same ``S``.

  Args:
    state: the state at the end of an epoch.
    freeze_threshold: OLS freeze rule (None = off).
    momentum: OLS momentum on S (0 = OLS exactly; see ``ols.next_soft_labels``).
    axis_name: pmap axis name or None.

  Returns:
    The state with the new ``S`` and zeroed accumulators.
  """
  acc = state.ols
  if axis_name is not None:
    acc = acc.replace(prob_sums=jax.lax.psum(acc.prob_sums, axis_name),
                      counts=jax.lax.psum(acc.counts, axis_name))
  return state.replace(ols=ols.next_soft_labels(acc, freeze_threshold, momentum))
