"""Online Label Smoothing (OLS) as pure, jit-able JAX functions.

Conventions: ``K`` classes; ``S`` is a ``(K, K)`` matrix whose **row c** is the
soft target for samples whose true class is ``c``.

During an epoch, every *correctly classified*, valid training sample adds its
softmax vector to ``prob_sums[label]`` and 1 to ``counts[label]``. At the epoch
boundary each row of ``S`` becomes the mean of those vectors; a class without a
correct sample gets the uniform row ``1/K``. The training loss mixes the hard
label with the row of ``S`` that was frozen at the start of the epoch.

References:
  Zhang, Chang-Bin et al., "Delving Deep into Label Smoothing",
  IEEE Transactions on Image Processing 30 (2021), 5984-5996.
  arXiv 2510.20011 (OLS on RadImageNet).
"""

from __future__ import annotations

from typing import Optional

import chex
import flax.struct
import jax
import jax.numpy as jnp

from ols_jax import ops

INITS = ("uniform", "zeros", "label_smoothing")


@flax.struct.dataclass
class OLSState:
  """Soft-label matrix and the running sums of the current epoch.

  Attributes:
    soft_labels: ``(K, K)`` float32; row ``c`` is the soft target of class ``c``
      used throughout the current epoch.
    prob_sums: ``(K, K)`` float32; sum of softmax vectors of correctly
      classified training samples of each true class, this epoch.
    counts: ``(K,)`` float32; number of such samples per true class.
  """

  soft_labels: jax.Array
  prob_sums: jax.Array
  counts: jax.Array

  @property
  def num_classes(self) -> int:
    return self.soft_labels.shape[-1]


def initial_soft_labels(num_classes: int, init: str = "uniform",
                        eps: float = 0.1) -> jax.Array:
  """The soft-label matrix used in the first epoch.

  Args:
    num_classes: number of classes ``K`` (>= 2).
    init: ``"uniform"`` (every entry ``1/K``; the seed paper's choice),
      ``"zeros"`` (the official CIFAR/ImageNet code: no soft term in the first
      epoch) or ``"label_smoothing"`` (``1 - eps`` on the diagonal and
      ``eps / (K - 1)`` elsewhere).
    eps: smoothing mass for ``"label_smoothing"``, in ``[0, 1]``.

  Returns:
    A ``(K, K)`` float32 matrix.
  """
  if not isinstance(num_classes, int) or num_classes < 2:
    raise ValueError(f"num_classes: expected an integer >= 2, got {num_classes!r}")
  if init == "uniform":
    return jnp.full((num_classes, num_classes), 1.0 / num_classes, jnp.float32)
  if init == "zeros":
    return jnp.zeros((num_classes, num_classes), jnp.float32)
  if init == "label_smoothing":
    if not 0.0 <= eps <= 1.0:
      raise ValueError(f"eps: expected a value in [0, 1], got {eps!r}")
    off = eps / (num_classes - 1)
    eye = jnp.eye(num_classes, dtype=jnp.float32)
    return eye * (1.0 - eps) + (1.0 - eye) * off
  raise ValueError(f"init: expected one of {', '.join(INITS)}, got {init!r}")


def init(num_classes: int, init: str = "uniform", eps: float = 0.1) -> OLSState:  # pylint: disable=redefined-outer-name
  """Creates the OLS state for the first epoch.

  Args:
    num_classes: number of classes ``K``.
    init: initial soft labels, see :func:`initial_soft_labels`.
    eps: smoothing mass for ``init="label_smoothing"``.

  Returns:
    An :class:`OLSState` with the initial ``S`` and zeroed accumulators.

  References:
    Zhang et al., "Delving Deep into Label Smoothing", IEEE TIP 2021, Sec. III.
  """
  soft = initial_soft_labels(num_classes, init, eps)
  return OLSState(
      soft_labels=soft,
      prob_sums=jnp.zeros((num_classes, num_classes), jnp.float32),
      counts=jnp.zeros((num_classes,), jnp.float32),
  )


