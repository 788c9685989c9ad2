"""Paired comparisons of two methods: bootstrap over test examples, interval over seeds.

Two runs evaluated on the same test split are compared *paired*: the same
resampled example indices go into both arms, so the interval is for the
difference ``metric(b) - metric(a)`` and the shared difficulty of the examples
cancels. Over seeds, the per-seed differences get a Student-t interval of
their mean (with n = 3 seeds the t quantile is 4.30: wide, by design).

Per-example records (:func:`example_records`) are what the metrics need:
correctness, top-label confidence, log-probability of the true class and the
Brier score, raw and after temperature scaling (AURC from confidence and
correctness, adaptive ECE from confidence and correctness with equal-mass
bins). Records collected before the Brier arrays existed still load: a metric
whose arrays are missing is NaN (:func:`available` says which are there), and
the report tables print it as n/a.

A bootstrap draws the same example indices for every metric of a seed
(``default_rng(seed)``), so :class:`ResampleCache` computes each run's metric
on every resample once and any paired difference of two runs on the same seed
is a difference of two cached vectors (the same numbers
:func:`paired_bootstrap` gives, far fewer passes).

References:
  Efron & Tibshirani, "An Introduction to the Bootstrap", 1993 (percentile
  intervals). Guo et al., ICML 2017 (ECE with equal-width bins). Nixon et al.,
  CVPR-W 2019 (adaptive ECE, equal-mass bins). Brier, Monthly Weather Review
  1950 (Brier score).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence

import numpy as np

from ols_jax import metrics as metrics_lib

METRICS = ("top1_error", "ece", "nll", "ece_ts", "nll_ts", "aurc", "aurc_ts",
           "adaptive_ece", "adaptive_ece_ts", "brier", "brier_ts")

# The record arrays each metric needs.
_NEEDS = {"top1_error": ("correct",), "ece": ("conf", "correct"),
          "ece_ts": ("conf_ts", "correct"), "nll": ("logp",), "nll_ts": ("logp_ts",),
          "aurc": ("conf", "correct"), "aurc_ts": ("conf_ts", "correct"),
          "adaptive_ece": ("conf", "correct"), "adaptive_ece_ts": ("conf_ts", "correct"),
          "brier": ("brier",), "brier_ts": ("brier_ts",)}


def example_records(logits: np.ndarray, labels: np.ndarray,
                    temperature: float = 1.0) -> dict[str, np.ndarray]:
  """Per-example statistics of a run's test logits.

  Args:
    logits: ``(N, K)`` logits.
    labels: ``(N,)`` labels.
    temperature: the temperature fitted on validation.

  Returns:
    ``correct`` (bool), ``conf``, ``logp`` (log-probability of the label),
    ``brier`` (``sum_k (p_k - onehot_k)^2``), and ``conf_ts``, ``logp_ts``,
    ``brier_ts`` after dividing the logits by ``temperature``.
  """
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels, np.int64)
  rows = np.arange(len(labels))
  out = {"correct": np.argmax(logits, -1) == labels}
  for suffix, t in (("", 1.0), ("_ts", float(temperature))):
    z = logits / t
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    probs = np.exp(logp)
    onehot = np.zeros_like(probs)
    onehot[rows, labels] = 1.0
    out["conf" + suffix] = np.exp(logp.max(-1))
    out["logp" + suffix] = logp[rows, labels]
    out["brier" + suffix] = np.square(probs - onehot).sum(-1)
  return out


def bin_sums(conf: np.ndarray, correct: np.ndarray, num_bins: int = 15) -> dict:
  """Per-bin sums of per-example records (:func:`ols_jax.metrics.host_bin_sums`)."""
  return metrics_lib.host_bin_sums(conf, correct, num_bins)


def ece(conf: np.ndarray, correct: np.ndarray, num_bins: int = 15) -> float:
  """Top-label ECE of records (:func:`ols_jax.metrics.ece_from_sums`)."""
  return metrics_lib.ece_from_sums(metrics_lib.host_bin_sums(conf, correct, num_bins))


def adaptive_ece(conf: np.ndarray, correct: np.ndarray, num_bins: int = 15) -> float:
  """Adaptive ECE of records (:func:`ols_jax.metrics.adaptive_ece_from_confidence`)."""
  return metrics_lib.adaptive_ece_from_confidence(conf, correct, num_bins)


def available(records: Optional[Mapping[str, np.ndarray]], name: str) -> bool:
  """Whether ``records`` hold the arrays metric ``name`` needs."""
  if name not in _NEEDS:
    raise ValueError(f"metric: expected one of {METRICS}, got {name!r}")
  return records is not None and all(k in records for k in _NEEDS[name])


def metric(records: Mapping[str, np.ndarray], name: str,
           index: np.ndarray | None = None) -> float:
  """One of :data:`METRICS` on the examples ``index`` (default: all).

  NaN when ``records`` lack the metric's arrays (records collected before
  that metric existed).
  """
  if not available(records, name):
    return float("nan")
  r = (records if index is None
       else {k: records[k][index] for k in _NEEDS[name]})
  if name == "top1_error":
    return float(1.0 - r["correct"].mean())
  if name in ("ece", "ece_ts"):
    return ece(r["conf" + name[3:]], r["correct"])
  if name in ("nll", "nll_ts"):
    return float(-r["logp" + name[3:]].mean())
  if name in ("aurc", "aurc_ts"):
    from ols_jax import selective  # pylint: disable=import-outside-toplevel
    return selective.aurc(r["conf" + name[4:]], r["correct"])
  if name in ("adaptive_ece", "adaptive_ece_ts"):
    return adaptive_ece(r["conf" + name[len("adaptive_ece"):]], r["correct"])
  return float(np.mean(r[name]))  # brier, brier_ts


@dataclasses.dataclass(frozen=True)
class Interval:
  """A point estimate and a two-sided interval."""
  estimate: float
  low: float
  high: float

  @property
  def includes_zero(self) -> bool:
    return self.low <= 0.0 <= self.high

  @property
  def missing(self) -> bool:
    """True when the estimate is NaN (a metric the records do not hold)."""
    return bool(np.isnan(self.estimate))

  def format(self, scale: float = 1.0, digits: int = 2) -> str:
    if self.missing:
      return "n/a"
    f = f"{{:+.{digits}f}}"
    return (f"{f.format(scale * self.estimate)} "
            f"[{f.format(scale * self.low)}, {f.format(scale * self.high)}]")


def resample_indices(n: int, num_resamples: int, seed: int):
  """The bootstrap's example indices, one ``(n,)`` array per resample, in order."""
  rng = np.random.default_rng(seed)
  for _ in range(num_resamples):
    yield rng.integers(0, n, n)


