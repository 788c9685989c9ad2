"""PyTorch eager vs the JAX train step, same ResNet-18 (small-input stem:
3x3 stride-1 conv, no max-pool), same batch, same OLS work, one process.

PyTorch side (the official OLS implementation's work per step, model
``torch_job.resnet18``): forward, hard CE + soft CE against ``S[y]``,
backward, SGD-momentum update, and the accumulation of correct softmax
vectors with ``index_add_``.
JAX side: ``parallel.jit_train_step`` with method ``ols`` and
``models.create('resnet18', K, small_input=True)``, twice: on one XLA CPU
device (``jax_1dev``) and with the project default of one host device per
usable core (``jax``, data parallel; ``distributed.configure_cpu_devices``), which
is what ``experiments/radimagenet.py`` uses.

Windows of all runners are interleaved (order flipped each window).

  pip install -r benchmarks/requirements.txt
  python benchmarks/bench_torch.py [--sizes 28,64] [--batch_size 128]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import common
import jax

from ols_jax import distributed
from ols_jax import parallel


class TorchRunner:
  """One PyTorch OLS train step per call unit (eager, float32)."""

  def __init__(self, batch, num_classes: int, channels_last: bool = False,
               width: float = 1.0):
    import torch  # pylint: disable=import-outside-toplevel
    import torch_job  # pylint: disable=import-outside-toplevel
    self.torch = torch
    self.model = torch_job.resnet18(num_classes, width=width,
                                    channels=batch["image"].shape[-1])
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    self.model = self.model.to(memory_format=fmt).train()
    self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
    self.x = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).contiguous(
        memory_format=fmt)
    self.y = torch.from_numpy(batch["label"]).long()
    self.k = num_classes
    self.soft = torch.full((num_classes, num_classes), 1.0 / num_classes)
    self.prob_sums = torch.zeros(num_classes, num_classes)
    self.counts = torch.zeros(num_classes)

  def step(self):
    torch = self.torch
    out = self.model(self.x)
    logp = torch.log_softmax(out, dim=1)
    hard = torch.nn.functional.nll_loss(logp, self.y)
    soft = -(self.soft[self.y] * logp).sum(1).mean()
    loss = 0.5 * hard + 0.5 * soft
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    with torch.no_grad():  # official OLS: sum of correct softmax vectors
      probs = torch.softmax(out.detach(), dim=1)
      ok = probs.argmax(1) == self.y
      self.prob_sums.index_add_(0, self.y[ok], probs[ok])
      self.counts.index_add_(0, self.y[ok], torch.ones_like(self.y[ok],
                                                             dtype=torch.float))
    return loss

  def __call__(self, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
      loss = self.step()
    float(loss.detach())
    return time.perf_counter() - start


def jax_runner(batch, num_classes: int, image_size: int, dtype="float32",
               devices=None, width: float = 1.0):
  mesh = parallel.make_mesh(devices) if devices is not None else None
  step, mesh = common.jit_step("ols", num_classes, mesh)
  state = common.make_state("resnet18", num_classes, image_size, dtype=dtype,
                            width=width, channels=batch["image"].shape[-1])
  state = parallel.replicate_on_mesh(state, mesh)
  return common.StepRunner(step, state, parallel.put_batch(batch, mesh))


def run(sizes, *, batch_size: int = 128, num_classes: int = 4,
        windows: int = 3, steps: int = 1, channels_last: bool = True,
        width: float = 1.0, channels: int = 3) -> list:
  import torch  # pylint: disable=import-outside-toplevel
  rows = []
  for size in sizes:
    batch = common.make_batch(batch_size, size, num_classes, channels=channels)
    runners = {"jax": jax_runner(batch, num_classes, size,
                                 devices=jax.devices(), width=width)}
    if len(jax.devices()) > 1:
      runners["jax_1dev"] = jax_runner(batch, num_classes, size,
                                       devices=jax.devices()[:1], width=width)
    runners["torch"] = TorchRunner(batch, num_classes, channels_last, width)
    t = common.interleaved(runners, windows=windows, steps=steps, warmup=1)
    row = {"image_size": size, "batch_size": batch_size, "K": num_classes,
           "width": width, "channels": channels,
           "jax_devices": len(jax.devices()),
           "torch_threads": torch.get_num_threads(),
           "torch_channels_last": channels_last,
           "jax_images_per_s": batch_size / t["jax"]["median_s"],
           "torch_images_per_s": batch_size / t["torch"]["median_s"],
           "jax_over_torch_time": 1 / t["torch"]["ratio_vs_first"]}
    row["jax_speedup_vs_torch"] = t["torch"]["ratio_vs_first"]
    line = (f"ResNet-18 x{width:g} {size}px b{batch_size}: JAX ({len(jax.devices())} "
            f"CPU devices) {row['jax_images_per_s']:7.1f} img/s  torch "
            f"{row['torch_images_per_s']:7.1f} img/s  JAX speed-up "
            f"{row['jax_speedup_vs_torch']:.2f}x")
    if "jax_1dev" in t:
      row["jax_1dev_images_per_s"] = batch_size / t["jax_1dev"]["median_s"]
      # ratio_vs_first = t(jax_1dev) / t(jax), paired per window.
      row["devices_speedup"] = t["jax_1dev"]["ratio_vs_first"]
      row["jax_1dev_speedup_vs_torch"] = (row["jax_speedup_vs_torch"]
                                          / row["devices_speedup"])
      line += (f" | JAX 1 device {row['jax_1dev_images_per_s']:7.1f} img/s "
               f"(default is {row['devices_speedup']:.2f}x faster)")
    rows.append(row)
    print(line, flush=True)
  return rows


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--sizes", default="28,64")
  p.add_argument("--batch_size", type=int, default=128)
  p.add_argument("--windows", type=int, default=3)
  p.add_argument("--steps", type=int, default=1)
  p.add_argument("--no_channels_last", action="store_true")
  p.add_argument("--width", type=float, default=1.0, help="ResNet-18 width multiplier")
  p.add_argument("--channels", type=int, default=3)
  p.add_argument("--num_classes", type=int, default=4)
  p.add_argument("--jax_devices", type=int, default=0,
                 help="host CPU devices for JAX (0 = one per usable core, the "
                      "entry point's default; 1 = a single device)")
  p.add_argument("--json", type=pathlib.Path, default=None)
  a = p.parse_args()
  distributed.configure_cpu_devices(a.jax_devices, (a.batch_size,))
  if not common.torch_available():
    sys.exit("torch is not installed: pip install -r benchmarks/requirements.txt")
  rows = run([int(s) for s in a.sizes.split(",")], batch_size=a.batch_size,
             windows=a.windows, steps=a.steps,
             channels_last=not a.no_channels_last, width=a.width,
             channels=a.channels, num_classes=a.num_classes)
  if a.json:
    common.write_json(a.json, {"machine": common.machine_info(),
                               "xla_flags": os.environ.get("XLA_FLAGS", ""),
                               "torch": rows})


if __name__ == "__main__":
  main()
