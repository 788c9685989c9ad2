"""Collected studies: the per-run files ``experiments/collect_results.py``
copies under ``docs/results/<study>``, read back or restored as run folders."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from typing import Any


def load_collected(folder: pathlib.Path) -> list[dict[str, Any]]:
  """Per-run results collected under ``docs/results/<study>`` (the
  ``<model>/<variant>/seed<k>.json`` files that ``collect_results`` writes)."""
  rows = []
  for path in sorted(pathlib.Path(folder).glob("*/*/seed*.json")):
    r = json.loads(path.read_text())
    r["variant"] = path.parent.name
    rows.append(r)
  return rows


def restore_collected(folder: pathlib.Path, out: pathlib.Path) -> int:
  """Puts a collected study back into run-folder form, so a study can be
  extended on a machine whose ``runs/`` is gone: every
  ``<model>/<variant>/seed<k>.json`` under ``folder`` becomes
  ``out/<model>/<variant>/seed<k>/results.json`` (plus, for seed 0, the
  collected ``report.md`` and figures), and ``summary.md`` keeps the title.
  ``grid_runner.run_grid`` then skips these cells. Existing run folders are
  never overwritten. KD cells whose CE teacher must be retrained still need the
  teacher's checkpoints, which are not collected.

  Returns:
    The number of runs restored.
  """
  folder, out = pathlib.Path(folder), pathlib.Path(out)
  restored = 0
  for path in sorted(folder.glob("*/*/seed*.json")):
    run = out / path.parent.parent.name / path.parent.name / path.stem
    if (run / "results.json").exists():
      continue
    run.mkdir(parents=True, exist_ok=True)
    if path.stem == "seed0":
      if (path.parent / "report.md").exists():
        shutil.copy2(path.parent / "report.md", run / "report.md")
      if (path.parent / "figures").is_dir():
        shutil.copytree(path.parent / "figures", run / "figures", dirs_exist_ok=True)
    tmp = run / "results.json.tmp"
    shutil.copy2(path, tmp)
    os.replace(tmp, run / "results.json")
    restored += 1
  if (folder / "summary.md").exists() and not (out / "summary.md").exists():
    shutil.copy2(folder / "summary.md", out / "summary.md")
  return restored
