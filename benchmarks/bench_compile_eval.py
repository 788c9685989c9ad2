"""Train-step compile time (cold, and warm from JAX's persistent compilation
cache) and eval throughput.

Compile: two fresh subprocesses share one new cache directory
(``JAX_COMPILATION_CACHE_DIR``, ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0``);
the first compiles cold and fills it, the second loads from it.

  python benchmarks/bench_compile_eval.py [--model resnet18 --width 0.25]
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import tempfile
import time

# A child's process_s: from here (before JAX is imported) to its first step.
PROCESS_START = time.perf_counter()

# pylint: disable=g-import-not-at-top,wrong-import-position
import common
import jax

from ols_jax import parallel


def _placed(model: str, width: float, size: int, batch: int, k: int, mesh):
  """A fresh train state and a synthetic batch, placed on ``mesh``."""
  state = common.make_state(model, k, size, width=width)
  return (parallel.replicate_on_mesh(state, mesh),
          parallel.put_batch(common.make_batch(batch, size, k), mesh))


def child(model: str, width: float, size: int, batch: int, k: int) -> dict:
  """In a fresh process: compiles the ``ols`` train step (the persistent
  cache is set by the environment) and runs it once."""
  step, mesh = common.jit_step("ols", k)
  state, b = _placed(model, width, size, batch, k, mesh)
  start = time.perf_counter()
  compiled = step.lower(state, b).compile()
  compile_s = time.perf_counter() - start
  state, _ = compiled(state, b)
  jax.block_until_ready(state)
  return {"compile_s": compile_s,
          "process_s": time.perf_counter() - PROCESS_START}


def compile_times(*, model: str, width: float, size: int, batch: int,
                  k: int) -> dict:
  out = {}
  with tempfile.TemporaryDirectory() as cache:
    env = {"JAX_COMPILATION_CACHE_DIR": cache,
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    for run in ("cold", "warm"):
      r = common.run_child(__file__, {"model": model, "width": width,
                                      "size": size, "batch": batch, "k": k},
                           env_updates=env)
      out[f"{run}_compile_s"] = r["compile_s"]
      out[f"{run}_process_s"] = r["process_s"]
  return out


def eval_throughput(*, model: str, width: float, size: int, batch: int,
                    k: int, repeats: int = 3) -> float:
  mesh = parallel.make_mesh(jax.devices()[:1])
  fn = parallel.jit_eval_step(mesh, with_outputs=False)
  state, b = _placed(model, width, size, batch, k, mesh)
  jax.block_until_ready(fn(state, b))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(3):
      r = fn(state, b)
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
    common.write_json(a.json, {"compile_eval": row})


if __name__ == "__main__":
  common.main_or_child(main, child)
