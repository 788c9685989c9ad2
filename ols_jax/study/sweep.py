"""Tuned comparisons as data: arms, their candidate settings, the selection rule.

A :class:`Sweep` lists *arms* (a method with fixed settings and, optionally, a
small grid of candidate settings). Phase 1 runs every candidate of every arm on
the tuning seed; each arm then keeps the candidate with the best validation
score (:func:`select`, validation only: the test split is never looked at);
phase 2 runs the kept candidate of every arm on the remaining seeds. Cells are
ordinary runs of the main job (:class:`ols_jax.study.grid_runner.Cell`), so a
sweep resumes by skipping finished cells.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import pathlib
from typing import Any, Optional, Sequence

from ols_jax import fileio
from ols_jax import run_files
from ols_jax.study import grid_runner


@dataclasses.dataclass(frozen=True)
class Arm:
  """One method of a comparison.

  Attributes:
    name: the arm's label in tables (e.g. ``'ols_zeros'``).
    method: the config's ``method``.
    fixed: config overrides every run of the arm gets.
    grid: candidate values per field, tuned on the tuning seed.
  """
  name: str
  method: str
  fixed: tuple[tuple[str, Any], ...] = ()
  grid: tuple[tuple[str, tuple[Any, ...]], ...] = ()

  def candidates(self) -> list[tuple[tuple[str, Any], ...]]:
    """Every candidate setting (the grid's product), as override tuples."""
    if not self.grid:
      return [()]
    fields = [f for f, _ in self.grid]
    return [tuple(zip(fields, values))
            for values in itertools.product(*(v for _, v in self.grid))]

  def cell(self, model: str, seed: int, candidate=(),
           more: tuple[tuple[str, Any], ...] = ()) -> grid_runner.Cell:
    """The run of this arm with ``candidate`` on ``seed``.

    ``more`` adds overrides that do not name the run (its folder is the same
    with or without them), e.g. the seed of the calibration halves.
    """
    suffix = (self.name[len(self.method):].lstrip("_")
              if self.name.startswith(self.method) else self.name)
    parts = [suffix] + [f"{f}{v:g}" if isinstance(v, float) else f"{f}{v}"
                        for f, v in candidate]
    tag = "_".join(p for p in parts if p)
    overrides = tuple((f, repr(v) if isinstance(v, float) else str(v))
                      for f, v in self.fixed + tuple(candidate) + tuple(more))
    return grid_runner.Cell(model, self.method, seed, overrides, tag)


@dataclasses.dataclass(frozen=True)
class Sweep:
  """A tuned comparison (see the module docstring)."""
  name: str
  title: str
  config: str                 # experiment config file, relative to the repo.
  model: str
  arms: tuple[Arm, ...]
  seeds: tuple[int, ...] = (0, 1, 2)
  tuning_seed: int = 0
  select_metric: str = "nll"  # validation metric, lower is better.
  extra: tuple[str, ...] = ()  # more --config.x=y flags for every run.
  # True: seed s also draws its own calibration / reported halves of test
  # (``calibration_split_seed = s``), so that the spread over seeds carries
  # the noise of the test sample; every arm of seed s shares those halves.
  split_per_seed: bool = False
  # The summary's paired comparisons ``(reference arm, arm)``; empty: CE
  # against every arm, then LS / FLSD-53 / MbLS against every OLS arm.
  comparisons: tuple[tuple[str, str], ...] = ()
  # The arm whose seed-0 regime the summary reads and that every calibration
  # verdict is against (CE + TS is that arm after temperature scaling).
  reference: str = "ce"
  # Differences of paired differences ``((ref_a, arm_a), (ref_b, arm_b))``:
  # (arm_b - ref_b) - (arm_a - ref_a) per seed (an interaction).
  interactions: tuple[tuple[tuple[str, str], tuple[str, str]], ...] = ()
  # False: a check with no reference arm (e.g. :func:`edge_check`); its
  # collected folder gets no summary.md, its report lives with the study's.
  summary: bool = True

  def summary_comparisons(self) -> list[tuple[str, str]]:
    """The summary's paired comparisons: :attr:`comparisons`, else the
    reference against every arm, then LS / FLSD-53 / MbLS against every OLS arm."""
    if self.comparisons:
      return list(self.comparisons)
    names = [a.name for a in self.arms]
    out = [(self.reference, a) for a in names if a != self.reference]
    return out + [(ref, a) for ref in ("ls", "flsd53", "mbls") if ref in names
                  for a in names if a.startswith("ols")]

  def _more(self, seed: int) -> tuple[tuple[str, Any], ...]:
    return (("calibration_split_seed", seed),) if self.split_per_seed else ()

  def tuning_cells(self) -> list[grid_runner.Cell]:
    return [a.cell(self.model, self.tuning_seed, c, self._more(self.tuning_seed))
            for a in self.arms for c in a.candidates()]

  def final_cells(self, chosen: dict[str, tuple]) -> list[grid_runner.Cell]:
    """Every arm's kept candidate on the other seeds (arms in ``chosen``)."""
    return [a.cell(self.model, s, chosen[a.name], self._more(s)) for a in self.arms
            if a.name in chosen for s in self.seeds if s != self.tuning_seed]

  def every_cell(self, chosen: dict[str, tuple]) -> list[grid_runner.Cell]:
    """Each run of the sweep once: every candidate on the tuning seed, then the
    kept candidates (``chosen``; arms without a grid need no entry) on the
    other seeds."""
    return self.tuning_cells() + self.final_cells({**self.untuned(), **chosen})

  def untuned(self) -> dict[str, tuple]:
    """The arms with nothing to tune (no grid, or a one-point grid), each with
    its only candidate."""
    return {a.name: a.candidates()[0] for a in self.arms if len(a.candidates()) == 1}


def grid_edges(arm: Arm, candidate) -> list[tuple[str, Any, str]]:
  """The fields at which a candidate sits on an end of the arm's grid.

  Args:
    arm: the arm whose ``grid`` the candidate is from.
    candidate: ``(field, value)`` pairs (a list of pairs from selection.json too).

  Returns:
    ``(field, value, 'lowest' | 'highest')`` for each numeric grid field with at
    least two values whose end the candidate takes; empty when it is inside
    the grid on every field (or the arm has no grid).
  """
  values = dict((f, v) for f, v in candidate)
  out = []
  for field, axis in arm.grid:
    if field not in values or len(axis) < 2:
      continue
    if not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in axis):
      continue
    v = values[field]
    if v == min(axis):
      out.append((field, v, "lowest"))
    elif v == max(axis):
      out.append((field, v, "highest"))
  return out


