"""Per-example training losses of every method the project compares.

Methods:
  ``ce``          hard-label cross-entropy.
  ``ls``          label smoothing as ``optax.smooth_labels`` and PyTorch's
                  ``CrossEntropyLoss(label_smoothing=eps)`` define it (Szegedy et
                  al. 2016; Mueller et al. 2019): target ``(1 - eps) * onehot +
                  eps / K``, i.e. ``1 - eps + eps / K`` on the true class.
  ``ls_kminus1``  the other common form (e.g. the Tf-KD repository's
                  ``loss_label_smoothing``): ``1 - eps`` on the true class and
                  ``eps / (K - 1)`` on each other class.
  ``tfkd_reg``    teacher-free KD as released by its authors (Yuan et al.,
                  "Revisiting Knowledge Distillation via Label Smoothing
                  Regularization", CVPR 2020; ``loss_kd_regularization``): the
                  virtual teacher ``q`` (``reg_correct_prob`` on the true class,
                  the rest spread evenly) is softened as a *probability* vector,
                  ``softmax(q / reg_temperature)``, and matched against the
                  student at temperature 1 by PyTorch's element-mean KL (the
                  per-example KL sum divided by K) times ``reg_multiplier``:
                  ``(1 - reg_alpha) * CE + reg_alpha * reg_multiplier / K * KL``.
                  With the released ResNet-18 values (0.99, T = 20, alpha 0.1,
                  multiplier 100) the teacher is nearly uniform: a confidence
                  penalty, not label smoothing.
  ``tfkd_paper``  the paper-equation reading of Tf-KD (the project's former
                  ``tfkd``): the teacher ``q`` (``tfkd_a`` on the true class) is
                  softened as logits, ``softmax(log q / T)``, and matched against
                  the student at ``T`` with weight ``alpha * T**2``. Its optimum
                  does not move with T and puts about ``tfkd_a`` on the true
                  class, i.e. it acts like label smoothing.
  ``kd``          classical KD (Hinton et al. 2015) from a trained teacher's
                  logits: ``(1 - alpha) * CE + alpha * T**2 *
                  KL(softmax(t / T) || softmax(z / T))``.
  ``ols``         Online Label Smoothing (Zhang et al., IEEE TIP 2021), see
                  :mod:`ols_jax.ols`: ``alpha * CE + (1 - alpha) * CE(S[y])``.
  ``focal``       focal loss with a fixed ``focal_gamma`` (Lin et al. 2017),
                  as released with Mukhoti et al. 2020 (torrvision/
                  focal_calibration ``FocalLoss``): ``-(1 - p_y)**g log p_y``,
                  ``p_y`` not detached in the factor.
  ``flsd53``      focal loss with sample-dependent gamma (FLSD-53, Mukhoti et
                  al., "Calibrating Deep Neural Networks using Focal Loss",
                  NeurIPS 2020; ``FocalLossAdaptive`` with ``--gamma 3``):
                  ``g = 5`` where ``p_y < 0.2``, else ``3``.
  ``ols_mbls``    OLS plus the MbLS margin penalty (not published: the seed
                  paper's open question of OLS combined with another
                  calibration method): ``alpha * CE + (1 - alpha) * CE(S[y]) +
                  mbls_alpha * mean_k relu(max_j z_j - z_k - mbls_margin)``,
                  with S learned as for ``ols`` (``ols_momentum`` applies too).
  ``mbls``        margin-based label smoothing (Liu et al., "The Devil is in
                  the Margin", CVPR 2022; by-liu/MbLS ``LogitMarginL1``):
                  ``CE + mbls_alpha * mean_k relu(max_j z_j - z_k -
                  mbls_margin)``, the max not detached.

The released focal losses sum over the batch (``size_average=False``); here,
as for every method, the training step takes the batch mean (the sum only
rescales the learning rate by the batch size).

Note the convention: for ``tfkd_paper``/``kd`` ``alpha`` weighs the *soft*
term (as in the KD literature); for ``ols`` it weighs the *hard* term (as in
the OLS paper); ``tfkd_reg`` has its own ``reg_alpha`` (soft-term weight).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from ols_jax import ols
from ols_jax import ops

METHODS = ("ce", "ls", "ls_kminus1", "tfkd_reg", "tfkd_paper", "kd", "ols", "focal",
           "flsd53", "mbls", "ols_mbls")
# Methods that learn the OLS matrix S.
OLS_METHODS = ("ols", "ols_mbls")
# FLSD-53 (released FocalLossAdaptive, --gamma 3): gamma 5 below p_y = 0.2, else 3.
FLSD53_GAMMAS = (5.0, 3.0)
FLSD53_SWITCH = 0.2
# Names that no longer exist, and what to use instead.
RENAMED = {"tfkd": "'tfkd_reg' (the released Tf-KD code) or 'tfkd_paper' (the "
                   "paper-equation form, formerly 'tfkd')"}


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """Static (hashable) description of the training loss.

  Attributes:
    method: one of :data:`METHODS`.
    num_classes: ``K``.
    alpha: OLS hard-term weight, or the KD/TF-KD soft-term weight.
    eps: label-smoothing mass for ``ls``.
    temperature: KD / ``tfkd_paper`` temperature.
    tfkd_a: correct-class probability of the ``tfkd_paper`` virtual teacher.
    freeze_threshold: OLS freeze rule threshold (None = off).
    ols_momentum: OLS momentum on S at the epoch boundary (0 = OLS exactly).
    reg_alpha: ``tfkd_reg`` soft-term weight (released: 0.1).
    reg_temperature: ``tfkd_reg`` temperature of the teacher (released: 20).
    reg_correct_prob: ``tfkd_reg`` teacher's true-class probability (0.99).
    reg_multiplier: ``tfkd_reg`` factor on the element-mean KL (released for
      ResNet-18: 100).
    focal_gamma: ``focal`` exponent.
    mbls_margin: ``mbls`` logit-distance margin (released default 10).
    mbls_alpha: ``mbls`` penalty weight (released default 0.1).
  """

  method: str = "ce"
  num_classes: int = 2
  alpha: float = 0.5
  eps: float = 0.1
  temperature: float = 4.0
  tfkd_a: float = 0.9
  freeze_threshold: Optional[float] = None
  ols_momentum: float = 0.0
  reg_alpha: float = 0.1
  reg_temperature: float = 20.0
  reg_correct_prob: float = 0.99
  reg_multiplier: float = 100.0
  focal_gamma: float = 3.0
  mbls_margin: float = 10.0
  mbls_alpha: float = 0.1

  def __post_init__(self):
    validate(self)

  @property
  def uses_ols(self) -> bool:
    return self.method in OLS_METHODS

  @property
  def needs_teacher(self) -> bool:
    return self.method == "kd"


def validate(spec: LossSpec) -> None:
  """Raises ``ValueError`` naming the field when ``spec`` is out of range."""
  if spec.method in RENAMED:
    raise ValueError(f"method: {spec.method!r} was renamed; use {RENAMED[spec.method]}")
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
  if not 0.0 <= spec.reg_alpha <= 1.0:
    raise ValueError(f"reg_alpha: expected a value in [0, 1], got {spec.reg_alpha!r}")
  if not spec.reg_temperature > 0.0:
    raise ValueError(f"reg_temperature: expected a value > 0, got {spec.reg_temperature!r}")
  if not 0.0 < spec.reg_correct_prob < 1.0:
    raise ValueError(f"reg_correct_prob: expected a value in (0, 1), "
                     f"got {spec.reg_correct_prob!r}")
  if not spec.reg_multiplier >= 0.0:
    raise ValueError(f"reg_multiplier: expected a value >= 0, got {spec.reg_multiplier!r}")
  if not spec.focal_gamma >= 0.0:
    raise ValueError(f"focal_gamma: expected a value >= 0, got {spec.focal_gamma!r}")
  if not spec.mbls_margin >= 0.0:
    raise ValueError(f"mbls_margin: expected a value >= 0, got {spec.mbls_margin!r}")
  if not spec.mbls_alpha >= 0.0:
    raise ValueError(f"mbls_alpha: expected a value >= 0, got {spec.mbls_alpha!r}")
  if not 0.0 <= spec.ols_momentum < 1.0:
    raise ValueError(f"ols_momentum: expected a value in [0, 1), got {spec.ols_momentum!r}")
  if spec.freeze_threshold is not None and not 0.0 < spec.freeze_threshold <= 1.0:
    raise ValueError("freeze_threshold: expected None or a value in (0, 1], "
                     f"got {spec.freeze_threshold!r}")


def _kl(target: jax.Array, logp: jax.Array) -> jax.Array:
  """KL(target || exp(logp)) per row, with 0 log 0 = 0."""
  safe = jnp.where(target > 0, target, 1.0)
  return jnp.sum(jnp.where(target > 0, target * (jnp.log(safe) - logp), 0.0), axis=-1)


def smoothed_targets(labels: jax.Array, num_classes: int, eps: float) -> jax.Array:
  """``(1 - eps) * onehot + eps / K`` (``optax.smooth_labels``, PyTorch)."""
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return onehot * (1.0 - eps) + eps / num_classes


def smoothed_targets_kminus1(labels: jax.Array, num_classes: int,
                             eps: float) -> jax.Array:
  """``1 - eps`` on the label, ``eps / (K - 1)`` on every other class."""
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return onehot * (1.0 - eps) + (1.0 - onehot) * (eps / (num_classes - 1))


def implied_true_class_mass(spec: LossSpec, steps: int = 20000,
                            step_size: float = 0.1) -> float:
  """Probability on the true class at the minimum of the per-example loss.

  Minimises ``per_example_loss(spec, z, 0)`` over the logits ``z`` of one
  example (every listed loss is convex in ``z``) by gradient descent, so it
  reads the target a method pulls the softmax toward straight off the code:
  ``1`` for ``ce`` (approached, never reached), ``1 - eps + eps / K`` for
  ``ls``, ``1 - eps`` for ``ls_kminus1``. Not defined for ``kd`` and ``ols``
  (teacher / learned S).

  Args:
    spec: the loss.
    steps: gradient steps.
    step_size: their size (small enough for the heaviest released weights).

  Returns:
    The true-class probability at the optimum.
  """
  if spec.method in ("kd",) + OLS_METHODS:
    raise ValueError(f"method {spec.method!r}: the target depends on a teacher or S")
  labels = jnp.zeros((1,), jnp.int32)

  def loss(z):
    return per_example_loss(spec, z[None], labels)[0]

  grad = jax.grad(loss)
  z = jax.lax.fori_loop(0, steps, lambda _, z: z - step_size * grad(z),
                        jnp.zeros((spec.num_classes,), jnp.float32))
  return float(jax.nn.softmax(z)[0])


def focal_loss(logp: jax.Array, labels: jax.Array, gamma) -> jax.Array:
  """Per-example focal loss ``-(1 - p_y)**gamma * log p_y``.

  Args:
    logp: ``(B, K)`` log-probabilities.
    labels: ``(B,)`` integer labels.
    gamma: a scalar or ``(B,)`` exponents.

  Returns:
    ``(B,)`` losses; gradients flow through ``p_y`` in the factor too, as in
    the released code.

  References:
    Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017.
  """
  logpt = ops.label_log_prob(logp, labels)
  if isinstance(gamma, (int, float)) and gamma == 0:
    return -logpt  # 0**0 has a NaN gradient at p_y = 1.
  one_minus = jnp.maximum(-jnp.expm1(logpt), 0.0)
  return -(one_minus ** gamma) * logpt


def flsd53_gamma(logp: jax.Array, labels: jax.Array) -> jax.Array:
  """FLSD-53's per-example gamma: 5 where ``p_y < 0.2``, else 3 (no gradient).

  References:
    Mukhoti et al., NeurIPS 2020; torrvision/focal_calibration
    ``Losses/focal_loss_adaptive_gamma.py`` (``gamma_dic`` {0.2: 5, 0.5: 3},
    ``--gamma 3`` for ``p_y >= 0.5``).
  """
  pt = jax.lax.stop_gradient(jnp.exp(ops.label_log_prob(logp, labels)))
  return jnp.where(pt < FLSD53_SWITCH, FLSD53_GAMMAS[0], FLSD53_GAMMAS[1])


def logit_margin_penalty(logits: jax.Array, margin: float) -> jax.Array:
  """MbLS's per-example penalty ``mean_k relu(max_j z_j - z_k - margin)``.

  The max is not detached (as in the released ``LogitMarginL1.get_diff``).

  References:
    Liu et al., "The Devil is in the Margin: Margin-based Label Smoothing for
    Network Calibration", CVPR 2022.
  """
  diff = jnp.max(logits, axis=-1, keepdims=True) - logits
  return jnp.mean(jax.nn.relu(diff - margin), axis=-1)


def tfkd_reg_teacher(labels: jax.Array, num_classes: int, correct_prob: float,
                     temperature: float) -> jax.Array:
  """The released Tf-KD virtual teacher, ``softmax(q / T)`` of probabilities q."""
  q = smoothed_targets_kminus1(labels, num_classes, 1.0 - correct_prob)
  return jax.nn.softmax(q / temperature, axis=-1)


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
  if spec.uses_ols:
    if soft_labels is None:
      raise ValueError(f"method {spec.method!r} needs soft_labels")
    out = ols.per_example_loss(logits, labels, soft_labels, spec.alpha)
    if spec.method == "ols_mbls":
      out = out + spec.mbls_alpha * logit_margin_penalty(logits, spec.mbls_margin)
    return out
  logp = jax.nn.log_softmax(logits, axis=-1)
  if spec.method == "ce":
    return ops.hard_cross_entropy(logp, labels)
  if spec.method == "ls":
    return ops.soft_cross_entropy(logp, smoothed_targets(labels, k, spec.eps))
  if spec.method == "ls_kminus1":
    return ops.soft_cross_entropy(logp, smoothed_targets_kminus1(labels, k, spec.eps))
  if spec.method == "focal":
    return focal_loss(logp, labels, spec.focal_gamma)
  if spec.method == "flsd53":
    return focal_loss(logp, labels, flsd53_gamma(logp, labels))
  if spec.method == "mbls":
    return (ops.hard_cross_entropy(logp, labels)
            + spec.mbls_alpha * logit_margin_penalty(logits, spec.mbls_margin))
  if spec.method == "tfkd_reg":
    teacher = tfkd_reg_teacher(labels, k, spec.reg_correct_prob, spec.reg_temperature)
    # nn.KLDivLoss() averages over all B * K elements; times the multiplier.
    kl_element_mean = _kl(teacher, logp) / k
    return ((1.0 - spec.reg_alpha) * ops.hard_cross_entropy(logp, labels)
            + spec.reg_alpha * spec.reg_multiplier * kl_element_mean)
  t = spec.temperature
  logp_t = jax.nn.log_softmax(logits / t, axis=-1)
  if spec.method == "tfkd_paper":
    q = smoothed_targets_kminus1(labels, k, 1.0 - spec.tfkd_a)
    teacher = jax.nn.softmax(jnp.log(q) / t, axis=-1)
  elif spec.method == "kd":
    if teacher_logits is None:
      raise ValueError("method 'kd' needs teacher_logits")
    teacher = jax.nn.softmax(
        jax.lax.stop_gradient(teacher_logits.astype(jnp.float32)) / t, axis=-1)
  else:
    raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {spec.method!r}")
  teacher = jax.lax.stop_gradient(teacher)
  return ((1.0 - spec.alpha) * ops.hard_cross_entropy(logp, labels)
          + spec.alpha * t * t * _kl(teacher, logp_t))
