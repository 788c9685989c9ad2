"""XLA CPU flag screen: the OLS train step under several ``XLA_FLAGS`` sets.

``XLA_FLAGS`` is read once per process, so each (setting, case) runs in its own
fresh process; rounds alternate the order of the settings (A B C, C B A, ...)
so that load from other users of the host cancels in the paired ratios. Each
child also runs one step from the same initial state and saves the updated
parameters: every setting is checked against the default (max relative
difference of the parameters; equal means <= 1e-5).

Cases: the study model (ResNet-18 x0.25, 28 px, batch 128) and full-width
ResNet-18 at 64 px (batch 32), each on 1 and 2 host devices.

  python benchmarks/bench_xla_flags.py --json benchmarks/results/xla_flags_<host>.json
  python benchmarks/bench_xla_flags.py --tiny      # seconds: the script's own check
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile

import numpy as np

import common

SETTINGS = {
    "default": "",
    "onednn": "--xla_cpu_use_onednn=true",
    "onednn_custom_call": "--xla_cpu_experimental_onednn_custom_call=true",
    "onednn_custom_call_only": ("--xla_cpu_experimental_onednn_custom_call=true "
                                "--xla_cpu_use_onednn=false "
                                "--xla_cpu_experimental_ynn_fusion_type=invalid "
                                "--xla_cpu_use_xnnpack=false"),
    "ynn_minus_reduce": "--xla_cpu_experimental_ynn_fusion_type=-reduce",
}

# (name, image size, batch, width, devices)
CASES = (("x025_28px_1dev", 28, 128, 0.25, 1), ("x025_28px_2dev", 28, 128, 0.25, 2),
         ("x1_64px_1dev", 64, 32, 1.0, 1), ("x1_64px_2dev", 64, 32, 1.0, 2))
TINY_CASES = (("tiny_1dev", 16, 8, 0.125, 1), ("tiny_2dev", 16, 8, 0.125, 2))
EQUAL_RTOL = 1e-5


def child(size: int, batch: int, width: float, devices: int, steps: int,
          params_out: str) -> dict:
  """Seconds per OLS train step on ``devices`` host devices; saves the
  parameters after one step from the seed-0 state to ``params_out``."""
  import jax  # pylint: disable=import-outside-toplevel
  from ols_jax import parallel  # pylint: disable=import-outside-toplevel
  mesh = parallel.make_mesh(jax.devices()[:devices])
  step, mesh = common.jit_step("ols", 4, mesh)
  data = parallel.put_batch(common.make_batch(batch, size, 4), mesh)
  state = parallel.replicate_on_mesh(common.make_state("resnet18", 4, size, width=width), mesh)
  state, _ = step(state, data)
  leaves = jax.tree.leaves(jax.device_get(state.params))
  np.savez(params_out, *[np.asarray(x, np.float32) for x in leaves])
  runner = common.StepRunner(step, state, data)
  runner(1)
  return {"step_s": runner(steps) / steps, "devices": len(jax.devices()[:devices])}


def max_scaled_diff(a: str, b: str) -> float:
  """Largest ``max|a - b| / max|a|`` over the parameter tensors of two npz
  files: the difference relative to each tensor's own scale (float rounding
  of a reordered sum stays near 1e-7 here; an element-wise ratio is inflated by
  entries near zero)."""
  with np.load(a) as fa, np.load(b) as fb:
    return max(float(np.max(np.abs(fa[k] - fb[k])) / max(float(np.max(np.abs(fa[k]))), 1e-12))
               for k in fa.files)


def max_rel_diff(a: str, b: str) -> float:
  """Largest ``|a - b| / max(|a|, 1e-3)`` over every parameter of two npz files."""
  with np.load(a) as fa, np.load(b) as fb:
    return max(float(np.max(np.abs(fa[k] - fb[k]) / np.maximum(np.abs(fa[k]), 1e-3)))
               for k in fa.files)


def run(settings: dict, cases, *, rounds: int, steps: int, tmp: pathlib.Path) -> list:
  rows = []
  for case, size, batch, width, devices in cases:
    names = list(settings)
    times = {n: [] for n in names}
    params = {n: str(tmp / f"{case}_{n}.npz") for n in names}
    errors = {}
    for r in range(rounds):
      for name in (names if r % 2 == 0 else names[::-1]):
        try:
          out = common.run_child(
              __file__, {"size": size, "batch": batch, "width": width, "devices": devices,
                         "steps": steps, "params_out": params[name]},
              xla_flags=settings[name] + f" --xla_force_host_platform_device_count={devices}",
              env_updates={"JAX_PLATFORMS": "cpu"})
          times[name].append(out["step_s"])
        except RuntimeError as e:
          errors[name] = str(e).splitlines()[-1][:300]
          print(f"{case} {name}: failed: {errors[name]}", file=sys.stderr, flush=True)
    if not times[names[0]]:
      raise RuntimeError(f"{case}: the baseline setting failed: {errors.get(names[0])}")
    base = times[names[0]]
    for name in names:
      if not times[name]:
        rows.append({"case": case, "setting": name, "xla_flags": settings[name],
                     "error": errors.get(name, "no timing")})
        continue
      ratios = [t / b for t, b in zip(times[name], base)]
      diff = max_rel_diff(params[names[0]], params[name])
      scaled = max_scaled_diff(params[names[0]], params[name])
      row = {"case": case, "setting": name, "xla_flags": settings[name], "image_size": size,
             "batch_size": batch, "width": width, "devices": devices,
             "step_ms": 1e3 * statistics.median(times[name]),
             "rounds_ms": [1e3 * t for t in times[name]],
             "time_vs_default": statistics.median(ratios),
             "speedup_vs_default": 1.0 / statistics.median(ratios),
             "max_rel_param_diff_vs_default": diff,
             "max_tensor_scaled_param_diff_vs_default": scaled,
             "equal": diff <= EQUAL_RTOL, "equal_at_tensor_scale": scaled <= EQUAL_RTOL}
      rows.append(row)
      print(f"{case:15s} {name:24s} {row['step_ms']:9.1f} ms/step  speed-up "
            f"{row['speedup_vs_default']:.3f}x  max rel diff {diff:.2e} (tensor-scaled {scaled:.2e})",
            flush=True)
  return rows


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--rounds", type=int, default=4)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--settings", default=",".join(SETTINGS),
                 help="comma-separated names from SETTINGS (first = baseline)")
  p.add_argument("--cases", default="", help="comma-separated case names (default: all)")
  p.add_argument("--tiny", action="store_true", help="tiny cases, 1 round, 1 step")
  p.add_argument("--json", type=pathlib.Path, default=None)
  a = p.parse_args()
  names = [n.strip() for n in a.settings.split(",") if n.strip()]
  unknown = [n for n in names if n not in SETTINGS]
  if unknown:
    p.error(f"--settings: unknown {unknown}; valid: {', '.join(SETTINGS)}")
  cases = TINY_CASES if a.tiny else CASES
  if a.cases:
    wanted = [c.strip() for c in a.cases.split(",")]
    bad = [c for c in wanted if c not in {x[0] for x in cases}]
    if bad:
      p.error(f"--cases: unknown {bad}; valid: {', '.join(x[0] for x in cases)}")
    cases = [c for c in cases if c[0] in wanted]
  rounds, steps = (1, 1) if a.tiny else (a.rounds, a.steps)
  with tempfile.TemporaryDirectory() as tmp:
    rows = run({n: SETTINGS[n] for n in names}, cases, rounds=rounds, steps=steps,
               tmp=pathlib.Path(tmp))
  if a.json:
    common.write_json(a.json, {"machine": common.machine_info(), "rounds": rounds,
                               "steps": steps, "equal_rtol": EQUAL_RTOL,
                               "xla_flags": rows})


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  common.main_or_child(main, child)
