"""Run cells and the subprocess scheduler that runs each cell as one training
job (the tuned sweeps of :mod:`ols_jax.study.sweep` build the cells).

Each cell runs the library's own command line, ``python -m ols_jax.cli`` (the
job ``experiments/radimagenet.py`` runs), so an installed package needs no
source tree; tests pass another ``entry_point`` script.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import sys
import time
from typing import Any, Optional, Sequence

from ols_jax import run_files

# The module every cell runs (``python -m``) unless a caller passes a script.
ENTRY_MODULE = "ols_jax.cli"


@dataclasses.dataclass(frozen=True)
class Cell:
  """One run of the grid."""
  model: str
  method: str
  seed: int
  overrides: tuple[tuple[str, str], ...] = ()
  tag: str = ""           # variant name, e.g. 'alpha0.3' or 'init_zeros'.

  @property
  def variant(self) -> str:
    return self.method + (f"[{self.tag}]" if self.tag else "")

  @property
  def folder(self) -> str:
    """The run folder's name under ``<out>/<model>/`` (seeds below it)."""
    return self.method + (f"_{self.tag}" if self.tag else "")

  def workdir(self, out: pathlib.Path) -> pathlib.Path:
    return out / self.model / self.folder / f"seed{self.seed}"


def command(cell: Cell, config_path: str, out: pathlib.Path,
            extra: Sequence[str] = (), teacher_model: Optional[str] = None,
            entry_point: Optional[pathlib.Path] = None) -> list[str]:
  """The command line that runs ``cell``: ``python -m ols_jax.cli`` (:data:`ENTRY_MODULE`),
  or the ``entry_point`` script with the same flags."""
  launch = ["-m", ENTRY_MODULE] if entry_point is None else [str(entry_point)]
  args = [sys.executable, *launch, f"--config={config_path}",
          f"--workdir={cell.workdir(out)}", f"--config.model={cell.model}",
          f"--config.method={cell.method}", f"--config.seed={cell.seed}",
          "--config.progress=False"]
  args += [f"--config.{k}={v}" for k, v in cell.overrides]
  if cell.method == "kd":
    teacher = Cell(teacher_model or cell.model, "ce", cell.seed)
    args.append(f"--config.teacher_workdir={teacher.workdir(out)}")
  return args + list(extra)


# Thread pools of the host libraries a run uses besides XLA (NumPy's BLAS,
# scikit-learn's OpenMP): each starts one thread per core unless told.
THREAD_POOL_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def job_env(base, threads_per_job: int) -> dict[str, str]:
  """The environment of one run when several share the host.

  Args:
    base: the parent environment (not modified).
    threads_per_job: 0 leaves the thread settings alone; 1 turns XLA's Eigen
      thread pool off; n > 1 splits the host into n XLA CPU devices (one
      convolution thread each). For any n >= 1 the BLAS / OpenMP pools get n
      threads, unless ``base`` already sets them: without that cap, N runs on
      a C-core host start N x C such threads for their NumPy / scikit-learn
      work (final evaluation, t-SNE) and oversubscribe the cores.

  Returns:
    A new environment mapping.
  """
  env = dict(base)
  if threads_per_job < 1:
    return env
  for var in THREAD_POOL_VARS:
    env.setdefault(var, str(threads_per_job))
  flag = ("--xla_cpu_multi_thread_eigen=false" if threads_per_job == 1 else
          f"--xla_force_host_platform_device_count={threads_per_job}")
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flag).strip()
  return env


def run_grid(cells: Sequence[Cell], config_path: str, out: pathlib.Path, *,
             extra: Sequence[str] = (), jobs: int = 1,
             teacher_model: Optional[str] = None, threads_per_job: int = 0,
             entry_point: Optional[pathlib.Path] = None, log=print) -> list[Cell]:
  """Runs every cell without ``results.json`` (sequentially or ``jobs`` at a
  time) as a subprocess (:func:`command`); KD cells wait for their CE
  teacher. Returns the failed cells."""
  pending = [c for c in cells if not run_files.is_finished(c.workdir(out))]
  log(f"{len(cells) - len(pending)} of {len(cells)} cells already done; "
      f"{len(pending)} to run with {jobs} parallel job(s)")
  running: list[tuple[Cell, subprocess.Popen, float, Any]] = []
  failed: list[Cell] = []
  done = len(cells) - len(pending)
  env = job_env(os.environ, threads_per_job)

  def teacher_ready(c: Cell) -> bool:
    if c.method != "kd":
      return True
    t = Cell(teacher_model or c.model, "ce", c.seed)
    return run_files.is_finished(t.workdir(out))

  def teacher_failed(c: Cell) -> bool:
    t = Cell(teacher_model or c.model, "ce", c.seed)
    return c.method == "kd" and t in failed

  while pending or running:
    for c in [c for c in pending if teacher_failed(c)]:
      pending.remove(c)
      failed.append(c)
      log(f"skip {c.variant} {c.model} seed {c.seed}: its CE teacher failed")
    while len(running) < jobs:
      ready = [c for c in pending if teacher_ready(c)]
      if not ready:
        break
      c = ready[0]
      pending.remove(c)
      c.workdir(out).mkdir(parents=True, exist_ok=True)
      logf = open(c.workdir(out) / "stdout.log", "a", encoding="utf-8")
      proc = subprocess.Popen(command(c, config_path, out, extra, teacher_model,
                                      entry_point),
                              stdout=logf, stderr=subprocess.STDOUT, env=env)
      running.append((c, proc, time.time(), logf))
    time.sleep(0.5)
    for item in list(running):
      c, proc, t0, logf = item
      if proc.poll() is None:
        continue
      running.remove(item)
      logf.close()
      done += 1
      status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
      if proc.returncode != 0:
        failed.append(c)
      log(f"[{done}/{len(cells)}] {c.variant} {c.model} seed {c.seed}: {status} "
          f"in {time.time() - t0:.0f} s -> {c.workdir(out)}")
    if not running and pending and not any(teacher_ready(c) for c in pending):
      for c in pending:
        failed.append(c)
        log(f"skip {c.variant} {c.model} seed {c.seed}: no CE teacher results")
      pending = []
  return failed
