"""The experiment configuration: defaults, validation, and what changes results.

Configs are ``ml_collections.ConfigDict`` objects built in code
(``experiments/configs/*.py`` start from :func:`base_config`). Every field can
be overridden on the command line with ``--config.<field>=<value>``; unknown
fields are an error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import ml_collections

from ols_jax.ols import INITS

if TYPE_CHECKING:
  from ols_jax import losses


class ConfigError(ValueError):
  """A configuration value is missing or out of range."""


OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")
PARALLEL_MODES = ("jit", "pmap")
DTYPES = ("float32", "bfloat16")
SELECT_METRICS = ("top1_error", "nll", "ece")
CALIBRATION_SPLITS = ("dataset", "test_half")

# Fields that may change between a run and its resumption without changing its
# results (everything else must match the saved config.json). `target_accuracy`
# is evaluation-only but stays out: it sets the abstention threshold stored in
# results.json, which must agree with config.json.
RESUMABLE_FIELDS = frozenset({
    "log_every_steps", "checkpoint_every_steps", "progress", "num_workers",
    "allow_config_change", "figures", "tsne_samples", "data_dir", "manual_dir",
    "compilation_cache_dir", "tensorboard",
})


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by every experiment config."""
  c = ml_collections.ConfigDict()
  # Data.
  c.dataset = "brain_tumor_mri"
  c.data_dir = ""          # '' = the shared data folder (OLS_JAX_DATA).
  c.manual_dir = ""        # RadImageNet / MedMNIST manual download folder.
  c.image_size = 28
  c.channels = 1
  c.augment = "crop_flip"
  c.num_workers = 0
  # Model.
  c.model = "resnet18"
  c.width_multiplier = 1.0
  c.small_input = True
  c.dtype = "float32"
  c.dropout_rate = -1.0    # < 0: the model's canonical default.
  c.zero_init_residual = False
  # Method.
  c.method = "ols"
  c.alpha = 0.5            # OLS: hard-term weight; KD/tfkd_paper: soft-term weight.
  c.eps = 0.1              # LS smoothing mass (ls, ls_kminus1).
  c.temperature = 4.0      # KD / tfkd_paper.
  c.tfkd_a = 0.9           # tfkd_paper virtual teacher's correct-class probability.
  # tfkd_reg: the released Tf-KD code's parameters (ResNet-18 values).
  c.reg_alpha = 0.1
  c.reg_temperature = 20.0
  c.reg_correct_prob = 0.99
  c.reg_multiplier = 100.0
  c.ols_init = "uniform"
  c.ols_eps = 0.1
  c.freeze_threshold = 0.0  # 0 = freeze rule off (0.88 in the official code).
  c.ols_momentum = 0.0     # S_t = m S_{t-1} + (1 - m) S_new; 0 = OLS exactly.
  c.teacher_workdir = ""
  c.focal_gamma = 3.0      # focal (fixed gamma); flsd53 uses 5 / 3 as released.
  c.mbls_margin = 10.0     # mbls: released defaults margin 10, alpha 0.1.
  c.mbls_alpha = 0.1
  # Optimisation.
  c.optimizer = "sgd"
  c.learning_rate = 0.1
  c.momentum = 0.9
  c.nesterov = False
  c.weight_decay = 1e-4
  c.schedule = "cosine"
  c.warmup_epochs = 0.0
  c.num_epochs = 10
  c.batch_size = 128
  c.eval_batch_size = 256
  c.seed = 0
  # Selection and evaluation.
  # 'dataset': the dataset's own val split selects, fits T and thresholds.
  # 'test_half': the test split is halved once, stratified by class
  # (data.calibration_split); one half does all of that and the other half is
  # the reported test split; the dataset's own val split is then only scored
  # (``val_dataset`` in results.json).
  c.calibration_split = "dataset"
  c.calibration_split_seed = 0
  c.select_metric = "top1_error"   # on the validation split only.
  c.num_bins = 15
  c.tsne_samples = 1000
  c.figures = True
  # Abstention: the threshold chosen on validation (temperature-scaled
  # probabilities) is the lowest whose accepted inputs reach this accuracy.
  c.target_accuracy = 0.95
  # Split-conformal prediction sets (LAC, APS) calibrated on validation.
  c.conformal_alpha = 0.1
  # Shift: the corruption suite (ols_jax.corruptions) on test, severities 1-5.
  c.shift_eval = False
  # Far-OOD sets: comma-separated shared datasets (their test split, converted
  # to this run's channels and size), scored against this run's test split.
  c.ood_sets = ""
  # Cross-source shift: a shared dataset whose test split is mapped to this
  # run's classes (ols_jax.data.cross_source) and scored like test.
  c.cross_source = ""
  # The final evaluation's evaluators (ols_jax.evaluation.EVALUATORS),
  # comma-separated; '' = conformal,selective,embedding,ood. cross_source and
  # shift join when config.cross_source / config.shift_eval ask for them.
  c.evals = ""
  # Start from a finished run's selected weights (its workdir): every parameter of
  # the same path and shape is copied, a head of another class count is fresh.
  c.init_from = ""
  # Fine-tuning: the backbone's learning rate is backbone_lr_multiplier x the
  # head's (the head keeps the schedule); freeze_backbone trains the head only
  # (a linear probe) with the backbone's BatchNorm statistics frozen too.
  c.backbone_lr_multiplier = 1.0
  c.freeze_backbone = False
  # Infrastructure.
  c.parallel = "jit"
  c.num_devices = 0        # 0 = all devices.
  c.log_every_steps = 50
  c.checkpoint_every_steps = 0  # 0 = only at epoch ends.
  c.progress = True
  c.allow_config_change = False
  c.compilation_cache_dir = ""  # '' = no persistent compilation cache.
  c.tensorboard = True     # also write metrics.jsonl to <workdir>/tensorboard.
  return c