def resampled(records: Mapping[str, np.ndarray], names: Sequence[str], *,
              num_resamples: int = 2000, seed: int = 0) -> dict[str, np.ndarray]:
  """Every metric of ``names`` on every bootstrap resample of ``seed``.

  Returns:
    ``{name: (num_resamples,) values}``; all NaN for a metric the records do
    not hold.
  """
  have = [m for m in names if available(records, m)]
  out = {m: np.full(num_resamples, np.nan) for m in names}
  if have:
    keys = sorted({k for m in have for k in _NEEDS[m]})
    for i, idx in enumerate(resample_indices(len(records["correct"]), num_resamples, seed)):
      r = {k: records[k][idx] for k in keys}
      for m in have:
        out[m][i] = metric(r, m)
  return out


def _percentile_interval(estimate: float, diffs: np.ndarray, level: float) -> Interval:
  if np.isnan(estimate) or np.isnan(diffs).any():
    return Interval(float("nan"), float("nan"), float("nan"))
  tail = 100 * (1 - level) / 2
  low, high = np.percentile(diffs, [tail, 100 - tail])
  return Interval(float(estimate), float(low), float(high))


def paired_bootstrap(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray],
                     name: str, *, num_resamples: int = 2000, level: float = 0.95,
                     seed: int = 0, name_a: Optional[str] = None) -> Interval:
  """Difference ``metric(b) - metric(a)`` with a paired percentile interval.

  Args:
    a, b: :func:`example_records` of two runs on the same examples, same order.
    name: one of :data:`METRICS`.
    num_resamples: bootstrap resamples of the example indices.
    level: interval coverage.
    seed: resampling seed (the same indices for every metric and pair).
    name_a: the metric of ``a`` when it differs from ``name`` (e.g. ``b``'s raw
      ``'ece'`` against ``a``'s ``'ece_ts'``: an arm against CE + TS).

  Returns:
    The observed difference and its bootstrap interval (NaN when a record
    lacks the metric's arrays).
  """
  name_a = name_a or name
  n = len(a["correct"])
  if len(b["correct"]) != n:
    raise ValueError(f"paired_bootstrap: {n} vs {len(b['correct'])} examples")
  estimate = metric(b, name) - metric(a, name_a)
  if np.isnan(estimate):
    return Interval(float("nan"), float("nan"), float("nan"))
  diffs = np.empty(num_resamples)
  for i, idx in enumerate(resample_indices(n, num_resamples, seed)):
    diffs[i] = metric(b, name, idx) - metric(a, name_a, idx)
  return _percentile_interval(estimate, diffs, level)


