"""A run's human-readable outputs: report.md and PNG figures.

Everything shown is computed by the final evaluation
(:class:`ols_jax.evaluation.FinalEvaluation`); this module only renders it.
"""

from __future__ import annotations

import pathlib
from typing import Any, Optional

import jax
import numpy as np

from ols_jax import embeddings as embeddings_lib
from ols_jax import fileio
from ols_jax import plots
from ols_jax import run_files
from ols_jax.logging_utils import read_metrics

# Every metric column of a run's report: (key, header in a run's report.md,
# short header for tables or None when they leave it out, scale).
METRIC_COLUMNS = (
    ("top1_error", "Top-1 err (%)", "Top-1 err %", 100.0),
    ("top5_error", "Top-5 err (%)", "Top-5 err %", 100.0),
    ("ece", "ECE (%)", "ECE %", 100.0),
    ("adaptive_ece", "adaptive ECE (%)", "adaptive ECE %", 100.0),
    ("classwise_ece", "classwise ECE (%)", None, 100.0),
    ("mce", "MCE (%)", None, 100.0),
    ("calibration_gap", "conf - acc (%)", "conf-acc %", 100.0),
    ("nll", "NLL", "NLL", 1.0),
    ("brier", "Brier", "Brier", 1.0),
    ("auroc_macro", "AUROC (macro)", "AUROC", 1.0),
)
# (key, header, scale) of the run report's metrics table.
TABLE_METRICS = tuple((k, h, s) for k, h, _, s in METRIC_COLUMNS)


def metrics_table(rows: dict[str, dict[str, float]]) -> str:
  """A Markdown table: one row per named metric dict, the columns above."""
  head = "| | " + " | ".join(name for _, name, _ in TABLE_METRICS) + " |"
  sep = "|---" * (len(TABLE_METRICS) + 1) + "|"
  lines = [head, sep]
  for label, m in rows.items():
    cells = []
    for key, _, scale in TABLE_METRICS:
      v = m.get(key)
      cells.append("n/a" if v is None or not np.isfinite(v) else
                   (f"{v * scale:.2f}" if scale != 1.0 else f"{v:.4f}"))
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _fmt_pct(v: Optional[float]) -> str:
  return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.2f}%"


def selective_section(summary: dict[str, Any]) -> list[str]:
  """Report lines on AURC and the abstention threshold (empty if absent)."""
  sel = summary.get("selective")
  if not sel:
    return []
  t = sel["threshold"]
  rule = ("accept everything" if t <= 0.0 else
          "abstain on everything" if t > 1.0 else f"accept iff confidence >= {t:.4f}")
  return [
      "## Selective prediction (abstention)",
      "",
      f"AURC (area under the risk-coverage curve, lower is better): test "
      f"{summary['test']['aurc']:.4f}, test temperature-scaled "
      f"{summary['test_ts']['aurc']:.4f} (val {summary['val']['aurc']:.4f}).",
      "",
      f"Threshold for a target accuracy of {100 * sel['target_accuracy']:.1f}%, "
      f"chosen on val with temperature-scaled confidences (the lowest threshold "
      f"whose accepted val inputs reach the target): {rule}. Val: coverage "
      f"{_fmt_pct(sel['val_coverage'])}, accuracy {_fmt_pct(sel['val_accuracy'])}; "
      f"test: coverage {_fmt_pct(sel['test_coverage'])}, accuracy "
      f"{_fmt_pct(sel['test_accuracy'])}.",
      "",
  ]


def trust_section(summary: dict[str, Any]) -> list[str]:
  """Report lines on conformal sets, OOD scores and shift (empty if absent)."""
  lines = []
  conf = summary.get("conformal")
  if conf:
    lines += ["## Prediction sets (split conformal, calibrated on val)", "",
              f"Target coverage {100 * (1 - conf['alpha']):.0f}% on "
              f"{conf['probabilities']} probabilities.", "",
              "| method | test coverage | mean set size | empty sets |", "|---|---|---|---|"]
    for m in ("lac", "aps"):
      r = conf[m]
      lines.append(f"| {m.upper()} | {_fmt_pct(r['coverage'])} | {r['mean_size']:.2f} | "
                   f"{_fmt_pct(r['empty_fraction'])} |")
    lines.append("")
  ood = summary.get("ood")
  if ood:
    lines += ["## Out-of-distribution flag", "",
              f"Thresholds keep {100 * ood['tpr']:.0f}% of val; test scans flagged: " +
              ", ".join(f"{k} {_fmt_pct(v)}" for k, v in ood["test_flagged"].items()) + ".",
              ""]
    if ood["sets"]:
      lines += ["| far-OOD set | score | AUROC | FPR at 95% TPR | flagged |",
                "|---|---|---|---|---|"]
      for name, by_score in ood["sets"].items():
        for k, r in by_score.items():
          lines.append(f"| {name} ({ood['set_sizes'][name]}) | {k} | {r['auroc']:.4f} | "
                       f"{_fmt_pct(r['fpr_at_95tpr'])} | {_fmt_pct(r['flagged_fraction'])} |")
      lines.append("")
  shift = summary.get("shift")
  if shift:
    lines += ["## Under shift (corruption suite on test, mean over severities 1-5)", "",
              "| corruption | top-1 err (%) | ECE (%) | ECE after TS (%) | NLL |",
              "|---|---|---|---|---|"]
    for name in dict.fromkeys(r["corruption"] for r in shift):
      rows = [r for r in shift if r["corruption"] == name]
      lines.append(f"| {name} | {100 * np.mean([r['top1_error'] for r in rows]):.2f} | "
                   f"{100 * np.mean([r['ece'] for r in rows]):.2f} | "
                   f"{100 * np.mean([r['ece_ts'] for r in rows]):.2f} | "
                   f"{np.mean([r['nll'] for r in rows]):.4f} |")
    lines.append("")
  return lines


