"""OLS cost: train-step time of ``ols`` vs ``ce`` (same model, same batch),
epoch-boundary time and accumulator memory, for several class counts K.

ce and ols windows are interleaved in one process (order flipped each window)
and the reported ratio is the median of the paired window ratios.

  python benchmarks/bench_ols_overhead.py [--ks 4,165,1000,10000] \
      [--model resnet18 --width 0.25 --image_size 28 --batch_size 128] \
      [--json out.json]
"""

from __future__ import annotations

import argparse
import pathlib

import common
import jax

from ols_jax import parallel


def boundary_time(state, mesh, repeats: int = 5) -> float:
  """Median seconds of one compiled epoch boundary (state donated)."""
  return common.median_seconds(parallel.jit_epoch_boundary(mesh), state,
                               repeats=repeats)


def isolated_ols_ms(k: int, batch_size: int, repeats: int = 200) -> float:
  """Median ms of the work OLS adds to a step, compiled alone: the float32
  softmax + scatter-add accumulation and the soft-target term's gradient
  with respect to the logits (what CE does not do). Far less noisy than a
  difference of two whole-step timings on a shared machine."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from ols_jax import ols  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(batch_size, k)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, k, batch_size), jnp.int32)

  def extra(state, logits, labels):
    soft = lambda z: ols.loss(z, labels, state.soft_labels, 0.0)  # noqa: E731
    return ols.accumulate(state, logits, labels), jax.grad(soft)(logits)

  fn = jax.jit(extra, donate_argnums=0)
  return 1e3 * common.median_seconds(lambda c: fn(c[0], logits, labels),
                                     (ols.init(k), None), repeats=repeats)


def measure_k(k: int, *, model: str, width: float, image_size: int,
              batch_size: int, windows: int, steps: int,
              dtype: str = "float32") -> dict:
  """ce vs ols step time, boundary time and OLS memory for one K."""
  batch = common.make_batch(batch_size, image_size, k)
  runners, mesh = {}, None
  for method in ("ce", "ols"):
    step, mesh = common.jit_step(method, k, mesh)
    state = common.make_state(model, k, image_size, width=width, dtype=dtype)
    dev_batch = parallel.put_batch(batch, mesh)
    state = parallel.replicate_on_mesh(state, mesh)
    runners[method] = common.StepRunner(step, state, dev_batch)
  timing = common.interleaved(runners, windows=windows, steps=steps)
  ols_state = runners["ols"].state
  acc = ols_state.ols
  row = {
      "K": k, "model": model, "width": width, "image_size": image_size,
      "batch_size": batch_size, "dtype": dtype,
      "ce_step_ms": 1e3 * timing["ce"]["median_s"],
      "ols_step_ms": 1e3 * timing["ols"]["median_s"],
      "ols_over_ce": timing["ols"]["ratio_vs_first"],
      "overhead_pct": 100 * (timing["ols"]["ratio_vs_first"] - 1),
      "accumulator_bytes": common.tree_bytes(
          (acc.soft_labels, acc.prob_sums, acc.counts)),
      "boundary_ms": 1e3 * boundary_time(ols_state, mesh),
      "isolated_ols_ms": isolated_ols_ms(k, batch_size),
  }
  row["isolated_pct_of_ce_step"] = 100 * row["isolated_ols_ms"] / row["ce_step_ms"]
  return row


def run(ks, **kwargs) -> list:
  rows = []
  for k in ks:
    row = measure_k(k, **kwargs)
    rows.append(row)
    print(f"K={k:6d}  ce {row['ce_step_ms']:8.2f} ms  ols "
          f"{row['ols_step_ms']:8.2f} ms  ratio {row['ols_over_ce']:.4f} "
          f"({row['overhead_pct']:+.1f}%)  boundary {row['boundary_ms']:.2f} ms"
          f"  S+sums+counts {row['accumulator_bytes'] / 2**20:.2f} MiB"
          f"  isolated OLS work {row['isolated_ols_ms']:.3f} ms "
          f"({row['isolated_pct_of_ce_step']:.2f}% of the CE step)",
          flush=True)
  return rows


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--ks", default="4,165,1000,10000")
  p.add_argument("--model", default="resnet18")
  p.add_argument("--width", type=float, default=0.25)
  p.add_argument("--image_size", type=int, default=28)
  p.add_argument("--batch_size", type=int, default=128)
  p.add_argument("--windows", type=int, default=7)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--dtype", default="float32", choices=sorted(common.DTYPES))
  p.add_argument("--json", type=pathlib.Path, default=None)
  a = p.parse_args()
  rows = run([int(k) for k in a.ks.split(",")], model=a.model, width=a.width,
             image_size=a.image_size, batch_size=a.batch_size,
             windows=a.windows, steps=a.steps, dtype=a.dtype)
  if a.json:
    common.write_json(a.json, {"machine": common.machine_info(),
                               "ols_overhead": rows})


if __name__ == "__main__":
  main()
