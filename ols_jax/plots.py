"""PNG figures: reliability diagrams, soft-label heatmaps, curves, t-SNE.

Matplotlib is imported lazily with the Agg backend; figures are built as
``matplotlib.figure.Figure`` objects (no pyplot state) and written atomically
(:mod:`ols_jax.fileio`).

References:
  Guo et al., "On Calibration of Modern Neural Networks", ICML 2017 (Fig. 1).
  Zhang et al., "Delving Deep into Label Smoothing", IEEE TIP 2021.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ols_jax import fileio


def _figure(**kwargs):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  return Figure(**kwargs)


def _save(fig, path, dpi: int = 120, tight: bool = True) -> str:
  """Writes ``fig`` as PNG to ``path`` atomically; returns the path.

  ``tight=False`` keeps the whole canvas (no cropping to the drawn content).
  ``path`` may also be a binary file object (e.g. ``io.BytesIO``, for the
  TensorBoard images); it is then written to directly and returned.
  """
  bbox = "tight" if tight else None
  if hasattr(path, "write"):
    fig.savefig(path, format="png", dpi=dpi, bbox_inches=bbox)
    return path
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with fileio.atomic_open(path, "wb") as f:
    fig.savefig(f, format="png", dpi=dpi, bbox_inches=bbox)
  return path


def _as_curve(curve_or_sums: Mapping[str, Any]) -> dict[str, Any]:
  if "bin_count" in curve_or_sums:
    from ols_jax import metrics  # pylint: disable=g-import-not-at-top
    return metrics.reliability_curve(curve_or_sums)
  return dict(curve_or_sums)


def _reliability_axes(ax, curve, title=None, show_legend=True):
  """Accuracy bars, gap shading and the diagonal on one axes."""
  edges = np.asarray(curve["edges"], np.float64)
  width = np.diff(edges)
  left = edges[:-1]
  acc = np.nan_to_num(np.asarray(curve["accuracy"], np.float64))
  conf = np.asarray(curve["confidence"], np.float64)
  nonempty = np.asarray(curve["count"]) > 0
  ax.bar(left, acc, width=width, align="edge", color="#4c72b0",
         edgecolor="black", linewidth=0.6, label="Outputs")
  gap_low = np.where(nonempty, np.minimum(acc, conf), 0.0)
  gap_h = np.where(nonempty, np.abs(conf - acc), 0.0)
  ax.bar(left, gap_h, bottom=gap_low, width=width, align="edge",
         color="#dd8452", alpha=0.45, edgecolor="#c44e52", hatch="//",
         linewidth=0.6, label="Gap")
  ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=1.0,
          label="Perfect calibration")
  ece = curve.get("ece", float("nan"))
  ax.plot([], [], " ", label=f"ECE = {100.0 * ece:.2f}%")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_ylabel("Accuracy")
  ax.set_aspect("auto")
  if title:
    ax.set_title(title)
  if show_legend:
    ax.legend(loc="upper left", fontsize=8, framealpha=0.85)


def reliability_diagram(curve_or_sums: Mapping[str, Any], path,
                        title: str = "Reliability diagram") -> str:
  """Reliability diagram with a confidence histogram below it.

  Args:
    curve_or_sums: a :func:`ols_jax.metrics.reliability_curve` dict or
      :func:`ols_jax.metrics.eval_sums` sums.
    path: output PNG path.
    title: figure title.

  Returns:
    ``path`` as a string.

  References:
    Guo et al., ICML 2017, Fig. 1.
  """
  curve = _as_curve(curve_or_sums)
  fig = _figure(figsize=(5.0, 6.2))
  grid = fig.add_gridspec(2, 1, height_ratios=[3, 1], hspace=0.08)
  ax = fig.add_subplot(grid[0])
  _reliability_axes(ax, curve, title)
  ax.tick_params(labelbottom=False)
  hist = fig.add_subplot(grid[1], sharex=ax)
  edges = np.asarray(curve["edges"], np.float64)
  count = np.asarray(curve["count"], np.float64)
  total = max(float(np.sum(count)), 1.0)
  hist.bar(edges[:-1], count / total, width=np.diff(edges), align="edge",
           color="#8c8c8c", edgecolor="black", linewidth=0.6)
  acc_all = curve.get("accuracy_overall")
  conf_all = curve.get("mean_confidence")
  if acc_all is not None and np.isfinite(acc_all):
    hist.axvline(acc_all, color="#4c72b0", linestyle="--", linewidth=1.2,
                 label="Accuracy")
  if conf_all is not None and np.isfinite(conf_all):
    hist.axvline(conf_all, color="#c44e52", linestyle="-", linewidth=1.2,
                 label="Avg. confidence")
  if hist.get_legend_handles_labels()[0]:
    hist.legend(loc="upper left", fontsize=7)
  hist.set_xlabel("Confidence")
  hist.set_ylabel("Fraction")
  return _save(fig, path)


def combined_reliability(curves: Mapping[str, Mapping[str, Any]], path,
                         title: Optional[str] = None) -> str:
  """Reliability diagrams of several methods side by side.

  Args:
    curves: ``{method name: curve or sums}``.
    path: output PNG path.
    title: optional figure title.

  Returns:
    ``path`` as a string.
  """
  names = list(curves)
  if not names:
    raise ValueError("combined_reliability: no curves")
  ncols = min(len(names), 4)
  nrows = math.ceil(len(names) / ncols)
  fig = _figure(figsize=(3.6 * ncols, 3.6 * nrows))
  axes = fig.subplots(nrows, ncols, squeeze=False)
  for i, name in enumerate(names):
    ax = axes[i // ncols][i % ncols]
    _reliability_axes(ax, _as_curve(curves[name]), str(name))
    ax.set_xlabel("Confidence")
  for j in range(len(names), nrows * ncols):
    axes[j // ncols][j % ncols].set_visible(False)
  if title:
    fig.suptitle(title)
  fig.tight_layout()  # keeps each title clear of the x labels of the row above
  return _save(fig, path)


def _short(name: str, max_len: int) -> str:
  """Shortens a class name, keeping its last word (e.g. the MRI sequence in
  'Astrocitoma T1C+') so that names differing only at the end stay distinct."""
  name = str(name).replace("_", " ")
  if len(name) <= max_len:
    return name
  head, _, last = name.rpartition(" ")
  if head and len(last) + 5 <= max_len:  # at least 3 characters of the head
    keep = max_len - len(last) - 2
    return name[:keep] + "\u2026 " + last
  return name[:max_len - 1] + "\u2026"


def soft_label_heatmap(S: np.ndarray, class_names: Optional[Sequence[str]],  # pylint: disable=invalid-name
                       path, title: str = "Soft labels") -> str:
  """Heatmap of a ``(K, K)`` soft-label matrix (rows = true class).

  Args:
    S: ``(K, K)`` matrix.
    class_names: ``K`` names (indices when None); shortened for large ``K``.
    path: output PNG path.
    title: figure title.

  Returns:
    ``path`` as a string.
  """
  s = np.asarray(S, np.float64)
  if s.ndim != 2 or s.shape[0] != s.shape[1]:
    raise ValueError(f"soft_label_heatmap: expected (K, K), got {s.shape}")
  k = s.shape[0]
  names = [str(i) for i in range(k)] if class_names is None else list(class_names)
  if len(names) != k:
    raise ValueError(f"soft_label_heatmap: {len(names)} names for K={k}")
  max_len = 18 if k <= 12 else (12 if k <= 40 else 9)
  names = [_short(n, max_len) for n in names]
  side = float(np.clip(3.0 + 0.16 * k, 5.0, 17.0))
  cell_pt = 72.0 * 0.8 * side / k  # approximate cell size in points
  font = float(np.clip(0.55 * cell_pt, 4.0, 10.0))
  fig = _figure(figsize=(side + 1.2, side))
  ax = fig.add_subplot(1, 1, 1)
  im = ax.imshow(s, cmap="viridis", interpolation="nearest", aspect="equal")
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
  ticks = np.arange(k)
  ax.set_xticks(ticks)
  ax.set_yticks(ticks)
  ax.set_xticklabels(names, rotation=90, fontsize=font)
  ax.set_yticklabels(names, fontsize=font)
  ax.set_xlabel("Soft-label class")
  ax.set_ylabel("True class")
  ax.set_title(title)
  if k <= 12:
    finite = s[np.isfinite(s)]
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 1.0
    mid = 0.5 * (lo + hi)
    for i in range(k):
      for j in range(k):
        ax.text(j, i, f"{s[i, j]:.2f}", ha="center", va="center",
                fontsize=max(font - 1.0, 5.0),
                color="black" if s[i, j] > mid else "white")
  return _save(fig, path)


def row_entropy_curve(entropies: np.ndarray, path,
                      title: str = "Soft-label row entropy") -> str:
  """Mean row entropy of ``S`` per epoch with a min-max band.

  Args:
    entropies: ``(epochs, K)`` entropies (nats) of the rows of ``S``.
    path: output PNG path.
    title: figure title.

  Returns:
    ``path`` as a string.
  """
  e = np.asarray(entropies, np.float64)
  if e.ndim == 1:
    e = e[:, None]
  if e.ndim != 2:
    raise ValueError(f"row_entropy_curve: expected (epochs, K), got {e.shape}")
  epochs = np.arange(1, e.shape[0] + 1)
  fig = _figure(figsize=(6.0, 4.0))
  ax = fig.add_subplot(1, 1, 1)
  ax.fill_between(epochs, e.min(axis=1), e.max(axis=1), color="#4c72b0",
                  alpha=0.25, label="min-max over classes")
  ax.plot(epochs, e.mean(axis=1), "-o", color="#4c72b0", markersize=3,
          label="mean")
  if e.shape[1] > 1:
    ax.axhline(math.log(e.shape[1]), color="gray", linestyle="--",
               linewidth=1.0, label=f"uniform (log {e.shape[1]})")
  ax.set_xlabel("Epoch")
  ax.set_ylabel("Entropy (nats)")
  ax.set_title(title)
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  return _save(fig, path)


def alpha_curve(by_alpha: Mapping[float, Sequence[Mapping[str, Any]]], path) -> str:
  """Test ECE and top-1 error against the OLS alpha, raw and after TS.

  Args:
    by_alpha: alpha -> the ``results.json`` dicts of its runs (one per seed).
    path: output PNG path.

  Returns:
    ``path`` as a string.
  """
  fig = _figure(figsize=(8, 3.2))
  alphas = sorted(by_alpha)
  for i, (key, label) in enumerate((("ece", "test ECE (%)"),
                                    ("top1_error", "test top-1 error (%)"))):
    ax = fig.add_subplot(1, 2, i + 1)
    for split, style in (("test", "o-"), ("test_ts", "s--")):
      means = [100 * np.mean([r[split][key] for r in by_alpha[a]]) for a in alphas]
      line, = ax.plot(alphas, means, style,
                      label="after TS" if split == "test_ts" else "raw")
      for a in alphas:
        ax.scatter([a] * len(by_alpha[a]), [100 * r[split][key] for r in by_alpha[a]],
                   s=10, alpha=0.35, color=line.get_color())
    ax.set_xlabel("alpha (weight of the hard-label term)")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle("OLS alpha sweep (dots: single seeds)")
  fig.tight_layout()
  return _save(fig, path, tight=False)


def s_entropy_runs(curves: Mapping[tuple[str, str, int], np.ndarray],
                   num_classes: int, path) -> str:
  """Mean row entropy of ``S`` per epoch, one line per OLS run.

  Args:
    curves: ``(model, variant, seed)`` -> per-epoch mean row entropy (nats).
    num_classes: ``K``; the uniform entropy ``log K`` is drawn for reference.
    path: output PNG path.

  Returns:
    ``path`` as a string.
  """
  fig = _figure(figsize=(6, 3.6))
  ax = fig.add_subplot(1, 1, 1)
  colors = {}
  one_model = len({m for m, _, _ in curves}) == 1
  for (model, variant, seed), ent in curves.items():
    color = colors.setdefault((model, variant), f"C{len(colors) % 10}")
    label = f"{variant} seed {seed}" if one_model else f"{model} {variant} seed {seed}"
    ax.plot(np.arange(1, len(ent) + 1), ent, marker=".", color=color,
            ls=("-", "--", ":", "-.")[seed % 4], label=label)
  ax.axhline(np.log(num_classes), color="gray", ls=":",
             label=f"uniform (log {num_classes})")
  ax.set_xlabel("epoch")
  ax.xaxis.get_major_locator().set_params(integer=True)
  ax.set_ylabel("mean row entropy of S (nats)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=6, ncol=2)
  fig.tight_layout()
  return _save(fig, path, tight=False)


def risk_coverage(curves: Mapping[str, Mapping[str, Any]], path,
                  title: str = "Risk-coverage curve",
                  threshold_coverage: Optional[float] = None) -> str:
  """Selective risk versus coverage, one line per named curve.

  Args:
    curves: ``{label: {"coverage", "risk"}}`` (from
      :func:`ols_jax.selective.risk_coverage_curve`); labels may hold the AURC.
    path: output PNG path.
    title: figure title.
    threshold_coverage: optional coverage of a chosen abstention threshold,
      drawn as a vertical line.

  Returns:
    ``path`` as a string.

  References:
    Geifman & El-Yaniv, "Selective Classification for Deep Neural Networks",
    NeurIPS 2017.
  """
  if not curves:
    raise ValueError("risk_coverage: no curves")
  fig = _figure(figsize=(6.0, 4.5))
  ax = fig.add_subplot(1, 1, 1)
  for (label, curve), style in zip(curves.items(), ("-", "--", ":", "-.") * 8):
    ax.plot(np.asarray(curve["coverage"]), np.asarray(curve["risk"]), style,
            linewidth=1.5, label=str(label))
  if threshold_coverage is not None and 0.0 < threshold_coverage <= 1.0:
    ax.axvline(threshold_coverage, color="gray", linestyle=":", linewidth=1.0,
               label=f"threshold (coverage {threshold_coverage:.2f})")
  ax.set_xlim(0, 1)
  ax.set_ylim(bottom=0)
  ax.set_xlabel("Coverage")
  ax.set_ylabel("Selective risk (error among accepted)")
  ax.set_title(title)
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  return _save(fig, path)


def _severity_panels(curves: Mapping[str, Mapping[str, Sequence[float]]], path, title: str,
                     xlabel: str) -> str:
  """Error, ECE and ECE after TS (three panels) against severity, one line per curve."""
  fig = _figure(figsize=(13.0, 4.0))
  panels = (("top1_error", "Top-1 error (%)"), ("ece", "ECE (%)"),
            ("ece_ts", "ECE after TS (%)"))
  styles = ("-o", "-s", "-^", "-v", "--o", "--s", "--^", "--v") * 4
  for i, (key, label) in enumerate(panels):
    ax = fig.add_subplot(1, 3, i + 1)
    for (name, c), style in zip(curves.items(), styles):
      ax.plot(c["severity"], 100 * np.asarray(c[key]), style, markersize=3, linewidth=1.0,
              label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    if i == 0:
      ax.legend(fontsize=7)
  fig.suptitle(title)
  return _save(fig, path)


def shift_curves(records: Sequence[Mapping[str, Any]], path,
                 title: str = "Under shift") -> str:
  """Top-1 error and ECE (raw and with the run's T) against corruption severity.

  Args:
    records: :func:`ols_jax.shift.shift_records` output (the clean set is
      severity 0 of every line).
    path: output PNG path.
    title: figure title.

  Returns:
    ``path`` as a string.
  """
  clean = [r for r in records if r["severity"] == 0]
  names = sorted({r["corruption"] for r in records if r["severity"] > 0})
  if not names:
    raise ValueError("shift_curves: no corrupted records")
  curves = {}
  for name in names:
    rows = clean[:1] + sorted((r for r in records if r["corruption"] == name),
                              key=lambda r: r["severity"])
    curves[name] = {k: [r[k] for r in rows]
                    for k in ("severity", "top1_error", "ece", "ece_ts")}
  return _severity_panels(curves, path, title, "Severity (0 = clean)")


def arm_shift_curves(curves: Mapping[str, Mapping[str, Sequence[float]]], path,
                     title: str = "Calibration under shift") -> str:
  """Each arm's ECE and error against severity, averaged over corruptions.

  Args:
    curves: ``{arm: {"severity": [0, 1, ..], "ece": [...], "ece_ts": [...],
      "top1_error": [...]}}`` (means over corruptions and seeds; severity 0
      is the clean test split).
    path: output PNG path.
    title: figure title.

  Returns:
    ``path`` as a string.
  """
  if not curves:
    raise ValueError("arm_shift_curves: no arms")
  return _severity_panels(curves, path, title, "Severity (0 = clean; mean over corruptions)")


_TRAINING_PANELS = (
    ("train/loss", "Train loss"),
    ("train/accuracy", "Train accuracy"),
    ("eval/top1_error", "Val top-1 error"),
    ("eval/ece", "Val ECE"),
)


def training_curves(records: Sequence[Mapping[str, Any]], path,
                    title: Optional[str] = None) -> str:
  """Train loss / accuracy and validation error / ECE versus epoch.

  Args:
    records: ``metrics.jsonl``-style dicts with ``epoch`` and any of
      ``train/loss``, ``train/accuracy``, ``eval/top1_error``, ``eval/ece``;
      missing or non-finite values are skipped.
    path: output PNG path.
    title: optional figure title.

  Returns:
    ``path`` as a string.
  """
  fig = _figure(figsize=(10.0, 7.0))
  axes = fig.subplots(2, 2, squeeze=False).reshape(-1)
  for ax, (key, label) in zip(axes, _TRAINING_PANELS):
    xs, ys = [], []
    for i, rec in enumerate(records):
      value = rec.get(key)
      if value is None:
        continue
      try:
        value = float(value)
      except (TypeError, ValueError):
        continue
      if not math.isfinite(value):
        continue
      xs.append(float(rec.get("epoch", i)))
      ys.append(value)
    if xs:
      ax.plot(xs, ys, "-o", markersize=3)
    else:
      ax.text(0.5, 0.5, "no data", ha="center", va="center",
              transform=ax.transAxes, color="gray")
    ax.set_title(label)
    ax.set_xlabel("Epoch")
    ax.grid(alpha=0.3)
  if title:
    fig.suptitle(title)
  return _save(fig, path)


def tsne_scatter(coords: np.ndarray, labels: np.ndarray,
                 class_names: Optional[Sequence[str]], path,
                 title: str = "t-SNE") -> str:
  """Scatter plot of 2-D embeddings coloured by class.

  Args:
    coords: ``(M, 2)`` coordinates (e.g. from ``embeddings.tsne_2d``).
    labels: ``(M,)`` integer labels.
    class_names: names indexed by label (indices when None).
    path: output PNG path.
    title: figure title.

  Returns:
    ``path`` as a string.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  coords = np.asarray(coords, np.float64)
  labels = np.asarray(labels).astype(np.int64)
  if coords.ndim != 2 or coords.shape[1] != 2 or labels.shape != coords.shape[:1]:
    raise ValueError(f"tsne_scatter: expected (M, 2) and (M,), got "
                     f"{coords.shape} and {labels.shape}")
  classes = np.unique(labels)
  if len(classes) <= 10:
    cmap = matplotlib.colormaps["tab10"]
    colours = [cmap(i) for i in range(len(classes))]
  elif len(classes) <= 20:
    cmap = matplotlib.colormaps["tab20"]
    colours = [cmap(i) for i in range(len(classes))]
  else:
    cmap = matplotlib.colormaps["turbo"]
    colours = [cmap(x) for x in np.linspace(0.0, 1.0, len(classes))]
  fig = _figure(figsize=(6.5, 6.0))
  ax = fig.add_subplot(1, 1, 1)
  size = float(np.clip(3000.0 / max(coords.shape[0], 1), 2.0, 20.0))
  for colour, c in zip(colours, classes):
    sel = labels == c
    if class_names is not None and 0 <= c < len(class_names):
      name = _short(class_names[c], 18)
    else:
      name = str(c)
    ax.scatter(coords[sel, 0], coords[sel, 1], s=size, color=colour,
               label=name, alpha=0.8, linewidths=0)
  if len(classes) <= 20:
    ax.legend(fontsize=7, markerscale=2.0, loc="best", framealpha=0.8)
  ax.set_xticks([])
  ax.set_yticks([])
  ax.set_title(title)
  return _save(fig, path)


_ARM_PANELS = (("eval/top1_error", "Validation top-1 error"), ("eval/nll", "Validation NLL"),
               ("eval/ece", "Validation ECE"), ("train/accuracy", "Train accuracy (epoch)"))


def arm_curves(curves: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]], path,
               title: Optional[str] = None) -> str:
  """Per-epoch validation curves of several arms, one line per arm and seed.

  Args:
    curves: ``{arm: [records of seed 0, records of seed 1, ...]}`` with the
      epoch-end ``metrics.jsonl`` records (those holding ``eval/...``).
    path: output PNG path.
    title: optional figure title.

  Returns:
    ``path`` as a string.
  """
  fig = _figure(figsize=(11.0, 7.5))
  axes = fig.subplots(2, 2, squeeze=False).reshape(-1)
  colors = ["C0", "C1", "C2", "C3", "C4", "C5", "C6", "C7"]
  for ax, (key, label) in zip(axes, _ARM_PANELS):
    for i, (arm, seeds) in enumerate(curves.items()):
      for j, records in enumerate(seeds):
        pts = [(float(r["epoch"]), float(r[key])) for r in records
               if key in r and "eval/top1_error" in r and math.isfinite(float(r[key]))]
        if not pts:
          continue
        xs, ys = zip(*pts)
        ax.plot(xs, ys, "-", color=colors[i % len(colors)], alpha=0.9 if j == 0 else 0.45,
                linewidth=1.4 if j == 0 else 0.9, label=arm if j == 0 else None)
    ax.set_title(label)
    ax.set_xlabel("Epoch")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return _save(fig, path)
