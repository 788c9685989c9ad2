"""Evaluation: a split through the eval step, and a run's final evaluation.

:func:`evaluate` runs the compiled eval step over a split (validation after
every epoch, val and test once at the end). :func:`final` evaluates the
selected checkpoint and computes every number of ``results.json`` once: per
split and temperature one pass of :func:`score` over the per-example logits
gives the metrics, the reliability curve and the risk-coverage curve
together. :mod:`ols_jax.report` only renders the result.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ols_jax import calibration
from ols_jax import config as config_lib
from ols_jax import conformal
from ols_jax import data as data_lib
from ols_jax import embeddings as embeddings_lib
from ols_jax import metrics as metrics_lib
from ols_jax import ood as ood_lib
from ols_jax import parallel
from ols_jax import selective
from ols_jax import shift as shift_lib
from ols_jax.data import sources

# The share of in-distribution (validation) scans an OOD threshold keeps.
OOD_TPR = 0.95


def evaluate(dp: parallel.DataParallel, state, source, config, *, with_outputs: bool,
             channels: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  """Runs the eval step over a whole split.

  Args:
    dp: the run's compiled steps.
    state: the device-side TrainState.
    source: the split's data source.
    config: the run config (``eval_batch_size``, ``image_size``,
      ``num_workers``).
    with_outputs: also gather the per-example outputs.
    channels: image channels.

  Returns:
    ``(metrics, outputs)``: finalised metrics, and ``outputs`` with the summed
    ``sums`` (:func:`ols_jax.metrics.eval_sums`) and, if requested,
    per-example ``logits``, ``embedding`` and ``label`` (padding removed;
    every process's rows, on every process).
  """
  it = data_lib.eval_iterator(
      source, global_batch_size=config.eval_batch_size,
      image_size=config.image_size, channels=channels,
      process_index=jax.process_index(), process_count=jax.process_count(),
      num_workers=config.num_workers)
  total = None
  logits, embs, labels = [], [], []
  for batch in it:
    host_labels, host_mask = batch["label"], batch["mask"]
    sums, out = dp.evaluate(state, batch, with_outputs=with_outputs)
    total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    if with_outputs:  # every process's rows, in order (outputs are already global).
      host_labels, host_mask = parallel.global_rows((host_labels, host_mask))
      keep = host_mask > 0
      logits.append(np.asarray(jax.device_get(out["logits"]))[keep])
      embs.append(np.asarray(jax.device_get(out["embedding"]))[keep])
      labels.append(host_labels[keep])
  it.close()
  host_total = jax.device_get(total)
  result = metrics_lib.finalize(host_total)
  outputs = {"sums": host_total}
  if with_outputs:
    outputs.update(logits=np.concatenate(logits), embedding=np.concatenate(embs),
                   label=np.concatenate(labels).astype(np.int64))
  return result, outputs


_eval_sums = jax.jit(metrics_lib.eval_sums, static_argnames="num_bins")


@dataclasses.dataclass(frozen=True)
class Score:
  """One split's per-example outputs at one temperature, scored.

  Attributes:
    metrics: every metric (:func:`ols_jax.metrics.finalize`, adaptive ECE,
      macro AUROC, AURC) as floats.
    confidence: ``(N,)`` top-label probabilities.
    correct: ``(N,)`` whether each argmax is the label.
    reliability: the reliability curve (:func:`ols_jax.metrics.reliability_curve`).
    risk_coverage: the risk-coverage curve (:func:`ols_jax.selective.risk_coverage_curve`).
  """
  metrics: dict[str, float]
  confidence: np.ndarray
  correct: np.ndarray
  reliability: dict[str, Any]
  risk_coverage: dict[str, np.ndarray]


def score(logits: np.ndarray, labels: np.ndarray, *, num_bins: int,
          temperature: float = 1.0) -> Score:
  """Every metric and curve of per-example logits divided by ``temperature``.

  Args:
    logits: ``(N, K)`` logits.
    labels: ``(N,)`` integer labels.
    num_bins: confidence bins of the calibration metrics.
    temperature: ``T > 0``.

  Returns:
    The :class:`Score`; the softmax and the metric sums are computed once.
  """
  scaled = calibration.apply_temperature(logits, temperature)
  sums = jax.device_get(_eval_sums(jnp.asarray(scaled), jnp.asarray(labels),
                                   jnp.ones(len(labels), jnp.float32), num_bins=num_bins))
  probs = np.asarray(jax.nn.softmax(jnp.asarray(scaled, jnp.float32), axis=-1))
  confidence, correct = selective.confidence_and_correct(probs, labels)
  risk_coverage = selective.risk_coverage_curve(confidence, correct)
  metrics = metrics_lib.finalize(sums)
  metrics.update(metrics_lib.host_metrics(probs, labels, num_bins=num_bins))
  metrics["aurc"] = selective.curve_area(risk_coverage)
  return Score(metrics={k: float(v) for k, v in metrics.items()},
               confidence=confidence, correct=correct, reliability=metrics_lib.reliability_curve(sums),
               risk_coverage=risk_coverage)


@dataclasses.dataclass(frozen=True)
class FinalEvaluation:
  """The selected checkpoint's final evaluation, and what the report draws.

  Attributes:
    summary: the JSON-ready dict written to ``results.json``.
    val_outputs: validation ``logits`` and ``label`` (kept for new
      abstention thresholds).
    test_outputs: test ``logits``, ``embedding`` and ``label``.
    risk_coverage: the test risk-coverage curves, raw (``test``) and
      temperature-scaled (``test_ts``).
    soft_labels: S after the last epoch (its heat map), or None.
    ood_fit: the Mahalanobis fit and the OOD thresholds (saved with the run
      as ``ood_fit.npz`` for predict), or None.
  """
  summary: dict[str, Any]
  val_outputs: dict[str, np.ndarray]
  test_outputs: dict[str, np.ndarray]
  risk_coverage: dict[str, dict[str, np.ndarray]]
  soft_labels: Optional[np.ndarray]
  ood_fit: Optional[dict[str, np.ndarray]] = None


# The evaluators (their names and what each reads live with the config).
EVALUATORS = config_lib.EVALUATORS
DEFAULT_EVALS = config_lib.DEFAULT_EVALS
evals_of = config_lib.evals_of


def final(dp: parallel.DataParallel, state, splits, config, *, run_fields: dict[str, Any],
          start_time: float, soft_labels: Optional[np.ndarray],
          ood_sources: Optional[dict[str, Any]] = None,
          cross_source: Optional["CrossSource"] = None,
          log=lambda message: None) -> FinalEvaluation:
  """Evaluates the selected state once, into the run's summary.

  First every split an evaluator reads goes through the model once
  (:func:`evaluate`; per-example logits, labels and embeddings): val and test
  always, the dataset's own validation split with a calibration split
  (``splits['val_dataset']``), the training split and the far-OOD sets only
  for ``ood``, the cross-source set only for ``cross_source``. The temperature
  is fitted on val, and val, test and temperature-scaled test are scored
  (:func:`score`). Then each evaluator of :func:`evals_of` is a pure function
  of those arrays: :func:`conformal_section`, :func:`selective_section`,
  :func:`ols_jax.embeddings.embedding_metrics`, :func:`ood_section`,
  :func:`cross_source_section`; ``shift`` streams the corruption suite of
  test through the model (:func:`ols_jax.shift.shift_records`).

  Args:
    dp: the run's compiled steps.
    state: the selected (best-validation) TrainState, on device.
    splits: the dataset's splits.
    config: the run config (``num_bins``, ``seed``, ``target_accuracy``,
      ``conformal_alpha``, ``channels``, ``evals`` and the evaluation input
      settings).
    run_fields: what describes the run (dataset, model, steps, devices, ...),
      copied into the summary first.
    start_time: ``time.time()`` at the run's start (for ``wall_time_s``).
    soft_labels: S after the last epoch, or None.
    ood_sources: far-OOD sets by name (data sources; converted to the run's
      channels and size here), or None.
    cross_source: another source's test images mapped to the run's classes,
      or None.
    log: a progress line callback.

  Returns:
    The :class:`FinalEvaluation`.
  """
  evals = evals_of(config)
  bins = int(config.num_bins)

  def forward(source) -> dict[str, np.ndarray]:
    return evaluate(dp, state, source, config, with_outputs=True, channels=config.channels)[1]

  def forward_images(images: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    return forward(sources.ArraySource(images, labels))

  val_out, test_out = forward(splits["val"]), forward(splits["test"])
  vd_out = forward(splits["val_dataset"]) if "val_dataset" in splits else None
  train_out, far_outs = None, {}
  if "ood" in evals:
    log("final evaluation: out-of-distribution scores")
    train_out = forward(splits["train"])
    for name, source in (ood_sources or {}).items():
      images, labels = shift_lib.working_array(source, image_size=config.image_size,
                                               channels=config.channels)
      far_outs[name] = forward_images(images, np.zeros_like(labels))
  cross_out = None
  if "cross_source" in evals and cross_source is not None:
    log(f"final evaluation: cross-source test ({cross_source.name})")
    cross_out = forward_images(cross_source.images, cross_source.labels)

  temperature = calibration.fit_temperature(val_out["logits"], val_out["label"])
  val = score(val_out["logits"], val_out["label"], num_bins=bins)
  test = score(test_out["logits"], test_out["label"], num_bins=bins)
  test_ts = score(test_out["logits"], test_out["label"], num_bins=bins, temperature=temperature)
  alpha = float(config.conformal_alpha)
  summary = dict(run_fields)
  if vd_out is not None:
    summary["val_dataset"] = score(vd_out["logits"], vd_out["label"], num_bins=bins).metrics
  if "conformal" in evals:
    summary["conformal"] = conformal_section(val_out, test_out, temperature, alpha)
  ood_fit = fit = thresholds = None
  if "ood" in evals:
    summary["ood"], ood_fit, fit = ood_section(
        train_out, val_out, test_out, far_outs, num_classes=int(val_out["logits"].shape[-1]))
    thresholds = summary["ood"]["thresholds"]
  if cross_out is not None:
    summary["cross_source"] = cross_source_section(
        cross_source, cross_out, val_out, temperature, num_bins=bins, alpha=alpha,
        thresholds=thresholds, fit=fit)
  if "shift" in evals:
    log("final evaluation: corruption suite on test")
    images, labels = shift_lib.working_array(splits["test"], image_size=config.image_size,
                                             channels=config.channels)
    summary["shift"] = shift_lib.shift_records(
        lambda x, y: forward_images(x, y)["logits"], images, labels,
        temperature=temperature, seed=int(config.seed),
        score_fn=lambda z, y, temperature=1.0: score(z, y, num_bins=bins,
                                                     temperature=temperature))
  summary.update({
      "wall_time_s": time.time() - start_time,
      "temperature": float(temperature),
      "val": val.metrics, "test": test.metrics, "test_ts": test_ts.metrics,
  })
  if "embedding" in evals:
    summary["embedding"] = embeddings_lib.embedding_metrics(
        test_out["embedding"], test_out["label"], seed=config.seed)
  summary["test_reliability"] = _json_ready(test.reliability)
  summary["test_ts_reliability"] = _json_ready(test_ts.reliability)
  if "selective" in evals:
    summary["selective"] = selective_section(val_out, test_ts, temperature,
                                             float(config.target_accuracy))
  summary["evals"] = list(evals)
  return FinalEvaluation(
      summary=summary,
      val_outputs={"logits": val_out["logits"], "label": val_out["label"]},
      test_outputs={k: test_out[k] for k in ("logits", "embedding", "label")},
      risk_coverage={"test": test.risk_coverage, "test_ts": test_ts.risk_coverage},
      soft_labels=soft_labels, ood_fit=ood_fit)


def selective_section(val_out, test_ts: Score, temperature: float,
                      target_accuracy: float) -> dict[str, Any]:
  """The abstention threshold chosen on temperature-scaled val confidences,
  applied to temperature-scaled test (:func:`ols_jax.selective.abstention`)."""
  val_conf, val_correct = selective.confidence_and_correct(
      selective.probabilities(val_out["logits"], temperature), val_out["label"])
  return selective.abstention(val_conf, val_correct, test_ts.confidence, test_ts.correct,
                              temperature=temperature, target_accuracy=target_accuracy)


def conformal_section(val_out, test_out, temperature: float, alpha: float) -> dict[str, Any]:
  """Split-conformal LAC and APS sets, calibrated on val, scored on test.

  The sets are built on the temperature-scaled probabilities (what predict
  publishes); validity needs val and test to be exchangeable.
  """
  val_p = selective.probabilities(val_out["logits"], temperature)
  test_p = selective.probabilities(test_out["logits"], temperature)
  out = conformal.conformal_summary(val_p, val_out["label"], test_p, test_out["label"],
                                    alpha=alpha)
  out["alpha"] = alpha
  out["probabilities"] = "temperature-scaled"
  return out


def _ood_scores(logits: np.ndarray, embedding: np.ndarray, fit) -> dict[str, np.ndarray]:
  return {"msp": ood_lib.msp(logits), "energy": ood_lib.energy(logits),
          "mahalanobis": ood_lib.mahalanobis_score(embedding, fit)}


def ood_section(train_out, val_out, test_out, far_outs: dict[str, dict[str, np.ndarray]],
                *, num_classes: int) -> tuple[dict[str, Any], dict[str, np.ndarray], Any]:
  """OOD scores, thresholds kept at :data:`OOD_TPR` of val, AUROC per far-OOD set.

  The Mahalanobis class means and shared covariance come from the training
  split's embeddings (evaluation path, no augmentation); far-OOD outputs come
  from images converted to the run's channels and size as predict converts
  its inputs.

  Args:
    train_out, val_out, test_out: per-example ``logits``, ``embedding`` and
      ``label`` of the splits.
    far_outs: per-example outputs of each far-OOD set, by name.
    num_classes: K.

  Returns:
    ``(summary, saved, fit)``: the JSON-ready section, the arrays predict
    needs (``ood_fit.npz``) and the Mahalanobis fit itself.
  """
  fit = ood_lib.fit_mahalanobis(train_out["embedding"], train_out["label"], num_classes)
  val_scores = _ood_scores(val_out["logits"], val_out["embedding"], fit)
  test_scores = _ood_scores(test_out["logits"], test_out["embedding"], fit)
  thresholds = {k: float(ood_lib.threshold_at_tpr(v, OOD_TPR)) for k, v in val_scores.items()}
  out_sets = {name: _ood_scores(out["logits"], out["embedding"], fit)
              for name, out in far_outs.items()}
  summary = {
      "tpr": OOD_TPR, "thresholds": thresholds,
      "test_flagged": {k: float(np.mean(v < thresholds[k])) for k, v in test_scores.items()},
      "val_flagged": {k: float(np.mean(v < thresholds[k])) for k, v in val_scores.items()},
      "sets": ood_lib.ood_summary(test_scores, out_sets, thresholds),
      "set_sizes": {name: int(len(out["logits"])) for name, out in far_outs.items()},
  }
  saved = {f"mahalanobis_{k}": np.asarray(v) for k, v in fit.items()}
  saved.update({f"threshold_{k}": np.asarray(v, np.float64) for k, v in thresholds.items()})
  return summary, saved, fit


@dataclasses.dataclass(frozen=True)
class CrossSource:
  """Another source's test images in the run's class space.

  Attributes:
    name: the source dataset.
    mapping: the class mapping in words (:mod:`ols_jax.data.cross_source`).
    images: ``(N, S, S[, 3])`` uint8 working images at the run's size.
    labels: ``(N,)`` labels in the run's class space.
    source_count: test images of the source before unmapped classes were dropped.
  """
  name: str
  mapping: str
  images: np.ndarray
  labels: np.ndarray
  source_count: int


def cross_source_section(cross: CrossSource, cross_out, val_out, temperature: float, *,
                         num_bins: int, alpha: float, thresholds: Optional[dict[str, float]],
                         fit) -> dict[str, Any]:
  """Scores the run on another source's mapped test images.

  Error, ECE, NLL (raw and with the run's temperature), conformal coverage
  and set size with the thresholds calibrated on the run's own val
  (calibration) split, and, when the ``ood`` evaluator ran, the fraction each
  OOD score flags at the run's thresholds: what a user of the model would see
  at a new centre.

  Args:
    cross: the mapped set (its name, mapping and labels).
    cross_out: its per-example ``logits``, ``embedding`` and ``label``.
    val_out: the run's val (calibration) outputs.
    temperature: the run's temperature.
    num_bins, alpha: the run's calibration bins and conformal level.
    thresholds, fit: the OOD thresholds and Mahalanobis fit, or None.

  Returns:
    The JSON-ready section (``results.json['cross_source']``).
  """
  num_classes = int(val_out["logits"].shape[-1])
  raw = score(cross_out["logits"], cross_out["label"], num_bins=num_bins)
  ts = score(cross_out["logits"], cross_out["label"], num_bins=num_bins, temperature=temperature)
  out = {
      "source": cross.name, "mapping": cross.mapping, "count": int(len(cross.labels)),
      "source_count": int(cross.source_count),
      "class_counts": np.bincount(cross.labels, minlength=num_classes).tolist(),
      "raw": raw.metrics, "ts": ts.metrics,
      "conformal": conformal_section(val_out, cross_out, temperature, alpha),
  }
  if thresholds is not None:
    scores = _ood_scores(cross_out["logits"], cross_out["embedding"], fit)
    out["ood_flagged"] = {k: float(np.mean(v < thresholds[k])) for k, v in scores.items()}
  return out


def _json_ready(curve: dict[str, Any]) -> dict[str, Any]:
  """A reliability curve with lists for arrays and floats for scalars."""
  return {k: (np.asarray(v).tolist() if np.ndim(v) else float(v)) for k, v in curve.items()}