def label_is_argmax(x: jax.Array, labels: jax.Array) -> jax.Array:
  """``argmax(x, -1) == labels`` (ties: first index wins), without argmax.

  XLA's CPU argmax is a variadic (value, index) reduction that does not
  vectorise; at large ``K`` it dominated the OLS accumulation. This uses a
  plain max, a compare and an integer min instead. Unlike ``jnp.argmax`` a
  row containing NaN never matches.

  Args:
    x: ``(B, K)`` scores.
    labels: ``(B,)`` integer labels.

  Returns:
    ``(B,)`` bool.
  """
  top = jnp.max(x, axis=-1, keepdims=True)
  index = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
  first = jnp.min(jnp.where(x >= top, index, x.shape[-1]), axis=-1)
  return first == labels


def _correct_rows(logits: jax.Array, labels: jax.Array, num_classes: int,
                  mask: Optional[jax.Array]
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Float32 softmax, target row and weight of every sample of a batch.

  A sample counts (weight 1) when it is valid and its argmax equals its label
  (ties: first index wins). Samples that do not count are routed to the
  out-of-range row ``num_classes``, which the scatters below drop.
  """
  probs = jax.nn.softmax(jax.lax.stop_gradient(logits).astype(jnp.float32), axis=-1)
  correct = label_is_argmax(probs, labels).astype(jnp.float32)
  weight = correct * ops.valid_mask(labels.shape, mask)
  segments = jnp.where(weight > 0, labels, num_classes)
  return probs, segments, weight


def accumulate(state: OLSState, logits: jax.Array, labels: jax.Array,
               mask: Optional[jax.Array] = None) -> OLSState:
  """Adds a training batch's correct predictions to the epoch sums.

  Args:
    state: the current :class:`OLSState`.
    logits: ``(B, K)`` logits of the same training-mode forward pass whose loss
      is optimised; any float dtype (the softmax is taken in float32).
    labels: ``(B,)`` integer true classes.
    mask: optional ``(B,)`` validity mask; padded samples never count.

  Returns:
    A new :class:`OLSState` with ``prob_sums`` and ``counts`` updated and
    ``soft_labels`` unchanged.

  References:
    Zhang et al., "Delving Deep into Label Smoothing", IEEE TIP 2021, Eq. (4).
  """
  chex.assert_rank(logits, 2)
  chex.assert_rank(labels, 1)
  # Scatter-add straight into the running sums: O(B * K) work per step, and
  # in place when the state is donated (a dense (K, K) per-batch sum followed
  # by an add would cost O(K^2) per step, 8x a ResNet step at K = 10000).
  # Duplicated labels are all added; out-of-range rows (non-counting samples)
  # are dropped.
  probs, segments, weight = _correct_rows(logits, labels, state.num_classes, mask)
  prob_sums = state.prob_sums.at[segments].add(probs * weight[:, None],
                                               mode="drop")
  counts = state.counts.at[segments].add(weight, mode="drop")
  return state.replace(prob_sums=prob_sums, counts=counts)


def next_soft_labels(state: OLSState,
                     freeze_threshold: Optional[float] = None,
                     momentum: float = 0.0) -> OLSState:
  """The epoch boundary: turns the epoch's sums into the next ``S``.

  ``S_new[c] = prob_sums[c] / counts[c]``; a class with ``counts[c] == 0`` gets
  the uniform row ``1/K``. With ``freeze_threshold`` set (the official
  fine-grained code uses 0.88), a class whose previous row has its maximum
  ``>= freeze_threshold`` and that had correct samples keeps its previous row.
  With ``momentum = m > 0`` (not in the paper or its code: the project's
  ``ols_momentum`` arm) the next matrix is ``m * S_prev + (1 - m) * S_new``,
  except for rows of ``S_prev`` that are all zero (the ``"zeros"`` start),
  which take ``S_new`` as it is so that every row stays a distribution;
  ``m = 0`` is OLS exactly. The accumulators are reset to zero.

  Args:
    state: the :class:`OLSState` at the end of an epoch.
    freeze_threshold: optional threshold of the freeze rule (off when None).
    momentum: weight ``m`` in ``[0, 1)`` of the previous matrix (static).

  Returns:
    A new :class:`OLSState` for the next epoch.

  References:
    Zhang et al., "Delving Deep into Label Smoothing", IEEE TIP 2021, Eq. (5).
  """
  if not 0.0 <= momentum < 1.0:
    raise ValueError(f"momentum: expected a value in [0, 1), got {momentum!r}")
  k = state.num_classes
  counts = state.counts
  has = counts > 0
  mean = state.prob_sums / jnp.where(has, counts, 1.0)[:, None]
  uniform = jnp.full_like(mean, 1.0 / k)
  new = jnp.where(has[:, None], mean, uniform)
  if freeze_threshold is not None:
    keep = has & (jnp.max(state.soft_labels, axis=-1) >= freeze_threshold)
    new = jnp.where(keep[:, None], state.soft_labels, new)
  if momentum:
    prev = state.soft_labels.astype(jnp.float32)
    started = jnp.sum(prev, axis=-1, keepdims=True) > 0
    new = jnp.where(started, momentum * prev + (1.0 - momentum) * new, new)
  return OLSState(soft_labels=new.astype(jnp.float32),
                  prob_sums=jnp.zeros_like(state.prob_sums),
                  counts=jnp.zeros_like(state.counts))


def loss(logits: jax.Array, labels: jax.Array, soft_labels: jax.Array,
         alpha: float, mask: Optional[jax.Array] = None) -> jax.Array:
  """The OLS training loss.

  ``alpha * mean_i CE(logits_i, y_i) + (1 - alpha) * mean_i CE(logits_i, S[y_i])``
  with means over valid samples and no gradient into ``S``.

  Args:
    logits: ``(B, K)`` logits (computed in float32 here).
    labels: ``(B,)`` integer true classes.
    soft_labels: ``(K, K)`` matrix ``S`` frozen at the start of the epoch.
    alpha: weight of the hard-label term, in ``[0, 1]``.
    mask: optional ``(B,)`` validity mask.

  Returns:
    A float32 scalar.

  References:
    Zhang et al., "Delving Deep into Label Smoothing", IEEE TIP 2021, Eq. (6).
  """
  return jnp.sum(per_example_loss(logits, labels, soft_labels, alpha, mask)
                 ) / jnp.maximum(jnp.sum(ops.valid_mask(labels.shape, mask)), 1.0)


def per_example_loss(logits: jax.Array, labels: jax.Array,
                     soft_labels: jax.Array, alpha: float,
                     mask: Optional[jax.Array] = None) -> jax.Array:
  """Per-sample OLS loss, zero on padded samples (see :func:`loss`).

  Args:
    logits: ``(B, K)`` logits.
    labels: ``(B,)`` integer labels.
    soft_labels: ``(K, K)`` matrix ``S``.
    alpha: weight of the hard-label term.
    mask: optional ``(B,)`` validity mask.

  Returns:
    ``(B,)`` float32 losses.
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  hard = ops.hard_cross_entropy(logp, labels)
  target = jax.lax.stop_gradient(soft_labels.astype(jnp.float32))[labels]
  soft = ops.soft_cross_entropy(logp, target)
  return (alpha * hard + (1.0 - alpha) * soft) * ops.valid_mask(labels.shape, mask)


def row_entropy(soft_labels: jax.Array) -> jax.Array:
  """Shannon entropy (nats) of each row of ``S``; ``(K,)``."""
  s = soft_labels.astype(jnp.float32)
  return -jnp.sum(jnp.where(s > 0, s * jnp.log(jnp.where(s > 0, s, 1.0)), 0.0), axis=-1)
