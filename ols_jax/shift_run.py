"""A finished run under shift, after the fact (``experiments/shift.py``).

:func:`evaluate_run` restores a finished run and scores its test split under
the corruption suite of :mod:`ols_jax.shift`; :func:`shift_to_files` checks
the command's options, evaluates and writes the records and their figure.
Kept apart from :mod:`ols_jax.shift`, which the final evaluation imports, so
that the record machinery does not depend on the finished-run loader.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ols_jax import corruptions
from ols_jax import data as data_lib
from ols_jax import evaluation
from ols_jax import run_files
from ols_jax import runs
from ols_jax import shift
from ols_jax.data import sources


def evaluate_run(workdir: str | os.PathLike, *,
                 names: Sequence[str] = corruptions.CORRUPTIONS,
                 severities: Sequence[int] = corruptions.SEVERITIES,
                 devices: Optional[Sequence[Any]] = None,
                 on_record: Optional[Callable[[dict[str, Any]], None]] = None
                 ) -> list[dict[str, Any]]:
  """A finished run's test split under the corruption suite.

  Restores the run (:func:`ols_jax.runs.load`: its config and selected
  checkpoint), loads its dataset as the run did
  (:func:`ols_jax.data.load_for_config`, so a calibration-split run is scored
  on the same test half it reported) and runs :func:`ols_jax.shift.shift_records` through
  the evaluation step on all devices (:func:`ols_jax.runs.infer`, the
  evaluation's input path at the run's ``eval_batch_size``) with the run's
  temperature and ``config.seed``. The clean record therefore equals the
  run's ``results.json`` test metrics, and each record the run's own
  ``shift`` record when it was trained with ``config.shift_eval``.

  Args:
    workdir: the finished run.
    names: corruptions to apply.
    severities: severities to apply (the clean set is always first).
    devices: the devices (default: all).
    on_record: called with each record as it is made (progress).

  Returns:
    The records (:data:`RECORD_FIELDS`), clean first.
  """
  run = runs.load(workdir)
  config = run.config
  placed = runs.on_devices(run, devices)  # compiled once for every record
  dataset = data_lib.load_for_config(config)
  images, labels = shift.working_array(dataset.splits["test"], image_size=config.image_size,
                                 channels=config.channels)

  def eval_logits(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return runs.infer(placed, sources.ArraySource(x, y)).logits

  def score_fn(z, y, temperature=1.0):
    return evaluation.score(z, y, num_bins=int(config.num_bins), temperature=temperature)

  return shift.shift_records(eval_logits, images, labels, temperature=run.temperature,
                       score_fn=score_fn, names=names, severities=severities,
                       seed=int(config.seed), on_record=on_record)


def shift_to_files(workdir: str | os.PathLike, output: str | os.PathLike, *,
                   figure: Optional[str | os.PathLike] = None,
                   corruption_names: Optional[str] = None,
                   severity_list: Optional[str] = None,
                   devices: Optional[Sequence[Any]] = None,
                   log: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
  """``experiments/shift.py``: checks the options, evaluates, writes.

  Args:
    workdir: the finished run.
    output: the ``.json`` records file.
    figure: an optional ``.png`` figure.
    corruption_names: ``--corruptions`` (None: all).
    severity_list: ``--severities`` (None: 1..5).
    devices: the devices (default: all).
    log: receives one progress line per record (None: quiet).

  Returns:
    ``{"records", "output", "figure", "method", "model", "dataset"}`` (the
    last three from the run's ``results.json``).

  Raises:
    ConfigError: a bad option or workdir (before anything is evaluated or written).
  """
  output, figure = shift.check_output_paths(output, figure)
  names = shift.parse_corruptions(corruption_names)
  severities = shift.parse_severities(severity_list)
  total = 1 + len(names) * len(severities)
  done = []

  def progress(r):
    done.append(r)
    if log is not None:
      log(f"shift {len(done)}/{total}: {r['corruption']} severity {r['severity']}: "
          f"top-1 error {100 * r['top1_error']:.2f}%, ECE {100 * r['ece']:.2f}%, "
          f"ECE after TS {100 * r['ece_ts']:.2f}%")

  records = evaluate_run(workdir, names=names, severities=severities, devices=devices,
                         on_record=progress)
  results = json.loads((pathlib.Path(workdir) / run_files.RESULTS).read_text())
  about = {k: results.get(k, "?") for k in ("method", "model", "dataset")}
  shift.write_outputs(records, output, figure,
                title=f"{about['method']} / {about['model']} on {about['dataset']} "
                      f"under shift")
  return {"records": records, "output": str(output),
          "figure": None if figure is None else str(figure), **about}
