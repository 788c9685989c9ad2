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


def final(dp: parallel.DataParallel, state, splits, config, *, run_fields: dict[str, Any],
          start_time: float, soft_labels: Optional[np.ndarray],
          ood_sources: Optional[dict[str, Any]] = None,
          cross_source: Optional["CrossSource"] = None,
          log=lambda message: None) -> FinalEvaluation:
  """Evaluates the selected state on val and test, once, into the run's summary.

  Fits the temperature on val; scores val raw, test raw and test
  temperature-scaled (:func:`score`); chooses the abstention threshold on
  temperature-scaled val confidences; measures the test embeddings;
  calibrates the conformal sets on val (:func:`conformal_section`); scores
  out-of-distribution inputs (:func:`ood_section`); with
  ``config.shift_eval``, scores the corruption suite on test
  (:mod:`ols_jax.shift`). With a calibration split, the dataset's own
  validation split (``splits['val_dataset']``) is scored too.

  Args:
    dp: the run's compiled steps.
    state: the selected (best-validation) TrainState, on device.
    splits: the dataset's splits (``val`` and ``test`` are used).
    config: the run config (``num_bins``, ``seed``, ``target_accuracy``,
      ``channels`` and the evaluation input settings).
    run_fields: what describes the run (dataset, model, steps, devices, ...),
      copied into the summary first.
    start_time: ``time.time()`` at the run's start (for ``wall_time_s``).
    soft_labels: S after the last epoch, or None.
    ood_sources: far-OOD sets by name (data sources; converted to the run's
      channels and size here), or None.
    cross_source: another source's test images mapped to the run's classes
      (:func:`cross_source_section`), or None.
    log: a progress line callback.

  Returns:
    The :class:`FinalEvaluation`.
  """
  _, val_out = evaluate(dp, state, splits["val"], config, with_outputs=True,
                        channels=config.channels)
  temperature = calibration.fit_temperature(val_out["logits"], val_out["label"])
  _, test_out = evaluate(dp, state, splits["test"], config, with_outputs=True,
                         channels=config.channels)
  val = score(val_out["logits"], val_out["label"], num_bins=config.num_bins)
  test = score(test_out["logits"], test_out["label"], num_bins=config.num_bins)
  test_ts = score(test_out["logits"], test_out["label"], num_bins=config.num_bins,
                  temperature=temperature)
  val_ts_confidence, val_ts_correct = selective.confidence_and_correct(
      selective.probabilities(val_out["logits"], temperature), val_out["label"])
  summary = dict(run_fields)
  if "val_dataset" in splits:
    _, vd_out = evaluate(dp, state, splits["val_dataset"], config, with_outputs=True,
                         channels=config.channels)
    summary["val_dataset"] = score(vd_out["logits"], vd_out["label"],
                                   num_bins=config.num_bins).metrics
  summary["conformal"] = conformal_section(val_out, test_out, temperature,
                                           float(config.conformal_alpha))
  log("final evaluation: out-of-distribution scores")
  _, train_out = evaluate(dp, state, splits["train"], config, with_outputs=True,
                          channels=config.channels)
  ood_summary, ood_fit, fit = ood_section(
      dp, state, config, train_out, val_out, test_out,
      ood_sources or {}, num_classes=int(val_out["logits"].shape[-1]))
  summary["ood"] = ood_summary
  if cross_source is not None:
    log(f"final evaluation: cross-source test ({cross_source.name})")
    summary["cross_source"] = cross_source_section(
        dp, state, config, cross_source, val_out, temperature,
        ood_summary["thresholds"], fit)
  if config.shift_eval:
    log("final evaluation: corruption suite on test")
    images, labels = shift_lib.working_array(splits["test"], image_size=config.image_size,
                                             channels=config.channels)
    summary["shift"] = shift_lib.shift_records(
        lambda x, y: _array_logits(dp, state, config, x, y), images, labels,
        temperature=temperature, seed=int(config.seed),
        score_fn=lambda z, y, temperature=1.0: score(z, y, num_bins=config.num_bins,
                                                     temperature=temperature))
  summary.update({
      "wall_time_s": time.time() - start_time,
      "temperature": float(temperature),
      "val": val.metrics, "test": test.metrics, "test_ts": test_ts.metrics,
      "embedding": embeddings_lib.embedding_metrics(
          test_out["embedding"], test_out["label"], seed=config.seed),
      "test_reliability": _json_ready(test.reliability),
      "test_ts_reliability": _json_ready(test_ts.reliability),
      "selective": selective.abstention(
          val_ts_confidence, val_ts_correct, test_ts.confidence, test_ts.correct,
          temperature=temperature, target_accuracy=config.target_accuracy),
  })
  return FinalEvaluation(
      summary=summary,
      val_outputs={"logits": val_out["logits"], "label": val_out["label"]},
      test_outputs={k: test_out[k] for k in ("logits", "embedding", "label")},
      risk_coverage={"test": test.risk_coverage, "test_ts": test_ts.risk_coverage},
      soft_labels=soft_labels, ood_fit=ood_fit)


