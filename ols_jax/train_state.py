"""The immutable training state: params, BatchNorm statistics, optimiser state,
the OLS soft labels and accumulators, the step and an RNG key."""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from ols_jax import ols


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training, as one pytree.

  Attributes:
    step: scalar int32, number of optimiser updates done.
    params: model parameters (float32).
    batch_stats: BatchNorm running statistics (``{}`` for models without BN).
    opt_state: optax state.
    ols: :class:`ols_jax.ols.OLSState` (S, per-class sums and counts).
    rng: PRNG key (raw uint32) from which per-step dropout keys are folded.
    apply_fn: the model's ``apply`` (static).
    tx: the optax transformation (static).
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ols: ols.OLSState
  rng: jax.Array
  apply_fn: Callable[..., Any] = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  def variables(self, params=None) -> dict[str, Any]:
    """The variable dict for ``apply_fn``."""
    out = {"params": self.params if params is None else params}
    if self.batch_stats:
      out["batch_stats"] = self.batch_stats
    return out


def create(model, tx: optax.GradientTransformation, *, input_shape,
           num_classes: int, rng: jax.Array, ols_init: str = "uniform",
           ols_eps: float = 0.1) -> TrainState:
  """Initialises a :class:`TrainState`.

  Args:
    model: a linen module called as ``model(x, train=...)``.
    tx: optax transformation.
    input_shape: ``(H, W, C)`` of one example.
    num_classes: ``K``.
    rng: PRNG key; split into the init key and the state's key.
    ols_init: initial soft labels (see :func:`ols_jax.ols.init`).
    ols_eps: eps for ``ols_init="label_smoothing"``.

  Returns:
    The initial state (step 0).
  """
  init_rng, state_rng = jax.random.split(rng)
  variables = jax.jit(lambda r: model.init(
      {"params": r, "dropout": r}, jnp.zeros((1, *input_shape), jnp.float32),
      train=False))(init_rng)
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=batch_stats,
      opt_state=tx.init(params),
      ols=ols.init(num_classes, ols_init, ols_eps),
      rng=state_rng,
      apply_fn=model.apply,
      tx=tx,
  )
