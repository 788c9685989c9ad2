"""Per-example training losses of every method the project compares.

Methods:
  ``ce``    hard-label cross-entropy.
  ``ls``    label smoothing (Szegedy et al. 2016; Mueller et al. 2019): target
            ``1 - eps`` on the true class and ``eps / (K - 1)`` on each other one.
  ``tfkd``  teacher-free KD with a hand-designed virtual teacher (Yuan et al.,
            "Revisiting Knowledge Distillation via Label Smoothing
            Regularization", CVPR 2020): the teacher puts ``a`` on the true class
            and ``(1 - a) / (K - 1)`` elsewhere; it is softened with temperature
            ``T`` by ``softmax(log q / T)`` and matched with a KL term of weight
            ``alpha * T**2`` beside ``(1 - alpha) * CE``.
  ``kd``    classical KD (Hinton et al. 2015) from a trained teacher's logits:
            ``(1 - alpha) * CE + alpha * T**2 * KL(softmax(t / T) || softmax(z / T))``.
  ``ols``   Online Label Smoothing (Zhang et al., IEEE TIP 2021), see
            :mod:`ols_jax.ols`: ``alpha * CE + (1 - alpha) * CE(S[y])``.

Note the convention: for ``tfkd``/``kd`` ``alpha`` weighs the *soft* term (as in
the KD literature); for ``ols`` it weighs the *hard* term (as in the OLS paper).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from ols_jax import ols

METHODS = ("ce", "ls", "tfkd", "kd", "ols")


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """Static (hashable) description of the training loss.

  Attributes:
    method: one of :data:`METHODS`.
    num_classes: ``K``.
    alpha: OLS hard-term weight, or the KD/TF-KD soft-term weight.
    eps: label-smoothing mass for ``ls``.
    temperature: KD / TF-KD temperature.
    tfkd_a: correct-class probability of the TF-KD virtual teacher.
    freeze_threshold: OLS freeze rule threshold (None = off).
  """

  method: str = "ce"
  num_classes: int = 2
  alpha: float = 0.5
  eps: float = 0.1
  temperature: float = 4.0
  tfkd_a: float = 0.9
  freeze_threshold: Optional[float] = None

  def __post_init__(self):
    validate(self)

  @property
  def uses_ols(self) -> bool:
    return self.method == "ols"

  @property
  def needs_teacher(self) -> bool:
    return self.method == "kd"


def validate(spec: LossSpec) -> None:
  """Raises ``ValueError`` naming the field when ``spec`` is out of range."""
  if spec.method not in METHODS:
    raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {spec.method!r}")
  if not isinstance(spec.num_classes, int) or spec.num_classes < 2:
    raise ValueError(f"num_classes: expected an integer >= 2, got {spec.num_classes!r}")
  if not 0.0 <= spec.alpha <= 1.0:
    raise ValueError(f"alpha: expected a value in [0, 1], got {spec.alpha!r}")
  if not 0.0 <= spec.eps < 1.0:
    raise ValueError(f"eps: expected a value in [0, 1), got {spec.eps!r}")
  if not spec.temperature > 0.0:
    raise ValueError(f"temperature: expected a value > 0, got {spec.temperature!r}")
  if not 0.0 < spec.tfkd_a < 1.0:
    raise ValueError(f"tfkd_a: expected a value in (0, 1), got {spec.tfkd_a!r}")
  if spec.freeze_threshold is not None and not 0.0 < spec.freeze_threshold <= 1.0:
    raise ValueError("freeze_threshold: expected None or a value in (0, 1], "
                     f"got {spec.freeze_threshold!r}")


def _hard_ce(logp: jax.Array, labels: jax.Array) -> jax.Array:
  return -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]


def _soft_ce(logp: jax.Array, target: jax.Array) -> jax.Array:
  return -jnp.sum(target * logp, axis=-1)


def _kl(target: jax.Array, logp: jax.Array) -> jax.Array:
  """KL(target || exp(logp)) per row, with 0 log 0 = 0."""
  safe = jnp.where(target > 0, target, 1.0)
  return jnp.sum(jnp.where(target > 0, target * (jnp.log(safe) - logp), 0.0), axis=-1)


def smoothed_targets(labels: jax.Array, num_classes: int, eps: float) -> jax.Array:
  """``1 - eps`` on the label, ``eps / (K - 1)`` on every other class."""
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return onehot * (1.0 - eps) + (1.0 - onehot) * (eps / (num_classes - 1))


def per_example_loss(spec: LossSpec, logits: jax.Array, labels: jax.Array, *,
                     soft_labels: Optional[jax.Array] = None,
                     teacher_logits: Optional[jax.Array] = None) -> jax.Array:
  """Unmasked per-example loss of the configured method.

  Args:
    spec: the :class:`LossSpec`.
    logits: ``(B, K)`` student logits (cast to float32).
    labels: ``(B,)`` integer labels.
    soft_labels: ``(K, K)`` OLS matrix (``ols`` only).
    teacher_logits: ``(B, K)`` teacher logits (``kd`` only).

  Returns:
    ``(B,)`` float32 losses.
  """
  logits = logits.astype(jnp.float32)
  k = spec.num_classes
  if spec.method == "ols":
    if soft_labels is None:
      raise ValueError("method 'ols' needs soft_labels")
    return ols.per_example_loss(logits, labels, soft_labels, spec.alpha)
  logp = jax.nn.log_softmax(logits, axis=-1)
  if spec.method == "ce":
    return _hard_ce(logp, labels)
  if spec.method == "ls":
    return _soft_ce(logp, smoothed_targets(labels, k, spec.eps))
  t = spec.temperature
  logp_t = jax.nn.log_softmax(logits / t, axis=-1)
  if spec.method == "tfkd":
    q = smoothed_targets(labels, k, 1.0 - spec.tfkd_a)
    teacher = jax.nn.softmax(jnp.log(q) / t, axis=-1)
  elif spec.method == "kd":
    if teacher_logits is None:
      raise ValueError("method 'kd' needs teacher_logits")
    teacher = jax.nn.softmax(
        jax.lax.stop_gradient(teacher_logits.astype(jnp.float32)) / t, axis=-1)
  else:
    raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {spec.method!r}")
  teacher = jax.lax.stop_gradient(teacher)
  return ((1.0 - spec.alpha) * _hard_ce(logp, labels)
          + spec.alpha * t * t * _kl(teacher, logp_t))
