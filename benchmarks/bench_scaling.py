"""1 vs 2 vs 4 (fake) CPU devices, jit-sharded mesh path and pmap path.

Each device count runs in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``; it trains a few OLS
steps on fixed batches, crosses an epoch boundary, trains again, and writes
``S`` and the params. The parent reports throughput and the max abs
difference of ``S``/params against the 1-device jit run (float32 tolerance).
Host devices share the physical cores, but XLA CPU runs each convolution on
one thread, so up to the core count N devices are a real speed-up (the reason
the entry point splits a CPU host into one device per core); beyond it, the
rows measure the partitioning overhead.

  python benchmarks/bench_scaling.py [--devices 1,2,4]
"""

from __future__ import annotations

import argparse
import pathlib
import time

import common
import jax
import numpy as np

from ols_jax import losses
from ols_jax import parallel


def _train_twice(step, boundary, new_state, batches, batch_size: int):
  """Compiles ``step``, then from a fresh state trains over ``batches`` (timed),
  crosses an epoch boundary and trains over them again.

  Returns the final state and the timed pass's images per second.
  """
  state, _ = step(new_state(), batches[0])
  jax.block_until_ready(state)
  state = new_state()
  start = time.perf_counter()
  for b in batches:
    state, _ = step(state, b)
  jax.block_until_ready(state)
  images_per_s = len(batches) * batch_size / (time.perf_counter() - start)
  state = boundary(state)
  for b in batches:
    state, _ = step(state, b)
  return state, images_per_s


def _result(state, images_per_s: float) -> dict:
  params = jax.tree.leaves(jax.device_get(state.params))
  return {"images_per_s": images_per_s,
          "S": np.asarray(state.ols.soft_labels).tolist(),
          "params": np.concatenate([np.ravel(x) for x in params]).tolist()}


def child(n: int, size: int, batch: int, k: int, steps: int, model: str,
          width: float) -> dict:
  """One device count (this process has ``n`` host devices): the jit-sharded
  mesh path and the pmap path, each ``{'images_per_s', 'S', 'params'}``."""
  assert len(jax.devices()) == n, jax.devices()
  batches = [common.make_batch(batch, size, k, seed=s) for s in range(steps)]
  step, mesh = common.jit_step("ols", k, parallel.make_mesh())
  state, ips = _train_twice(
      step, parallel.jit_epoch_boundary(mesh),
      lambda: parallel.replicate_on_mesh(
          common.make_state(model, k, size, width=width), mesh),
      [parallel.put_batch(b, mesh) for b in batches], batch)
  out = {"jit": _result(state, ips)}
  spec = losses.LossSpec(method="ols", num_classes=k, alpha=0.5)
  state, ips = _train_twice(
      parallel.pmap_train_step(spec), parallel.pmap_epoch_boundary(),
      lambda: parallel.replicate(common.make_state(
          model, k, size, width=width, bn_axis_name=parallel.PMAP_AXIS)),
      [parallel.split_for_pmap(b, n) for b in batches], batch)
  out["pmap"] = _result(parallel.unreplicate(state), ips)
  return out


def run(devices=(1, 2, 4), *, size: int = 28, batch: int = 128, k: int = 4,
        steps: int = 3, model: str = "resnet18", width: float = 0.25) -> list:
  rows, ref = [], None
  for n in devices:
    res = common.run_child(
        __file__, {"n": n, "size": size, "batch": batch, "k": k,
                   "steps": steps, "model": model, "width": width},
        xla_flags=f"--xla_force_host_platform_device_count={n}",
        env_updates={"JAX_PLATFORMS": "cpu"})
    if ref is None:
      ref = res["jit"]
    for path in ("jit", "pmap"):
      r = res[path]
      ds = float(np.max(np.abs(np.asarray(r["S"]) - np.asarray(ref["S"]))))
      dp = float(np.max(np.abs(np.asarray(r["params"])
                               - np.asarray(ref["params"]))))
      row = {"devices": n, "path": path, "images_per_s": r["images_per_s"],
             "max_abs_diff_S": ds, "max_abs_diff_params": dp,
             "equal_f32_tol": bool(ds < 1e-4 and dp < 1e-4),
             "model": model, "width": width, "image_size": size,
             "batch_size": batch}
      rows.append(row)
      print(f"{n} dev {path:4s} {r['images_per_s']:8.1f} img/s  "
            f"|dS|max {ds:.2e}  |dparams|max {dp:.2e}", flush=True)
  return rows


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--devices", default="1,2,4")
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--json", type=pathlib.Path, default=None)
  a = p.parse_args()
  rows = run([int(d) for d in a.devices.split(",")], steps=a.steps)
  if a.json:
    common.write_json(a.json, {"scaling": rows})


if __name__ == "__main__":
  common.main_or_child(main, child)