def edge_check(sweep: Sweep, selection: dict, beyond: dict) -> Sweep:
  """Seed-0 runs one step beyond each grid end at which an arm's kept setting sits.

  The runs are those the sweep itself would have made had its grid reached
  further (same config, flags, halves and folder names), so a binding edge
  shows as a beyond-the-grid candidate with a lower selection metric.

  Args:
    sweep: the finished sweep.
    selection: its ``selection.json`` (``{'arms': {arm: {'candidate': ...}}}``).
    beyond: ``{arm: {field: {'lowest' | 'highest': values}}}``, the settings
      past each end; arms or ends not named are not checked.

  Returns:
    A sweep named ``edge_<sweep.name>`` with one arm per checked edge (its
    ``grid`` the values beyond), the tuning seed only, and no summary.

  Raises:
    ValueError: an arm named in ``beyond`` has a grid over more than one field.
  """
  arms = []
  for arm in sweep.arms:
    chosen = selection.get("arms", {}).get(arm.name)
    if arm.name not in beyond or not chosen:
      continue
    if len(arm.grid) != 1:
      raise ValueError(f"edge_check: arm {arm.name!r} must have a one-field grid, "
                       f"got fields {[f for f, _ in arm.grid]}")
    for field, _, end in grid_edges(arm, chosen["candidate"]):
      values = tuple(beyond[arm.name].get(field, {}).get(end, ()))
      if values:
        arms.append(dataclasses.replace(arm, grid=((field, values),)))
  return dataclasses.replace(
      sweep, name=f"edge_{sweep.name}", title=f"{sweep.title}: grid-edge check (seed "
      f"{sweep.tuning_seed})", arms=tuple(arms), seeds=(sweep.tuning_seed,), comparisons=(),
      interactions=(), summary=False)


def extension(sweep: Sweep, settings: dict[str, tuple[str, Any]]) -> Sweep:
  """The other seeds of the settings a binding grid edge would have kept.

  Args:
    sweep: the finished sweep.
    settings: ``{arm: (field, value)}``, each arm's setting over its extended
      grid (its seed-0 run is the edge check's).

  Returns:
    A sweep named ``ext_<sweep.name>`` whose arms each hold one setting, on the
    sweep's seeds other than its tuning seed (the first of them stands in as
    the "tuning" seed of a one-candidate grid: nothing is chosen on it), with
    the sweep's config, flags, per-seed halves and folder names; no summary.
  """
  arms = tuple(dataclasses.replace(a, grid=((settings[a.name][0], (settings[a.name][1],)),))
               for a in sweep.arms if a.name in settings)
  seeds = tuple(s for s in sweep.seeds if s != sweep.tuning_seed)
  return dataclasses.replace(
      sweep, name=f"ext_{sweep.name}", title=f"{sweep.title}: extended-grid settings",
      arms=arms, seeds=seeds, tuning_seed=seeds[0], comparisons=(), interactions=(),
      summary=False)


