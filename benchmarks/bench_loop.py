"""The main job's training loop against its own compiled step, with a breakdown
of one run into train phases, per-epoch costs and fixed costs.

Runs ``train.train_and_evaluate`` in this process on a real shared dataset with
timers wrapped around the loop's pieces (nothing in the library is changed):
the train phase of each epoch (from opening the epoch's input to the start of
validation), validation, checkpoint writes, and the fixed costs (set-up and
compile before the first step, the final evaluation, report and figures). It
then times the same compiled train step on one fixed, already placed batch
(``steps x step time`` is what a loop with zero overhead would take) and
reports:

  loop overhead   = train-phase time / (steps x fixed-batch step time) - 1
  per-epoch share = (validation + checkpoints) / (train phases + per-epoch)
  fixed share     = fixed costs / whole run, extrapolated to --target_epochs

  python benchmarks/bench_loop.py [--config=experiments/configs/radmix.py] [--epochs=2]
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import pathlib
import statistics
import tempfile
import time

import common
import jax
from common import ROOT

from ols_jax import checkpointing
from ols_jax import config as config_lib
from ols_jax import data as data_lib
from ols_jax import distributed
from ols_jax import evaluation
from ols_jax import models
from ols_jax import parallel
from ols_jax import report as report_lib
from ols_jax import train
from ols_jax import train_state


class Timeline:
  """Start/end times of named events, recorded by wrapped functions."""

  def __init__(self):
    self.events = collections.defaultdict(list)  # name -> [(start, end)]

  def wrap(self, owner, attr: str, name: str):
    original = getattr(owner, attr)

    def timed(*args, **kwargs):
      start = time.perf_counter()
      try:
        return original(*args, **kwargs)
      finally:
        self.events[name].append((start, time.perf_counter()))

    setattr(owner, attr, timed)

  def total(self, name: str) -> float:
    return sum(e - s for s, e in self.events.get(name, []))


def _load_config(path: str):
  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def instrumented_run(config, workdir: pathlib.Path) -> dict:
  """One main-job run with its timeline; returns the breakdown in seconds."""
  tl = Timeline()
  tl.wrap(data_lib, "train_iterator", "epoch_input")  # == train.data_lib
  tl.wrap(evaluation, "evaluate", "evaluate")
  tl.wrap(checkpointing.Checkpointer, "save_last", "checkpoint")
  tl.wrap(checkpointing.Checkpointer, "save_best", "checkpoint")
  tl.wrap(report_lib, "write_report", "report")  # == train.report_lib
  tl.wrap(parallel.DataParallel, "train", "dispatch")
  start = time.perf_counter()
  _, summary = train.train_and_evaluate(config, workdir)
  end = time.perf_counter()
  starts = [s for s, _ in tl.events["epoch_input"]]
  evals = tl.events["evaluate"]
  epochs = config.num_epochs
  # Validation calls: the first `epochs` evaluate calls; the rest are final.
  val_calls, final_calls = evals[:epochs], evals[epochs:]
  train_phases = [v[0] - s for s, v in zip(starts, val_calls)]
  first_dispatch = tl.events["dispatch"][0]
  compile_s = first_dispatch[1] - first_dispatch[0]
  checkpoints = tl.total("checkpoint")
  final_start = final_calls[0][0] if final_calls else end
  return {
      "wall_s": end - start,
      "setup_s": starts[0] - start,
      "compile_s": compile_s,  # inside the first train phase
      "train_phase_s": train_phases,
      "validation_s": [e - s for s, e in val_calls],
      "checkpoint_s": checkpoints,
      "final_s": end - final_start,
      "report_s": tl.total("report"),
      "steps_per_epoch": summary["final_step"] // epochs,
      "final_step": summary["final_step"],
      "test_top1_error": summary["test"]["top1_error"],
  }


def fixed_batch_step_time(config, windows: int = 5, steps: int = 20) -> float:
  """Seconds per compiled train step on one fixed, placed batch (median)."""
  ds = data_lib.load_dataset(config.dataset, image_size=config.image_size)
  k = ds.info.num_classes
  devices = jax.devices()
  model = models.from_config(config, k)
  spe = len(ds.splits["train"]) // config.batch_size
  state = train_state.create(
      model, train.make_optimizer(config, train.learning_rate_schedule(config, spe)),
      input_shape=(config.image_size, config.image_size, config.channels), num_classes=k,
      rng=jax.random.PRNGKey(0), ols_init=config.ols_init)
  dp = parallel.DataParallel("jit", config_lib.loss_spec(config, k), devices)
  batch = next(iter(data_lib.train_iterator(
      ds.splits["train"], global_batch_size=config.batch_size,
      image_size=config.image_size, channels=config.channels, seed=0)))
  runner = common.StepRunner(lambda s, b: dp.train(s, b), dp.to_device(state),
                             parallel.put_batch(batch, dp.mesh))
  runner(3)
  return statistics.median(runner(steps) / steps for _ in range(windows))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default=str(ROOT / "experiments" / "configs" / "radmix.py"))
  p.add_argument("--epochs", type=int, default=2)
  p.add_argument("--method", default="ce")
  p.add_argument("--target_epochs", type=int, default=15,
                 help="run length the fixed share is extrapolated to")
  p.add_argument("--figures", type=int, default=1, help="1: report figures and t-SNE")
  p.add_argument("--cpu_devices", type=int, default=0)
  p.add_argument("--json", type=pathlib.Path, default=None)
  a = p.parse_args()
  config = _load_config(a.config)
  config.num_epochs, config.method = a.epochs, a.method
  config.progress, config.figures = False, bool(a.figures)
  distributed.configure_cpu_devices(a.cpu_devices, (config.batch_size, config.eval_batch_size))
  with tempfile.TemporaryDirectory() as tmp:
    run = instrumented_run(config, pathlib.Path(tmp) / "run")
  step_s = fixed_batch_step_time(config)
  spe = run["steps_per_epoch"]
  ideal = spe * step_s
  # Epoch 1's train phase holds the compile; overhead from the later epochs.
  later = run["train_phase_s"][1:] or run["train_phase_s"]
  overhead = statistics.median(later) / ideal - 1
  per_epoch = statistics.median(run["validation_s"]) + run["checkpoint_s"] / a.epochs
  train_epoch = statistics.median(later)
  # Everything that is not a steady-state epoch (the compile and warm-up of
  # epoch 1 included) is a fixed cost.
  fixed = (run["wall_s"] - a.epochs * train_epoch - sum(run["validation_s"])
           - run["checkpoint_s"])
  total_target = fixed + a.target_epochs * (train_epoch + per_epoch)
  out = dict(run, machine=common.machine_info(), config=common.repo_path(a.config),
             method=a.method,
             devices=len(jax.devices()), fixed_batch_step_s=step_s,
             fixed_batch_images_per_s=config.batch_size / step_s,
             loop_images_per_s=spe * config.batch_size / train_epoch,
             loop_overhead=overhead, per_epoch_s=per_epoch, fixed_s=fixed,
             per_epoch_share=per_epoch / (train_epoch + per_epoch),
             fixed_share_at_target=fixed / total_target, target_epochs=a.target_epochs)
  print(f"{a.config} ({a.method}, {len(jax.devices())} CPU devices, batch "
        f"{config.batch_size}, {spe} steps/epoch, {a.epochs} epochs)")
  print(f"  compiled step on a fixed batch : {out['fixed_batch_images_per_s']:7.0f} img/s")
  print(f"  training loop (epochs 2..)     : {out['loop_images_per_s']:7.0f} img/s  "
        f"overhead {100 * overhead:+.1f}%")
  print(f"  per epoch: validation {statistics.median(run['validation_s']):.2f} s + "
        f"checkpoints {run['checkpoint_s'] / a.epochs:.2f} s = "
        f"{100 * out['per_epoch_share']:.1f}% of an epoch")
  print(f"  fixed: set-up {run['setup_s']:.1f} s, compile {run['compile_s']:.1f} s, final "
        f"evaluation + report {run['final_s']:.1f} s (report/figures/t-SNE "
        f"{run['report_s']:.1f} s) = {fixed:.1f} s, "
        f"{100 * out['fixed_share_at_target']:.1f}% of a {a.target_epochs}-epoch run")
  if a.json:
    common.write_json(a.json, out, default=float)


if __name__ == "__main__":
  main()
