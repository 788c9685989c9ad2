"""Across cells: random-effects meta-analysis of per-cell paired effects.

A claim about *new datasets* treats the datasets (cells) as the units. Each
cell contributes one effect ``y_i`` (the mean over seeds of the paired
difference OLS - other) and its within-cell variance ``v_i`` (the variance of
that mean). The between-cell spread ``tau^2`` is estimated by DerSimonian &
Laird; the mean effect gets the Hartung-Knapp-Sidik-Jonkman interval (t with
``k - 1`` df) and the prediction interval for a new cell follows Higgins,
Thompson & Spiegelhalter (t with ``k - 2`` df). The fixed-effect
(inverse-variance) figure describes these cells only.

Within a cell, :func:`two_level_bootstrap` resamples seeds and then test
examples within each drawn seed, a check of the t interval over seeds.

References:
  DerSimonian & Laird, "Meta-analysis in clinical trials", Control Clin
  Trials 1986. Hartung & Knapp, Stat Med 2001; Sidik & Jonkman, Stat Med 2002.
  Higgins, Thompson & Spiegelhalter, "A re-evaluation of random-effects
  meta-analysis", J R Stat Soc A 2009.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from ols_jax.study import stats


@dataclasses.dataclass(frozen=True)
class MetaResult:
  """A random-effects summary of ``k`` cell effects.

  Attributes:
    k: number of cells.
    estimate: random-effects mean effect.
    low, high: its Hartung-Knapp interval (t, ``k - 1`` df).
    p: two-sided Hartung-Knapp p-value of mean effect 0.
    se: the Hartung-Knapp standard error.
    se_re: the ordinary random-effects standard error ``sqrt(1 / sum w*)``.
    tau2: DerSimonian-Laird between-cell variance.
    q: Cochran's Q; ``i2``: Higgins' I^2 (0 when ``q <= k - 1``).
    pred_low, pred_high: 95% prediction interval for a new cell (NaN for k < 3).
    fixed: inverse-variance fixed-effect mean with its normal interval
      (these cells only).
    fixed_p: its two-sided normal p-value.
  """
  k: int
  estimate: float
  low: float
  high: float
  p: float
  se: float
  se_re: float
  tau2: float
  q: float
  i2: float
  pred_low: float
  pred_high: float
  fixed: stats.Interval
  fixed_p: float

  @property
  def interval(self) -> stats.Interval:
    return stats.Interval(self.estimate, self.low, self.high)

  @property
  def prediction(self) -> stats.Interval:
    return stats.Interval(self.estimate, self.pred_low, self.pred_high)


def random_effects(effects: Sequence[float], variances: Sequence[float],
                   level: float = 0.95) -> MetaResult:
  """DerSimonian-Laird random-effects meta-analysis with Hartung-Knapp intervals.

  Args:
    effects: ``(k,)`` per-cell effects ``y_i``.
    variances: ``(k,)`` their within-cell variances ``v_i > 0``.
    level: coverage of the intervals.

  Returns:
    A :class:`MetaResult`.

  Raises:
    ValueError: fewer than two cells, mismatched lengths, a NaN, or a
      variance that is not positive.
  """
  from scipy import stats as scipy_stats  # pylint: disable=import-outside-toplevel
  y = np.asarray(effects, np.float64)
  v = np.asarray(variances, np.float64)
  if y.shape != v.shape or y.ndim != 1:
    raise ValueError(f"random_effects: effects {y.shape} and variances {v.shape} "
                     "must be 1-D of one length")
  k = len(y)
  if k < 2:
    raise ValueError(f"random_effects: expected at least 2 cells, got {k}")
  if np.isnan(y).any() or np.isnan(v).any():
    raise ValueError("random_effects: NaN among the effects or variances")
  if not (v > 0).all():
    raise ValueError(f"random_effects: variances must be > 0, got {v.tolist()}")
  w = 1.0 / v
  fixed_mean = float(np.sum(w * y) / np.sum(w))
  q = float(np.sum(w * (y - fixed_mean) ** 2))
  c = float(np.sum(w) - np.sum(w ** 2) / np.sum(w))
  # c is 0 only when one cell's weight swamps the rest to rounding: no spread is estimable.
  tau2 = max(0.0, (q - (k - 1)) / c) if c > 0 else 0.0
  ws = 1.0 / (v + tau2)
  mean = float(np.sum(ws * y) / np.sum(ws))
  se_re = float(np.sqrt(1.0 / np.sum(ws)))
  se = float(np.sqrt(np.sum(ws * (y - mean) ** 2) / ((k - 1) * np.sum(ws))))
  tcrit = float(scipy_stats.t.ppf(0.5 + level / 2, k - 1))
  if se > 0:
    p = float(2 * scipy_stats.t.sf(abs(mean) / se, k - 1))
  else:
    p = 0.0 if mean != 0 else 1.0
  if k >= 3:
    half = float(scipy_stats.t.ppf(0.5 + level / 2, k - 2) * np.sqrt(tau2 + se_re ** 2))
    pred = (mean - half, mean + half)
  else:
    pred = (float("nan"), float("nan"))
  se_fixed = float(np.sqrt(1.0 / np.sum(w)))
  z = float(scipy_stats.norm.ppf(0.5 + level / 2))
  fixed = stats.Interval(fixed_mean, fixed_mean - z * se_fixed, fixed_mean + z * se_fixed)
  fixed_p = float(2 * scipy_stats.norm.sf(abs(fixed_mean) / se_fixed))
  i2 = max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0
  return MetaResult(k=k, estimate=mean, low=mean - tcrit * se, high=mean + tcrit * se, p=p,
                    se=se, se_re=se_re, tau2=tau2, q=q, i2=i2, pred_low=pred[0],
                    pred_high=pred[1], fixed=fixed, fixed_p=fixed_p)


def cell_effect(diffs: Sequence[float]) -> tuple[float, float]:
  """One cell's effect and within-cell variance from its per-seed differences.

  Args:
    diffs: the paired per-seed differences of the cell (at least two).

  Returns:
    ``(mean, var(diffs, ddof=1) / n)``.
  """
  d = np.asarray(diffs, np.float64)
  if len(d) < 2:
    raise ValueError(f"cell_effect: expected at least 2 seeds, got {len(d)}")
  return float(d.mean()), float(d.var(ddof=1) / len(d))


def contrast_bootstrap(groups: Sequence[Sequence[Mapping[str, np.ndarray]]],
                       names: Sequence[str], weights: Sequence[float], *,
                       num_resamples: int = 2000, level: float = 0.95,
                       seed: int = 0) -> tuple[stats.Interval, float]:
  """Mean over seeds of a contrast ``sum_k w_k metric_k(run_k)``, resampling
  seeds then examples.

  Each resample draws ``len(groups)`` seeds with replacement and, for each
  drawn seed, its test examples with replacement, the same indices for every
  run of that seed (the runs of a seed share its reported examples); the
  statistic is the mean of the drawn seeds' contrasts. Its spread carries both
  sources of noise: the seeds and the test sample. A paired difference is
  ``weights=(-1, 1)``; an interaction (b2 - a2) - (b1 - a1) is
  ``weights=(1, -1, -1, 1)`` over ``(a1, b1, a2, b2)``.

  Args:
    groups: per seed, the :func:`ols_jax.study.stats.example_records` of each
      run in the contrast, in the order of ``names`` and ``weights``.
    names: a :data:`ols_jax.study.stats.METRICS` name per run.
    weights: the contrast's weight per run.
    num_resamples: bootstrap resamples.
    level: interval coverage.
    seed: resampling seed.

  Returns:
    ``(percentile interval around the observed mean, bootstrap standard error)``.
  """
  if not groups:
    raise ValueError("contrast_bootstrap: no seeds")
  if not len(names) == len(weights) == len(groups[0]):
    raise ValueError(f"contrast_bootstrap: {len(groups[0])} runs per seed, "
                     f"{len(names)} names, {len(weights)} weights")
  for runs in groups:
    sizes = {len(r["correct"]) for r in runs}
    if len(sizes) != 1:
      raise ValueError(f"contrast_bootstrap: {sorted(sizes)} examples in one seed")

  def contrast(runs, index=None):
    total = 0.0
    for rec, name, w in zip(runs, names, weights):
      total += w * stats.metric(rec, name, index)
    return total

  observed = float(np.mean([contrast(runs) for runs in groups]))
  rng = np.random.default_rng(seed)
  s = len(groups)
  values = np.empty(num_resamples)
  for i in range(num_resamples):
    total = 0.0
    for j in rng.integers(0, s, s):
      n = len(groups[j][0]["correct"])
      total += contrast(groups[j], rng.integers(0, n, n))
    values[i] = total / s
  return stats._percentile_interval(observed, values, level), float(values.std(ddof=1))  # pylint: disable=protected-access


def two_level_bootstrap(pairs: Sequence[tuple[Mapping[str, np.ndarray],
                                              Mapping[str, np.ndarray]]],
                        name: str, *, name_a: str = "", num_resamples: int = 2000,
                        level: float = 0.95, seed: int = 0) -> tuple[stats.Interval, float]:
  """Mean over seeds of ``metric(b) - metric(a)``: :func:`contrast_bootstrap`
  with weights ``(-1, 1)``.

  Args:
    pairs: per seed, the records of arms ``a`` and ``b`` on that seed's
      reported examples.
    name: the metric of ``b``; ``name_a`` that of ``a`` when it differs
      (``'nll_ts'``: CE + TS). The other arguments are
      :func:`contrast_bootstrap`'s, and so is the return value.
  """
  return contrast_bootstrap(pairs, (name_a or name, name), (-1.0, 1.0),
                            num_resamples=num_resamples, level=level, seed=seed)
