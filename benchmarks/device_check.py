"""One-GPU check: the JAX train step beside its PyTorch peer, and the study's steps.

In one process, interleaved windows (order flipped each window):
  1. ResNet-50 at 224 px, batch 128 and 256, bfloat16 compute: the project's
     jit OLS train step against PyTorch (torchvision ResNet-50, channels-last,
     bf16 autocast, SGD momentum, the official OLS loss and ``index_add_``
     accumulation of the correct softmax vectors);
  2. the regime study's step, ResNet-18 x0.25 (small-input stem) at 28 and
     64 px, batch 128, float32, JAX and PyTorch, to size a GPU study.
Everything goes into one JSON file with the jax / torch versions and the
device name. ``--tiny`` shrinks every case so the script runs in seconds on a
CPU (its test); PyTorch rows are skipped, and say so, where torch is absent.

  python benchmarks/device_check.py --json benchmarks/results/gpu_<kind>_check.json
  python benchmarks/device_check.py --tiny --json /tmp/check.json
"""

from __future__ import annotations

import argparse
import pathlib
import time

import common
import jax
import numpy as np

from ols_jax import parallel

# (name, model, image size, batch, width, dtype, classes)
CASES = (("resnet50_224_b128_bf16", "resnet50", 224, 128, 1.0, "bfloat16", 165),
         ("resnet50_224_b256_bf16", "resnet50", 224, 256, 1.0, "bfloat16", 165),
         ("study_resnet18x025_28_b128", "resnet18", 28, 128, 0.25, "float32", 4),
         ("study_resnet18x025_64_b128", "resnet18", 64, 128, 0.25, "float32", 4))
TINY = (("tiny_resnet50_32_b4_bf16", "resnet50", 32, 4, 0.125, "bfloat16", 5),
        ("tiny_resnet18_16_b8", "resnet18", 16, 8, 0.25, "float32", 4))


class TorchOLS:
  """The PyTorch peer: one OLS train step per call unit."""

  def __init__(self, model_name: str, batch, num_classes: int, width: float, dtype: str):
    import torch  # pylint: disable=import-outside-toplevel
    self.torch = torch
    self.device = "cuda" if torch.cuda.is_available() else "cpu"
    if model_name == "resnet50":
      model = common.torchvision_models().resnet50(num_classes=num_classes)
    else:
      import torch_job  # pylint: disable=import-outside-toplevel
      model = torch_job.resnet18(num_classes, width=width, channels=batch["image"].shape[-1])
    self.model = model.to(self.device, memory_format=torch.channels_last).train()
    self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
    self.x = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).to(
        self.device).contiguous(memory_format=torch.channels_last)
    self.y = torch.from_numpy(batch["label"]).long().to(self.device)
    self.soft = torch.full((num_classes, num_classes), 1.0 / num_classes, device=self.device)
    self.sums = torch.zeros(num_classes, num_classes, device=self.device)
    self.counts = torch.zeros(num_classes, device=self.device)
    self.bf16 = dtype == "bfloat16"

  def step(self):
    torch = self.torch
    with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.bf16):
      out = self.model(self.x)
    logp = torch.log_softmax(out.float(), dim=1)
    loss = 0.5 * torch.nn.functional.nll_loss(logp, self.y) + 0.5 * (
        -(self.soft[self.y] * logp).sum(1).mean())
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    with torch.no_grad():
      probs = logp.detach().exp()
      ok = probs.argmax(1) == self.y
      self.sums.index_add_(0, self.y[ok], probs[ok])
      self.counts.index_add_(0, self.y[ok], torch.ones_like(self.y[ok], dtype=torch.float))
    return loss

  def __call__(self, n: int) -> float:
    if self.device == "cuda":
      self.torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
      loss = self.step()
    float(loss.detach())
    if self.device == "cuda":
      self.torch.cuda.synchronize()
    return time.perf_counter() - start


def jax_runner(model_name, batch, num_classes, size, width, dtype):
  mesh = parallel.make_mesh(jax.devices()[:1])
  step, mesh = common.jit_step("ols", num_classes, mesh)
  state = common.make_state(model_name, num_classes, size, width=width, dtype=dtype,
                            small_input=model_name != "resnet50")
  return common.StepRunner(step, parallel.replicate_on_mesh(state, mesh),
                           parallel.put_batch(batch, mesh))


def run(cases, *, windows: int, steps: int, torch_too: bool) -> list:
  rows = []
  for name, model_name, size, batch_size, width, dtype, k in cases:
    batch = common.make_batch(batch_size, size, k, channels=3)
    runners = {"jax": jax_runner(model_name, batch, k, size, width, dtype)}
    note = ""
    if torch_too:
      try:
        runners["torch"] = TorchOLS(model_name, batch, k, width, dtype)
      except Exception as e:  # pylint: disable=broad-except
        note = f"torch peer not run: {type(e).__name__}: {e}"[:300]
    else:
      note = "torch peer not run: torch is not installed"
    t = common.interleaved(runners, windows=windows, steps=steps, warmup=2)
    row = {"case": name, "model": model_name, "image_size": size, "batch_size": batch_size,
           "width": width, "dtype": dtype, "num_classes": k, "windows": windows,
           "steps": steps, "jax_images_per_s": batch_size / t["jax"]["median_s"],
           "jax_windows_s": t["jax"]["windows_s"]}
    if "torch" in t:
      row.update(torch_images_per_s=batch_size / t["torch"]["median_s"],
                 torch_windows_s=t["torch"]["windows_s"],
                 torch_device=runners["torch"].device,
                 jax_speed_vs_torch=t["torch"]["ratio_vs_first"])
    if note:
      row["note"] = note
    rows.append(row)
    line = f"{name:30s} JAX {row['jax_images_per_s']:9.1f} img/s"
    if "torch" in t:
      line += (f"  torch {row['torch_images_per_s']:9.1f} img/s  JAX/torch speed "
               f"{row['jax_speed_vs_torch']:.2f}x")
    print(line + (f"  ({note})" if note else ""), flush=True)
  return rows


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--tiny", action="store_true", help="seconds on a CPU: the script's test")
  p.add_argument("--windows", type=int, default=5)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--json", type=pathlib.Path, required=True)
  a = p.parse_args()
  if a.windows < 1 or a.steps < 1:
    p.error("--windows and --steps must be >= 1")
  torch_too = common.torch_available()
  windows, steps = (1, 1) if a.tiny else (a.windows, a.steps)
  info = {"machine": common.machine_info(), "jax": jax.__version__,
          "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
          "tiny": a.tiny}
  if torch_too:
    import torch  # pylint: disable=import-outside-toplevel
    info["torch"] = torch.__version__
    info["torch_cuda_device"] = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                                 else None)
  rows = run(TINY if a.tiny else CASES, windows=windows, steps=steps, torch_too=torch_too)
  common.write_json(a.json, {**info, "results": rows})
  print(f"device check: {a.json}")


if __name__ == "__main__":
  np.seterr(all="ignore")
  main()