def _array_logits(dp, state, config, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Logits of uint8 working images through the evaluation path."""
  _, out = evaluate(dp, state, sources.ArraySource(images, labels), config,
                    with_outputs=True, channels=config.channels)
  return out["logits"]


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


def ood_section(dp, state, config, train_out, val_out, test_out, ood_sources,
                *, num_classes: int) -> tuple[dict[str, Any], dict[str, np.ndarray], Any]:
  """OOD scores, thresholds kept at :data:`OOD_TPR` of val, AUROC per far-OOD set.

  The Mahalanobis class means and shared covariance come from the training
  split's embeddings (evaluation path, no augmentation). Far-OOD images are
  converted to the run's channels and size as predict converts its inputs.

  Returns:
    ``(summary, saved, fit)``: the JSON-ready section, the arrays predict
    needs and the Mahalanobis fit itself.
  """
  fit = ood_lib.fit_mahalanobis(train_out["embedding"], train_out["label"], num_classes)
  val_scores = _ood_scores(val_out["logits"], val_out["embedding"], fit)
  test_scores = _ood_scores(test_out["logits"], test_out["embedding"], fit)
  thresholds = {k: float(ood_lib.threshold_at_tpr(v, OOD_TPR)) for k, v in val_scores.items()}
  out_sets, sizes = {}, {}
  for name, source in ood_sources.items():
    images, labels = shift_lib.working_array(source, image_size=config.image_size,
                                             channels=config.channels)
    _, out = evaluate(dp, state, sources.ArraySource(images, np.zeros_like(labels)), config,
                      with_outputs=True, channels=config.channels)
    out_sets[name] = _ood_scores(out["logits"], out["embedding"], fit)
    sizes[name] = int(len(images))
  summary = {
      "tpr": OOD_TPR, "thresholds": thresholds,
      "test_flagged": {k: float(np.mean(v < thresholds[k])) for k, v in test_scores.items()},
      "val_flagged": {k: float(np.mean(v < thresholds[k])) for k, v in val_scores.items()},
      "sets": ood_lib.ood_summary(test_scores, out_sets, thresholds),
      "set_sizes": sizes,
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


def cross_source_section(dp, state, config, cross: CrossSource, val_out, temperature: float,
                         thresholds: dict[str, float], fit) -> dict[str, Any]:
  """Scores the run on another source's mapped test images.

  Error, ECE, NLL (raw and with the run's temperature), conformal coverage
  and set size with the thresholds calibrated on the run's own val
  (calibration) split, and the fraction each OOD score flags at the run's
  thresholds: what a user of the model would see at a new centre.

  Returns:
    The JSON-ready section (``results.json['cross_source']``).
  """
  num_classes = int(val_out["logits"].shape[-1])
  _, out = evaluate(dp, state, sources.ArraySource(cross.images, cross.labels), config,
                    with_outputs=True, channels=config.channels)
  raw = score(out["logits"], out["label"], num_bins=config.num_bins)
  ts = score(out["logits"], out["label"], num_bins=config.num_bins, temperature=temperature)
  scores = _ood_scores(out["logits"], out["embedding"], fit)
  return {
      "source": cross.name, "mapping": cross.mapping, "count": int(len(cross.labels)),
      "source_count": int(cross.source_count),
      "class_counts": np.bincount(cross.labels, minlength=num_classes).tolist(),
      "raw": raw.metrics, "ts": ts.metrics,
      "conformal": conformal_section(val_out, out, temperature, float(config.conformal_alpha)),
      "ood_flagged": {k: float(np.mean(v < thresholds[k])) for k, v in scores.items()},
  }


def _json_ready(curve: dict[str, Any]) -> dict[str, Any]:
  """A reliability curve with lists for arrays and floats for scalars."""
  return {k: (np.asarray(v).tolist() if np.ndim(v) else float(v)) for k, v in curve.items()}