def _risk_coverage_figure(evaluated, path) -> str:
  """The test risk-coverage curves, raw and temperature-scaled, with their AURCs."""
  summary = evaluated.summary
  names = {"test": "raw", "test_ts": f"T={summary['temperature']:.2f}"}
  curves = {f"{names[key]} (AURC {summary[key]['aurc']:.4f})": curve
            for key, curve in evaluated.risk_coverage.items()}
  return plots.risk_coverage(
      curves, path, title=f"{summary['method']} / {summary['model']}: test risk-coverage",
      threshold_coverage=(summary["selective"]["test_coverage"] if "selective" in summary
                          else None))


def _figures(workdir: pathlib.Path, evaluated, tsne_samples: int) -> list[str]:
  """Draws the run's PNG figures into ``workdir/figures``; returns their paths."""
  summary = evaluated.summary
  test_out = evaluated.test_outputs
  fig_dir = workdir / run_files.FIGURES
  names = summary["class_names"]
  method = summary["method"]
  made = [
      plots.reliability_diagram(
          summary["test_reliability"], fig_dir / "reliability_test.png",
          title=f"{method} / {summary['model']}: test reliability"),
      plots.reliability_diagram(
          summary["test_ts_reliability"], fig_dir / "reliability_test_ts.png",
          title=f"{method}: test reliability after temperature scaling "
                f"(T={summary['temperature']:.2f})"),
      _risk_coverage_figure(evaluated, fig_dir / "risk_coverage_test.png"),
  ]
  records = [r for r in read_metrics(workdir / run_files.METRICS) if "eval/ece" in r]
  if records:
    made.append(plots.training_curves(records, fig_dir / "training_curves.png",
                                      title=f"{method} / {summary['model']}"))
  if evaluated.soft_labels is not None and summary["soft_label_row_entropy"]:
    made.append(plots.soft_label_heatmap(
        evaluated.soft_labels, names, fig_dir / "soft_labels.png",
        title=f"OLS soft labels after epoch {summary['num_epochs']}"))
    made.append(plots.row_entropy_curve(
        np.asarray(summary["soft_label_row_entropy"]), fig_dir / "soft_label_entropy.png"))
  if summary.get("shift"):
    made.append(plots.shift_curves(summary["shift"], fig_dir / "shift.png",
                                   title=f"{method} / {summary['model']}: test under corruption"))
  if tsne_samples > 0 and len(test_out["label"]) >= 10:
    coords, idx = embeddings_lib.tsne_2d(test_out["embedding"], seed=summary["seed"],
                                         max_samples=tsne_samples)
    made.append(plots.tsne_scatter(coords, test_out["label"][idx], names,
                                   fig_dir / "tsne_test.png",
                                   title=f"t-SNE of test embeddings ({method})"))
  return made


def write_report(workdir: pathlib.Path, config, evaluated) -> None:
  """Writes ``report.md`` and, if ``config.figures``, the PNG figures of a run.

  Only process 0 of a multi-process run writes; the others return at once.

  Args:
    workdir: the run's folder.
    config: the run config (``figures``, ``tsne_samples``; shown in full).
    evaluated: the run's :class:`ols_jax.evaluation.FinalEvaluation`.
  """
  if jax.process_index():
    return
  workdir = pathlib.Path(workdir)
  (workdir / run_files.FIGURES).mkdir(exist_ok=True)
  summary = evaluated.summary
  method = summary["method"]
  made = _figures(workdir, evaluated, config.tsne_samples) if config.figures else []
  emb = summary.get("embedding")
  lines = [
      f"# {method} / {summary['model']} on {summary['dataset']}",
      "",
      f"Seed {summary['seed']}, {summary['num_epochs']} epochs, selected epoch "
      f"{summary['best_epoch']} by validation {summary['select_metric']}; "
      f"{summary['device_count']} x {summary['device_kind']}; wall time "
      f"{summary['wall_time_s']:.0f} s. Split sizes: {summary['split_sizes']}.",
      "",
      "## Test metrics (the test split is evaluated once, with the selected checkpoint)",
      "",
      metrics_table({"test": summary["test"],
                     f"test, temperature-scaled (T={summary['temperature']:.3f}, fit on val)":
                         summary["test_ts"],
                     "val (selection split)": summary["val"],
                     **({"dataset's own val (scored only)": summary["val_dataset"]}
                        if "val_dataset" in summary else {})}),
      "",
      "ECE: top-label, equal-width bins `[lo, hi)` with the last bin closed; "
      "adaptive ECE: equal-mass bins; conf - acc > 0 means over-confident.",
      "",
  ] + ([
      "## Embeddings (penultimate layer, test split)",
      "",
      f"silhouette {emb['silhouette']:.4f}, {emb.get('k', 5)}-NN accuracy "
      f"{emb['knn_accuracy']:.4f}, intra/inter-class distance ratio "
      f"{emb['intra_inter_ratio']:.4f}.",
      "",
  ] if emb else []) + selective_section(summary) + trust_section(summary) + [
      "## Settings",
      "",
      "```",
      config.to_json_best_effort(indent=2) if hasattr(config, "to_json_best_effort") else str(config),
      "```",
  ]
  if made:
    lines += ["", "## Figures", ""]
    lines += [f"![{pathlib.Path(p).stem}](figures/{pathlib.Path(p).name})" for p in made]
  fileio.atomic_write_text(workdir / run_files.REPORT, "\n".join(lines) + "\n")
