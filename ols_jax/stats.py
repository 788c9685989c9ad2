"""Paired comparisons of two methods: bootstrap over test examples, interval over seeds.

Two runs evaluated on the same test split are compared *paired*: the same
resampled example indices go into both arms, so the interval is for the
difference ``metric(b) - metric(a)`` and the shared difficulty of the examples
cancels. Over seeds, the per-seed differences get a Student-t interval of
their mean (with n = 3 seeds the t quantile is 4.30: wide, by design).

Per-example records (:func:`example_records`) are what the metrics need:
correctness, top-label confidence and log-probability of the true class, raw
and after temperature scaling (AURC from confidence and correctness).

References:
  Efron & Tibshirani, "An Introduction to the Bootstrap", 1993 (percentile
  intervals). Guo et al., ICML 2017 (ECE with equal-width bins).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from ols_jax import metrics as metrics_lib

METRICS = ("top1_error", "ece", "nll", "ece_ts", "nll_ts", "aurc", "aurc_ts")


def example_records(logits: np.ndarray, labels: np.ndarray,
                    temperature: float = 1.0) -> dict[str, np.ndarray]:
  """Per-example statistics of a run's test logits.

  Args:
    logits: ``(N, K)`` logits.
    labels: ``(N,)`` labels.
    temperature: the temperature fitted on validation.

  Returns:
    ``correct`` (bool), ``conf``, ``logp`` (log-probability of the label), and
    ``conf_ts``, ``logp_ts`` after dividing the logits by ``temperature``.
  """
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels, np.int64)
  out = {"correct": np.argmax(logits, -1) == labels}
  for suffix, t in (("", 1.0), ("_ts", float(temperature))):
    z = logits / t
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    out["conf" + suffix] = np.exp(logp.max(-1))
    out["logp" + suffix] = logp[np.arange(len(labels)), labels]
  return out


def ece(conf: np.ndarray, correct: np.ndarray, num_bins: int = 15) -> float:
  """Top-label ECE, equal-width bins as :mod:`ols_jax.metrics` bins them."""
  edges = metrics_lib.bin_edges(num_bins)
  bins = np.searchsorted(edges, np.asarray(conf, np.float32), side="right")
  conf_sum = np.bincount(bins, weights=conf, minlength=num_bins)
  correct_sum = np.bincount(bins, weights=correct.astype(np.float64), minlength=num_bins)
  return float(np.abs(correct_sum - conf_sum).sum() / max(len(conf), 1))


def metric(records: Mapping[str, np.ndarray], name: str,
           index: np.ndarray | None = None) -> float:
  """One of :data:`METRICS` on the examples ``index`` (default: all)."""
  r = records if index is None else {k: v[index] for k, v in records.items()}
  if name == "top1_error":
    return float(1.0 - r["correct"].mean())
  if name in ("ece", "ece_ts"):
    return ece(r["conf" + name[3:]], r["correct"])
  if name in ("nll", "nll_ts"):
    return float(-r["logp" + name[3:]].mean())
  if name in ("aurc", "aurc_ts"):
    from ols_jax import selective  # pylint: disable=import-outside-toplevel
    return selective.aurc(r["conf" + name[4:]], r["correct"])
  raise ValueError(f"metric: expected one of {METRICS}, got {name!r}")


@dataclasses.dataclass(frozen=True)
class Interval:
  """A point estimate and a two-sided interval."""
  estimate: float
  low: float
  high: float

  @property
  def includes_zero(self) -> bool:
    return self.low <= 0.0 <= self.high

  def format(self, scale: float = 1.0, digits: int = 2) -> str:
    f = f"{{:+.{digits}f}}"
    return (f"{f.format(scale * self.estimate)} "
            f"[{f.format(scale * self.low)}, {f.format(scale * self.high)}]")


def paired_bootstrap(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray],
                     name: str, *, num_resamples: int = 2000, level: float = 0.95,
                     seed: int = 0) -> Interval:
  """Difference ``metric(b) - metric(a)`` with a paired percentile interval.

  Args:
    a, b: :func:`example_records` of two runs on the same examples, same order.
    name: one of :data:`METRICS`.
    num_resamples: bootstrap resamples of the example indices.
    level: interval coverage.
    seed: resampling seed (the same indices for every metric and pair).

  Returns:
    The observed difference and its bootstrap interval.
  """
  n = len(a["correct"])
  if len(b["correct"]) != n:
    raise ValueError(f"paired_bootstrap: {n} vs {len(b['correct'])} examples")
  rng = np.random.default_rng(seed)
  diffs = np.empty(num_resamples)
  for i in range(num_resamples):
    idx = rng.integers(0, n, n)
    diffs[i] = metric(b, name, idx) - metric(a, name, idx)
  tail = 100 * (1 - level) / 2
  low, high = np.percentile(diffs, [tail, 100 - tail])
  return Interval(metric(b, name) - metric(a, name), float(low), float(high))


def t_interval(values: Sequence[float], level: float = 0.95) -> Interval:
  """Mean of ``values`` with a Student-t interval (n - 1 degrees of freedom).

  A single value gets an unbounded interval: one seed says nothing about the
  spread over seeds.
  """
  from scipy import stats as scipy_stats  # pylint: disable=import-outside-toplevel
  x = np.asarray(values, np.float64)
  mean = float(x.mean())
  if len(x) < 2:
    return Interval(mean, -np.inf, np.inf)
  half = float(scipy_stats.t.ppf(0.5 + level / 2, len(x) - 1)
               * x.std(ddof=1) / np.sqrt(len(x)))
  return Interval(mean, mean - half, mean + half)


def sign_test_p(wins: int, n: int) -> float:
  """One-sided exact sign-test p-value of ``wins`` or more out of ``n``."""
  from math import comb  # pylint: disable=import-outside-toplevel
  return sum(comb(n, k) for k in range(wins, n + 1)) / 2 ** n


def compare_arms(per_seed: Mapping[int, tuple[Mapping[str, np.ndarray],
                                              Mapping[str, np.ndarray]]],
                 names: Sequence[str] = METRICS, *, num_resamples: int = 2000,
                 level: float = 0.95) -> dict[str, dict]:
  """Paired differences (b - a) per seed and over seeds, for every metric.

  Args:
    per_seed: ``{seed: (records_a, records_b)}``.
    names: metrics to compare.
    num_resamples, level: see :func:`paired_bootstrap`.

  Returns:
    ``{metric: {'per_seed': {seed: Interval}, 'over_seeds': Interval}}``.
  """
  out = {}
  for name in names:
    seeds = {s: paired_bootstrap(a, b, name, num_resamples=num_resamples, level=level,
                                 seed=s)
             for s, (a, b) in sorted(per_seed.items())}
    out[name] = {"per_seed": seeds,
                 "over_seeds": t_interval([iv.estimate for iv in seeds.values()], level)}
  return out


def verdict(interval: Interval, lower_is_better: bool = True,
            what: str = "b vs a") -> str:
  """Plain words for a difference interval: better, worse or not resolved."""
  if interval.includes_zero:
    return f"{what}: no difference resolved (interval includes 0)"
  better = (interval.high < 0) == lower_is_better
  return f"{what}: {'better' if better else 'worse'} (interval excludes 0)"

