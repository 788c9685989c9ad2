"""The collected layout of a study: each finished run's small files, under
``docs/results/<study>/``, read back or restored as run folders.

Per run, in ``<model>/<run>/`` (``<run>`` is the run folder's name, e.g.
``ols`` or ``ls_eps0.05``):

  ``seed<k>.json``           the run's ``results.json``; written last, it marks
                             the run as collected;
  ``seed<k>_metrics.jsonl``  its ``metrics.jsonl`` (tuned sweeps);
  ``seed<k>_records.npz``    per-example test records recomputed from the
                             selected checkpoint (tuned sweeps;
                             :func:`ols_jax.study.stats.example_records`);
  ``report.md``, ``figures/``  seed 0's report and figures (grid studies).

Next to them, the study's own files (``summary.md``; ``summary.csv`` and
``reliability.png`` of a grid study, ``selection.json`` and ``curves.png`` of a
sweep). Both pipelines collect with :func:`collect_run`, read with
:func:`load_run` / :func:`load_all` and restore with :func:`restore`, so a study
can be reported and extended on a machine whose ``runs/`` is gone.
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil
from typing import Any, Callable, Optional

import numpy as np

from ols_jax import fileio
from ols_jax import run_files
from ols_jax.logging_utils import read_metrics
from ols_jax.study import stats

# Record arrays saved per run (``correct`` as bool, the rest float32).
RECORD_ARRAYS = ("conf", "logp", "brier", "conf_ts", "logp_ts", "brier_ts")

_RESULTS = re.compile(r"seed(\d+)\.json")


class RecordMismatchError(ValueError):
  """Per-example records recomputed from a run disagree with its results.json."""


def results_files(folder: pathlib.Path, model: str = "*") -> list[pathlib.Path]:
  """Every collected ``<model>/<run>/seed<k>.json`` under ``folder``, sorted by path."""
  return sorted(p for p in pathlib.Path(folder).glob(f"{model}/*/seed*.json")
                if _RESULTS.fullmatch(p.name))


def _where(path: pathlib.Path) -> tuple[pathlib.Path, str, str, int]:
  """``(folder, model, run, seed)`` of a collected ``seed<k>.json``."""
  return (path.parent.parent.parent, path.parent.parent.name, path.parent.name,
          int(_RESULTS.fullmatch(path.name).group(1)))


def load_run(folder: pathlib.Path, model: str, run: str, seed: int, *,
             details: bool = True) -> Optional[dict[str, Any]]:
  """One collected run, or None when it is not there.

  Args:
    folder: the collected study (``docs/results/<study>``).
    model: the model folder.
    run: the run folder's name.
    seed: the seed.
    details: also read ``metrics`` (the ``metrics.jsonl`` records, empty when
      not collected) and ``records`` (the per-example arrays, or None).

  Returns:
    The run's ``results.json`` as a dict (plus ``metrics`` and ``records``).
  """
  base = pathlib.Path(folder) / model / run
  path = base / f"seed{seed}.json"
  if not path.exists():
    return None
  r = json.loads(path.read_text())
  if details:
    r["metrics"] = read_metrics(base / f"seed{seed}_metrics.jsonl")
    rec = base / f"seed{seed}_records.npz"
    r["records"] = dict(np.load(rec)) if rec.exists() else None
  return r


def load_all(folder: pathlib.Path, model: str = "*") -> list[dict[str, Any]]:
  """Every collected run's ``results.json`` (of ``model``), with ``variant``
  (its run folder's name) attached; in path order."""
  rows = []
  for path in results_files(folder, model):
    r = load_run(*_where(path), details=False)
    r["variant"] = path.parent.name
    rows.append(r)
  return rows


def save_records(rec: dict[str, np.ndarray], results: dict[str, Any], path: pathlib.Path, *,
                 where: str = "", log: Callable[[str], Any] = print) -> None:
  """Checks per-example records against the run's own test metrics, then saves them.

  Top-1 error, ECE, NLL and Brier (raw and after TS, where results.json has
  them) must agree within 1e-4; adaptive ECE within 2e-3 (its equal-mass bins
  follow the confidence order, which float32 ties can change), else a note.

  Args:
    rec: :func:`ols_jax.study.stats.example_records` of the run's test logits.
    results: the run's ``results.json``.
    path: the ``.npz`` to write (atomically, compressed).
    where: the run, for messages.
    log: where notes go.

  Raises:
    RecordMismatchError: a recomputed metric disagrees with ``results.json``.
  """
  for split, suffix in (("test", ""), ("test_ts", "_ts")):
    for key in ("top1_error", "ece", "nll", "brier", "adaptive_ece"):
      if (key == "top1_error" and suffix) or key not in results.get(split, {}):
        continue
      got, want = stats.metric(rec, key + suffix), results[split][key]
      tol = 2e-3 if key == "adaptive_ece" else 1e-4
      if abs(got - want) > tol:
        raise RecordMismatchError(f"{where}: recomputed {split} {key} {got:.6f} differs from "
                         f"results.json {want:.6f}")
      if abs(got - want) > 1e-4:
        log(f"note: {where}: recomputed {split} {key} {got:.6f} vs results.json {want:.6f}")
  fileio.atomic_save_npz(path, compressed=True, correct=rec["correct"],
                         **{k: np.asarray(rec[k]).astype(np.float32) for k in RECORD_ARRAYS})


def collect_run(workdir: pathlib.Path, dest: pathlib.Path, seed: int, *,
                records: bool = True, metrics: bool = True, report: bool = False,
                log: Callable[[str], Any] = print) -> bool:
  """Copies one finished run into ``dest`` (``<study>/<model>/<run>``).

  ``seed<k>.json`` is written last, so a run is collected whole or not at all;
  records already collected are not recomputed.

  Args:
    workdir: the run folder.
    dest: the collected run folder.
    seed: the run's seed.
    records: recompute the per-example test records from the selected
      checkpoint and check them (:func:`save_records`).
    metrics: copy ``metrics.jsonl``.
    report: for seed 0, copy ``report.md`` and ``figures/``.
    log: where notes go.

  Returns:
    False when the run has not finished (no ``results.json``).

  Raises:
    RecordMismatchError: the recomputed records disagree with ``results.json``.
  """
  results = pathlib.Path(workdir) / run_files.RESULTS
  if not results.exists():
    return False
  dest = pathlib.Path(dest)
  dest.mkdir(parents=True, exist_ok=True)
  rec_path = dest / f"seed{seed}_records.npz"
  if records and not rec_path.exists():
    from ols_jax import runs  # pylint: disable=import-outside-toplevel  (restores a model)
    r = json.loads(results.read_text())
    logits, labels = runs.split_logits(workdir, "test")
    save_records(stats.example_records(logits, labels, r["temperature"]), r, rec_path,
                 where=str(workdir), log=log)
  if report and seed == 0:
    shutil.copy2(workdir / run_files.REPORT, dest / run_files.REPORT)
    if (workdir / run_files.FIGURES).is_dir():
      shutil.copytree(workdir / run_files.FIGURES, dest / run_files.FIGURES, dirs_exist_ok=True)
  if metrics:
    shutil.copy2(workdir / run_files.METRICS, dest / f"seed{seed}_metrics.jsonl")
  fileio.atomic_copy(results, dest / f"seed{seed}.json")
  return True


def restore(folder: pathlib.Path, out: pathlib.Path) -> int:
  """Puts a collected study back into run-folder form.

  Every ``<model>/<run>/seed<k>.json`` under ``folder`` becomes
  ``out/<model>/<run>/seed<k>/results.json``, with ``metrics.jsonl`` where it
  was collected and, for seed 0, the collected ``report.md`` and figures;
  ``summary.md`` keeps a grid study's title. The runners then skip these cells
  (and a sweep selects from their validation scores). Existing run folders are
  never overwritten. KD cells whose CE teacher must be retrained still need the
  teacher's checkpoints, which are not collected.

  Returns:
    The number of runs restored.
  """
  folder, out = pathlib.Path(folder), pathlib.Path(out)
  restored = 0
  for path in results_files(folder):
    _, model, name, seed = _where(path)
    run = out / model / name / f"seed{seed}"
    if (run / run_files.RESULTS).exists():
      continue
    run.mkdir(parents=True, exist_ok=True)
    metrics = path.with_name(f"seed{seed}_metrics.jsonl")
    if metrics.exists():
      shutil.copy2(metrics, run / run_files.METRICS)
    if seed == 0:
      if (path.parent / run_files.REPORT).exists():
        shutil.copy2(path.parent / run_files.REPORT, run / run_files.REPORT)
      if (path.parent / run_files.FIGURES).is_dir():
        shutil.copytree(path.parent / run_files.FIGURES, run / run_files.FIGURES, dirs_exist_ok=True)
    fileio.atomic_copy(path, run / run_files.RESULTS)  # last: it marks the run finished
    restored += 1
  if (folder / "summary.md").exists() and not (out / "summary.md").exists():
    shutil.copy2(folder / "summary.md", out / "summary.md")
  return restored