# The final evaluation's optional evaluators (``config.evals``; run by
# :func:`ols_jax.evaluation.final`), in the order they run, each with the
# per-example outputs it reads. Classification (the temperature, val / test /
# test_ts metrics and reliability curves) always runs.
EVALUATORS = {
    "conformal": ("val", "test"),
    "selective": ("val", "test"),
    "embedding": ("test",),
    "ood": ("train", "val", "test", "far-OOD sets"),
    "cross_source": ("val", "cross-source set"),
    "shift": ("test images under the corruption suite",),
}
DEFAULT_EVALS = ("conformal", "selective", "embedding", "ood")


def evals_of(config) -> tuple[str, ...]:
  """The evaluators a run's final evaluation runs, in :data:`EVALUATORS` order.

  ``config.evals`` (comma-separated; empty: :data:`DEFAULT_EVALS`), plus
  ``cross_source`` when ``config.cross_source`` names a set and ``shift`` when
  ``config.shift_eval``. Raises ``ValueError`` naming an unknown evaluator.
  """
  names = [n.strip() for n in str(config.get("evals", "") or "").split(",") if n.strip()]
  unknown = [n for n in names if n not in EVALUATORS]
  if unknown:
    raise ValueError(f"evals: unknown evaluator(s) {unknown}; expected names from "
                     f"{', '.join(EVALUATORS)}")
  if "cross_source" in names and not config.get("cross_source"):
    raise ValueError("evals: cross_source needs config.cross_source (the set to score)")
  chosen = set(names or DEFAULT_EVALS)
  if config.get("cross_source"):
    chosen.add("cross_source")
  if config.get("shift_eval"):
    chosen.add("shift")
  return tuple(n for n in EVALUATORS if n in chosen)


def _check_choice(config, field, choices):
  if config[field] not in choices:
    raise ConfigError(f"config.{field}: expected one of {', '.join(choices)}, "
                      f"got {config[field]!r}")