def _val_score(workdir: pathlib.Path, metric: str) -> Optional[tuple[float, float]]:
  path = workdir / run_files.RESULTS
  if not path.exists():
    return None
  r = json.loads(path.read_text())
  return float(r["val"][metric]), float(r["val"]["top1_error"])


def select(sweep: Sweep, out: pathlib.Path) -> dict[str, dict[str, Any]]:
  """Each arm's kept candidate from its finished tuning runs.

  An arm whose candidates have not all finished is left out. Ties on the
  selection metric go to the lower validation error, then to grid order.

  Returns:
    ``{arm: {'candidate': overrides, 'folder': run folder name,
    'scores': {folder: val scores}}}``.
  """
  chosen = {}
  for arm in sweep.arms:
    scored = []
    for cand in arm.candidates():
      cell = arm.cell(sweep.model, sweep.tuning_seed, cand)
      score = _val_score(cell.workdir(out), sweep.select_metric)
      if score is None:
        break
      scored.append((score, cand, cell.folder))
    else:
      best = min(range(len(scored)), key=lambda i: (scored[i][0], i))
      chosen[arm.name] = {
          "candidate": scored[best][1],
          "folder": scored[best][2],
          "scores": {folder: {f"val_{sweep.select_metric}": s[0], "val_top1_error": s[1]}
                     for s, _, folder in scored}}
  return chosen


def write_selection(sweep: Sweep, out: pathlib.Path) -> dict[str, dict[str, Any]]:
  """Writes ``selection.json`` (the rule and every arm's scores) into ``out``."""
  chosen = select(sweep, out)
  out.mkdir(parents=True, exist_ok=True)
  doc = {"rule": f"lowest validation {sweep.select_metric} on seed {sweep.tuning_seed} "
                 f"(ties: lower validation top-1 error)",
         "arms": {k: dict(v, candidate=[list(x) for x in v["candidate"]])
                  for k, v in chosen.items()}}
  fileio.atomic_write_json(out / "selection.json", doc, indent=2, sort_keys=True)
  return chosen


def run(sweep: Sweep, out: pathlib.Path, repo: pathlib.Path, *, jobs: int = 1,
        threads_per_job: int = 0, log=print) -> list[grid_runner.Cell]:
  """Phase 1 (tuning seed, every candidate), selection, phase 2 (other seeds).

  Arms with nothing to tune (no grid or a one-point grid) run their other
  seeds in phase 1 already, so the cores stay busy. Returns the failed cells.
  """
  config = str(repo / sweep.config)
  phase1 = sweep.tuning_cells() + sweep.final_cells(sweep.untuned())
  failed = grid_runner.run_grid(phase1, config, out, extra=sweep.extra, jobs=jobs,
                                threads_per_job=threads_per_job, log=log)
  chosen = write_selection(sweep, out)
  missing = [a.name for a in sweep.arms if a.name not in chosen]
  if missing:
    log(f"no selection for {missing}: a tuning run failed")
  kept = {k: v["candidate"] for k, v in chosen.items()}
  failed += grid_runner.run_grid(sweep.final_cells(kept), config, out,
                                 extra=sweep.extra, jobs=jobs,
                                 threads_per_job=threads_per_job, log=log)
  return failed


def final_rows(sweep: Sweep, out: pathlib.Path) -> list[dict[str, Any]]:
  """``results.json`` of each arm's kept candidate on every seed, arm-labelled."""
  chosen = select(sweep, out)
  rows = []
  for arm in sweep.arms:
    if arm.name not in chosen:
      continue
    for s in sweep.seeds:
      cell = arm.cell(sweep.model, s, chosen[arm.name]["candidate"])
      path = cell.workdir(out) / run_files.RESULTS
      if path.exists():
        r = json.loads(path.read_text())
        r["arm"], r["folder"] = arm.name, cell.folder
        rows.append(r)
  return rows


def find(sweeps: Sequence[Sweep], name: str) -> Sweep:
  for s in sweeps:
    if s.name == name:
      return s
  raise KeyError(f"no sweep {name!r}; known: {', '.join(s.name for s in sweeps)}")
