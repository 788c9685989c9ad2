"""XLA CPU flag screening: JAX train-step time under several ``XLA_FLAGS``.

XLA_FLAGS is read once per process, so every setting runs in its own
subprocess; rounds alternate the settings (A B C, C B A, ...) and the median
per setting is reported with its ratio to the first (the default).

  python benchmarks/bench_xla_flags.py [--rounds 2] [--image_size 28]
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys

import common

from ols_jax import parallel

SETTINGS = {
    "default": "",
    "onednn": "--xla_cpu_use_onednn=true",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "xnn_conv": ("--xla_cpu_experimental_xnn_fusion_type="
                 "individual_convolution"),
    "ynn_conv": ("--xla_cpu_experimental_ynn_fusion_type="
                 "individual_convolution"),
    "onednn_conv": ("--xla_cpu_experimental_onednn_fusion_type="
                    "individual_convolution"),
    "no_multi_thread_eigen": "--xla_cpu_multi_thread_eigen=false",
}

def child(size: int, batch: int, steps: int, width: float) -> dict:
  """Seconds per ``ols`` train step of ResNet-18 under this process' flags."""
  step, mesh = common.jit_step("ols", 4)
  state = common.make_state("resnet18", 4, size, width=width)
  runner = common.StepRunner(
      step, parallel.replicate_on_mesh(state, mesh),
      parallel.put_batch(common.make_batch(batch, size, 4), mesh))
  runner(1)
  return {"step_s": runner(steps) / steps}


def child_time(flags: str, *, size: int, batch: int, steps: int,
               width: float) -> float:
  """Runs :func:`child` in a fresh process with ``flags`` added to XLA_FLAGS."""
  params = {"size": size, "batch": batch, "steps": steps, "width": width}
  return common.run_child(__file__, params, xla_flags=flags,
                          env_updates={"JAX_PLATFORMS": "cpu"})["step_s"]


def run(settings=None, *, rounds: int = 2, size: int = 28, batch: int = 32,
        steps: int = 3, width: float = 1.0) -> list:
  settings = dict(SETTINGS if settings is None else settings)
  names = list(settings)
  times = {n: [] for n in names}
  for r in range(rounds):
    for name in (names if r % 2 == 0 else names[::-1]):
      try:
        times[name].append(child_time(settings[name], size=size, batch=batch,
                                      steps=steps, width=width))
      except RuntimeError as e:
        print(f"{name}: {e}", file=sys.stderr)
  base = statistics.median(times[names[0]])
  rows = []
  for name in names:
    if not times[name]:
      rows.append({"setting": name, "xla_flags": settings[name], "error": True})
      continue
    med = statistics.median(times[name])
    rows.append({"setting": name, "xla_flags": settings[name],
                 "step_ms": 1e3 * med, "time_vs_default": med / base,
                 "image_size": size, "batch_size": batch, "width": width})
    print(f"{name:24s} {1e3 * med:9.1f} ms/step  x{med / base:.3f}  "
          f"[{settings[name]}]", flush=True)
  return rows


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--image_size", type=int, default=28)
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--width", type=float, default=1.0)
  p.add_argument("--settings", default=",".join(SETTINGS),
                 help="comma-separated names from SETTINGS (first = baseline)")
  p.add_argument("--json", type=pathlib.Path, default=None)
  a = p.parse_args()
  names = [n.strip() for n in a.settings.split(",") if n.strip()]
  unknown = [n for n in names if n not in SETTINGS]
  if unknown:
    p.error(f"--settings: unknown {unknown}; valid: {', '.join(SETTINGS)}")
  rows = run({n: SETTINGS[n] for n in names}, rounds=a.rounds,
             size=a.image_size, batch=a.batch_size, steps=a.steps,
             width=a.width)
  if a.json:
    common.write_json(a.json, {"xla_flags": rows})


if __name__ == "__main__":
  common.main_or_child(main, child)