class ResampleCache:
  """Each run's metrics on every bootstrap resample, computed once per seed.

  Records are keyed by identity (the cache holds a reference, so an id is
  never reused while cached). :meth:`paired` gives exactly what
  :func:`paired_bootstrap` gives for the same arguments.
  """

  def __init__(self, names: Sequence[str] = METRICS, num_resamples: int = 2000):
    self.names = tuple(names)
    self.num_resamples = num_resamples
    self._values: dict[tuple[int, int], tuple[Mapping, dict[str, np.ndarray]]] = {}

  def values(self, records: Mapping[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    key = (id(records), seed)
    if key not in self._values:
      self._values[key] = (records, resampled(records, self.names,
                                              num_resamples=self.num_resamples, seed=seed))
    return self._values[key][1]

  def paired(self, a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], name: str,
             *, seed: int, level: float = 0.95, name_a: Optional[str] = None) -> Interval:
    """``metric(b, name) - metric(a, name_a or name)``, paired bootstrap of ``seed``."""
    name_a = name_a or name
    if len(a["correct"]) != len(b["correct"]):
      raise ValueError(f"paired: {len(a['correct'])} vs {len(b['correct'])} examples")
    estimate = metric(b, name) - metric(a, name_a)
    if np.isnan(estimate):
      return Interval(float("nan"), float("nan"), float("nan"))
    diffs = self.values(b, seed)[name] - self.values(a, seed)[name_a]
    return _percentile_interval(estimate, diffs, level)


def t_interval(values: Sequence[float], level: float = 0.95) -> Interval:
  """Mean of ``values`` with a Student-t interval (n - 1 degrees of freedom).

  A single value gets an unbounded interval: one seed says nothing about the
  spread over seeds. No value, or a NaN among them, gives a NaN interval.
  """
  from scipy import stats as scipy_stats  # pylint: disable=import-outside-toplevel
  x = np.asarray(values, np.float64)
  if len(x) == 0 or np.isnan(x).any():
    return Interval(float("nan"), float("nan"), float("nan"))
  mean = float(x.mean())
  if len(x) < 2:
    return Interval(mean, -np.inf, np.inf)
  half = float(scipy_stats.t.ppf(0.5 + level / 2, len(x) - 1)
               * x.std(ddof=1) / np.sqrt(len(x)))
  return Interval(mean, mean - half, mean + half)


def t_test_p(values: Sequence[float]) -> float:
  """Two-sided p-value of the one-sample t-test of mean 0 behind :func:`t_interval`.

  ``t_test_p(x) < 1 - level`` exactly when ``t_interval(x, level)`` excludes 0.
  Fewer than two values, or a NaN among them, give NaN; values that are all
  equal give 0 (a nonzero mean with no spread) or 1 (all zero).
  """
  from scipy import stats as scipy_stats  # pylint: disable=import-outside-toplevel
  x = np.asarray(values, np.float64)
  if len(x) < 2 or np.isnan(x).any():
    return float("nan")
  sd = float(x.std(ddof=1))
  mean = float(x.mean())
  if sd == 0.0:
    return 1.0 if mean == 0.0 else 0.0
  t = mean / (sd / np.sqrt(len(x)))
  return float(2.0 * scipy_stats.t.sf(abs(t), len(x) - 1))


def holm(pvalues: Sequence[float]) -> np.ndarray:
  """Holm's step-down adjustment of a family of p-values.

  Rejecting every hypothesis whose adjusted p-value is at most ``a`` keeps the
  chance of any false rejection in the family at most ``a``. NaN entries are
  left out of the family and stay NaN.

  Args:
    pvalues: the family's raw p-values, in any order.

  Returns:
    Adjusted p-values in the input order (each >= its raw value, <= 1).

  References:
    Holm, "A simple sequentially rejective multiple test procedure",
    Scandinavian Journal of Statistics 1979.
  """
  p = np.asarray(pvalues, np.float64)
  out = np.full(p.shape, np.nan)
  valid = np.flatnonzero(~np.isnan(p))
  m = len(valid)
  if m == 0:
    return out
  order = valid[np.argsort(p[valid], kind="stable")]
  scaled = (m - np.arange(m)) * p[order]
  out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
  return out


def sign_test_p(wins: int, n: int) -> float:
  """One-sided exact sign-test p-value of ``wins`` or more out of ``n``."""
  from math import comb  # pylint: disable=import-outside-toplevel
  return sum(comb(n, k) for k in range(wins, n + 1)) / 2 ** n


def compare_arms(per_seed: Mapping[int, tuple[Mapping[str, np.ndarray],
                                              Mapping[str, np.ndarray]]],
                 names: Sequence[str] = METRICS, *, num_resamples: int = 2000,
                 level: float = 0.95, cache: Optional[ResampleCache] = None,
                 against: Optional[Mapping[str, str]] = None) -> dict[str, dict]:
  """Paired differences (b - a) per seed and over seeds, for every metric.

  Args:
    per_seed: ``{seed: (records_a, records_b)}``.
    names: metrics to compare.
    num_resamples, level: see :func:`paired_bootstrap`.
    cache: a :class:`ResampleCache` (its ``num_resamples`` is used) shared
      between comparisons; default: a new one.
    against: ``{name: metric of a}`` where ``a``'s metric differs (``b``'s
      ``'ece'`` against ``a``'s ``'ece_ts'``); default: the same metric.

  Returns:
    ``{metric: {'per_seed': {seed: Interval}, 'over_seeds': Interval}}``.
  """
  against = against or {}
  cache = cache or ResampleCache(tuple(dict.fromkeys([*names, *against.values()])),
                                 num_resamples=num_resamples)
  out = {}
  for name in names:
    seeds = {s: cache.paired(a, b, name, seed=s, level=level, name_a=against.get(name))
             for s, (a, b) in sorted(per_seed.items())}
    out[name] = {"per_seed": seeds,
                 "over_seeds": t_interval([iv.estimate for iv in seeds.values()], level)}
  return out


def verdict(interval: Interval, lower_is_better: bool = True,
            what: str = "b vs a") -> str:
  """Plain words for a difference interval: better, worse or not resolved."""
  if interval.missing:
    return f"{what}: n/a (not in the records)"
  if interval.includes_zero:
    return f"{what}: no difference resolved (interval includes 0)"
  better = (interval.high < 0) == lower_is_better
  return f"{what}: {'better' if better else 'worse'} (interval excludes 0)"