def _check_range(config, field, lo, hi, lo_open=False, hi_open=False):
  v = config[field]
  ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
  if not ok:
    lb, rb = ("(" if lo_open else "["), (")" if hi_open else "]")
    raise ConfigError(f"config.{field}: expected a value in {lb}{lo}, {hi}{rb}, got {v!r}")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises :class:`ConfigError` (one line, naming the field) on bad values."""
  from ols_jax import models  # pylint: disable=import-outside-toplevel
  from ols_jax.data import augment  # pylint: disable=import-outside-toplevel
  # The loss and its hyper-parameters: validated in one place, the LossSpec.
  try:
    loss_spec(config, 2)
  except ValueError as e:
    raise ConfigError(f"config.{e}") from None
  _check_choice(config, "augment", augment.AUGMENTATIONS)
  if config.model not in models.MODEL_NAMES:
    raise ConfigError(f"config.model: expected one of {', '.join(models.MODEL_NAMES)}, "
                      f"got {config.model!r}")
  _check_choice(config, "ols_init", INITS)
  _check_choice(config, "optimizer", OPTIMIZERS)
  _check_choice(config, "schedule", SCHEDULES)
  _check_choice(config, "parallel", PARALLEL_MODES)
  _check_choice(config, "dtype", DTYPES)
  _check_choice(config, "select_metric", SELECT_METRICS)
  _check_choice(config, "calibration_split", CALIBRATION_SPLITS)
  _check_range(config, "conformal_alpha", 0.0, 1.0, lo_open=True, hi_open=True)
  if config.ood_sets:
    from ols_jax.data import local  # pylint: disable=import-outside-toplevel
    for name in str(config.ood_sets).split(","):
      if name.strip() not in local.SHARED:
        raise ConfigError(f"config.ood_sets: {name.strip()!r} is not a shared dataset; "
                          f"expected comma-separated names from {', '.join(sorted(local.SHARED))}")
  try:
    evals_of(config)
  except ValueError as e:
    raise ConfigError(f"config.{e}") from None
  if config.get("cross_source"):
    from ols_jax.data import cross_source as cross_lib  # pylint: disable=import-outside-toplevel
    from ols_jax.data import errors as data_errors  # pylint: disable=import-outside-toplevel
    try:
      cross_lib.check_pair(str(config.cross_source), str(config.dataset))
    except data_errors.DataError as e:
      raise ConfigError(f"config.cross_source: {e}") from None
  _check_range(config, "ols_eps", 0.0, 1.0)  # S0's smoothing: a TrainState field
  _check_range(config, "learning_rate", 0.0, 10.0, lo_open=True)
  _check_range(config, "backbone_lr_multiplier", 0.0, 100.0)
  _check_range(config, "momentum", 0.0, 1.0, hi_open=True)
  _check_range(config, "weight_decay", 0.0, 1.0)
  _check_range(config, "width_multiplier", 0.0, 4.0, lo_open=True)
  _check_range(config, "target_accuracy", 0.0, 1.0, lo_open=True)
  _check_range(config, "warmup_epochs", 0.0, float(max(config.num_epochs, 0)))
  if config.channels not in (1, 3):
    raise ConfigError(f"config.channels: expected 1 or 3, got {config.channels!r}")
  for field in ("num_epochs", "batch_size", "eval_batch_size", "image_size", "num_bins"):
    if not isinstance(config[field], int) or config[field] < 1:
      raise ConfigError(f"config.{field}: expected a positive integer, got {config[field]!r}")
  if not 8 <= config.image_size <= 512:
    raise ConfigError(f"config.image_size: expected 8..512 pixels, got {config.image_size}")
  if config.method == "kd" and not config.teacher_workdir:
    raise ConfigError("config.teacher_workdir: method 'kd' needs the workdir of a "
                      "trained teacher run")
  if not isinstance(config.calibration_split_seed, int):
    raise ConfigError("config.calibration_split_seed: expected an integer, "
                      f"got {config.calibration_split_seed!r}")
  for field in ("num_devices", "log_every_steps", "checkpoint_every_steps", "num_workers"):
    if not isinstance(config[field], int) or config[field] < 0:
      raise ConfigError(f"config.{field}: expected a non-negative integer, got {config[field]!r}")


def loss_spec(config: ml_collections.ConfigDict, num_classes: int) -> losses.LossSpec:
  """The static :class:`ols_jax.losses.LossSpec` of a config."""
  from ols_jax import losses  # pylint: disable=import-outside-toplevel
  return losses.LossSpec(
      method=config.method, num_classes=num_classes, alpha=float(config.alpha),
      eps=float(config.eps), temperature=float(config.temperature),
      tfkd_a=float(config.tfkd_a),
      freeze_threshold=float(config.freeze_threshold) or None,
      ols_momentum=float(config.get("ols_momentum", 0.0)),
      reg_alpha=float(config.reg_alpha), reg_temperature=float(config.reg_temperature),
      reg_correct_prob=float(config.reg_correct_prob),
      reg_multiplier=float(config.reg_multiplier),
      focal_gamma=float(config.focal_gamma), mbls_margin=float(config.mbls_margin),
      mbls_alpha=float(config.mbls_alpha))


def migrate(saved: dict) -> ml_collections.ConfigDict:
  """A finished run's saved ``config.json`` as a config of today's fields.

  The one reader of old configs: every field added since the run was made
  takes its :func:`base_config` default (the value that run had in effect),
  saved values are kept, and fields no longer known are kept as they are (a
  retired method name, e.g. ``tfkd``, stays readable: inference builds no loss).

  Args:
    saved: the parsed ``config.json``.

  Returns:
    The config (not validated: an old run may hold names today's
    :func:`validate` refuses).
  """
  merged = base_config().to_dict()
  merged.update(saved)
  return ml_collections.ConfigDict(merged)


def result_affecting_differences(saved: dict, current: dict) -> list[str]:
  """Names of fields whose values differ and that change results.

  A field missing from ``saved`` (added to the config after that run began)
  counts as holding its :func:`base_config` default.
  """
  defaults = base_config().to_dict()
  keys = (set(saved) | set(current)) - RESUMABLE_FIELDS
  return sorted(k for k in keys
                if saved.get(k, defaults.get(k)) != current.get(k))


def cpu_config(dataset: str, *, image_size: int = 28, channels: int = 1,
               num_epochs: int = 15) -> ml_collections.ConfigDict:
  """A CPU-scale config on one of the shared real datasets.

  ResNet-18 with the small-input stem at width 0.25 (about 0.7M parameters),
  SGD momentum 0.9, lr 0.05 with cosine decay, batch 128, crop+flip.
  """
  c = base_config()
  c.dataset = dataset
  c.image_size = image_size
  c.channels = channels
  c.model = "resnet18"
  c.width_multiplier = 0.25
  c.small_input = True
  c.num_epochs = num_epochs
  c.batch_size = 128
  c.eval_batch_size = 512
  c.learning_rate = 0.05
  c.weight_decay = 5e-4
  c.log_every_steps = 50
  return c


def apply_variant(config: ml_collections.ConfigDict, variant: str,
                  variants: dict[str, dict]) -> ml_collections.ConfigDict:
  """Applies a named variant of an experiment config (``--config=file.py:variant``).

  Args:
    config: the config's default form.
    variant: '' for the default, else a key of ``variants``.
    variants: variant name -> field overrides.

  Returns:
    ``config`` with the variant's fields set.

  Raises:
    ConfigError: an unknown variant.
  """
  if not variant:
    return config
  if variant not in variants:
    raise ConfigError(f"config variant {variant!r}: expected one of "
                      f"{', '.join(sorted(variants)) or '(none)'}")
  for field, value in variants[variant].items():
    config[field] = value
  return config

