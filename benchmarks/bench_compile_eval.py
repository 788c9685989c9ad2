"""Train-step compile time (cold, and warm from JAX's persistent compilation
cache) and eval throughput.

Compile: two fresh subprocesses share one new cache directory
(``jax_compilation_cache_dir``, ``jax_persistent_cache_min_compile_time_secs=0``);
the first compiles cold and fills it, the second loads from it.

  python benchmarks/bench_compile_eval.py [--model resnet18 --width 0.25]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile


HERE = pathlib.Path(__file__).resolve().parent

_CHILD = r"""
import json, sys, time
t_start = time.perf_counter()
import jax
jax.config.update("jax_compilation_cache_dir", {cache!r})
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
sys.path.insert(0, {here!r})
import common
from ols_jax import parallel
step, mesh = common.jit_step("ols", {k})
st = parallel.replicate_on_mesh(
    common.make_state({model!r}, {k}, {size}, width={width}), mesh)
b = parallel.put_batch(common.make_batch({batch}, {size}, {k}), mesh)
t0 = time.perf_counter()
compiled = step.lower(st, b).compile()
t1 = time.perf_counter()
st, m = compiled(st, b); jax.block_until_ready(st)
print("RESULT", json.dumps({{"compile_s": t1 - t0,
                             "process_s": time.perf_counter() - t_start}}))
"""


def compile_times(*, model: str, width: float, size: int, batch: int,
                  k: int) -> dict:
  out = {}
  with tempfile.TemporaryDirectory() as cache:
    for run in ("cold", "warm"):
      code = _CHILD.format(cache=cache, here=str(HERE), model=model,
                           width=width, size=size, batch=batch, k=k)
      res = subprocess.run([sys.executable, "-c", code], capture_output=True,
                           text=True, check=False)
      line = [l for l in res.stdout.splitlines() if l.startswith("RESULT ")]
      if not line:
        raise RuntimeError(res.stderr[-3000:])
      r = json.loads(line[0].split(" ", 1)[1])
      out[f"{run}_compile_s"] = r["compile_s"]
      out[f"{run}_process_s"] = r["process_s"]
  return out


def eval_throughput(*, model: str, width: float, size: int, batch: int,
                    k: int, repeats: int = 3) -> float:
  import time  # pylint: disable=import-outside-toplevel
  import statistics  # pylint: disable=import-outside-toplevel
  import common  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from ols_jax import parallel  # pylint: disable=import-outside-toplevel
  mesh = parallel.make_mesh(jax.devices()[:1])
  fn = parallel.jit_eval_step(mesh, with_outputs=False)
  st = parallel.replicate_on_mesh(
      common.make_state(model, k, size, width=width), mesh)
  b = parallel.put_batch(common.make_batch(batch, size, k), mesh)
  jax.block_until_ready(fn(st, b))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(3):
      r = fn(st, b)
    jax.block_until_ready(r)
    times.append((time.perf_counter() - t0) / 3)
  return batch / statistics.median(times)


def run(*, model: str = "resnet18", width: float = 0.25, size: int = 28,
        batch: int = 128, k: int = 4) -> dict:
  row = {"model": model, "width": width, "image_size": size,
         "batch_size": batch, "K": k}
  row.update(compile_times(model=model, width=width, size=size, batch=batch,
                           k=k))
  row["eval_images_per_s"] = eval_throughput(model=model, width=width,
                                             size=size, batch=batch, k=k)
  print(f"{model} w{width} {size}px: train-step compile cold "
        f"{row['cold_compile_s']:.2f} s, warm (persistent cache) "
        f"{row['warm_compile_s']:.2f} s; process cold "
        f"{row['cold_process_s']:.1f} s / warm {row['warm_process_s']:.1f} s;"
        f" eval {row['eval_images_per_s']:.0f} img/s", flush=True)
  return row


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--model", default="resnet18")
  p.add_argument("--width", type=float, default=0.25)
  p.add_argument("--image_size", type=int, default=28)
  p.add_argument("--json", type=pathlib.Path, default=None)
  a = p.parse_args()
  row = run(model=a.model, width=a.width, size=a.image_size)
  if a.json:
    a.json.write_text(json.dumps({"compile_eval": row}, indent=2))


if __name__ == "__main__":
  main()
