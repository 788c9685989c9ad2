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
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent

_CHILD = r"""
import json, sys, time
sys.path.insert(0, {here!r})
import common, jax, numpy as np
from ols_jax import losses, parallel
n, size, bsz, k, steps, model, width = ({n}, {size}, {batch}, {k}, {steps},
                                        {model!r}, {width})
assert len(jax.devices()) == n, jax.devices()
batches = [common.make_batch(bsz, size, k, seed=s) for s in range(steps)]
out = {{}}
# jit-sharded mesh path
step, mesh = common.jit_step("ols", k, parallel.make_mesh())
boundary = parallel.jit_epoch_boundary(mesh)
st = parallel.replicate_on_mesh(
    common.make_state(model, k, size, width=width), mesh)
dev = [parallel.put_batch(b, mesh) for b in batches]
st, _ = step(st, dev[0]); jax.block_until_ready(st)   # compile
st = parallel.replicate_on_mesh(common.make_state(model, k, size, width=width), mesh)
t0 = time.perf_counter()
for b in dev:
  st, m = step(st, b)
jax.block_until_ready(st); dt = time.perf_counter() - t0
st = boundary(st)
for b in dev:
  st, m = step(st, b)
out["jit"] = {{"images_per_s": steps * bsz / dt,
              "S": np.asarray(st.ols.soft_labels).tolist(),
              "params": np.concatenate([np.ravel(x) for x in
                                        jax.tree.leaves(jax.device_get(st.params))]).tolist()}}
# pmap path
spec = losses.LossSpec(method="ols", num_classes=k, alpha=0.5)
pstep = parallel.pmap_train_step(spec)
pbound = parallel.pmap_epoch_boundary()
mk = lambda: parallel.replicate(common.make_state(model, k, size, width=width,
                                                  bn_axis_name=parallel.PMAP_AXIS))
pb = [parallel.split_for_pmap(b, n) for b in batches]
ps = mk(); ps, _ = pstep(ps, pb[0]); jax.block_until_ready(ps)   # compile
ps = mk()
t0 = time.perf_counter()
for b in pb:
  ps, m = pstep(ps, b)
jax.block_until_ready(ps); dt = time.perf_counter() - t0
ps = pbound(ps)
for b in pb:
  ps, m = pstep(ps, b)
ps = parallel.unreplicate(ps)
out["pmap"] = {{"images_per_s": steps * bsz / dt,
               "S": np.asarray(ps.ols.soft_labels).tolist(),
               "params": np.concatenate([np.ravel(x) for x in
                                         jax.tree.leaves(jax.device_get(ps.params))]).tolist()}}
with open({out!r}, "w") as f:
  json.dump(out, f)
"""


def run_child(n: int, out: str, **kw) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      f" --xla_force_host_platform_device_count={n}").strip()
  code = _CHILD.format(here=str(HERE), n=n, out=out, **kw)
  res = subprocess.run([sys.executable, "-c", code], env=env, check=False,
                       capture_output=True, text=True)
  if res.returncode:
    raise RuntimeError(f"{n} devices failed:\n{res.stderr[-3000:]}")
  return json.loads(pathlib.Path(out).read_text())


def run(devices=(1, 2, 4), *, size: int = 28, batch: int = 128, k: int = 4,
        steps: int = 3, model: str = "resnet18", width: float = 0.25) -> list:
  rows, ref = [], None
  with tempfile.TemporaryDirectory() as tmp:
    for n in devices:
      res = run_child(n, str(pathlib.Path(tmp) / f"{n}.json"), size=size,
                      batch=batch, k=k, steps=steps, model=model, width=width)
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
    a.json.write_text(json.dumps({"scaling": rows}, indent=2))


if __name__ == "__main__":
  main()
