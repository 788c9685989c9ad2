"""Can a 3x3 convolution written as matrix products beat XLA CPU's own?

Times, for one convolution shape, XLA's ``lax.conv_general_dilated`` (forward,
input gradient and weight gradient via ``jax.vjp``) against hand-written
formulations that XLA lowers to GEMMs (its multi-threaded dot kernels):

* ``im2col``: the nine shifted copies of the padded input concatenated along
  channels, one GEMM;
* ``taps``: nine GEMMs on shifted slices, summed;
* ``gemm_t`` (weight gradient only): the transposed input materialised so
  that ``dW = P^T dY`` is a plain row-major GEMM.

Every variant is checked against XLA's result (relative max error printed).
This is the experiment behind docs/PERFORMANCE.md's point 4.

  python benchmarks/bench_conv_gemm.py --batch 32 --size 64 --cin 64 --cout 64 --stride 1
"""

from __future__ import annotations

import argparse

import common
import jax
import jax.numpy as jnp
import numpy as np


def _time(fn, *args, repeats: int = 3):
  """Milliseconds of jitted ``fn(*args)`` (median) and its output."""
  fn = jax.jit(fn)
  out = jax.block_until_ready(fn(*args))
  ms = 1e3 * common.median_seconds(lambda _: fn(*args), repeats=repeats,
                                   warmup=0)
  return ms, out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--size", type=int, default=64)
  p.add_argument("--cin", type=int, default=64)
  p.add_argument("--cout", type=int, default=64)
  p.add_argument("--stride", type=int, default=1, choices=(1, 2))
  p.add_argument("--repeats", type=int, default=3)
  a = p.parse_args()
  n, h, c, co, s = a.batch, a.size, a.cin, a.cout, a.stride
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((n, h, h, c), np.float32))
  w = jnp.asarray(rng.standard_normal((3, 3, c, co), np.float32))
  ho = h // s
  dy = jnp.asarray(rng.standard_normal((n, ho, ho, co), np.float32))
  last = s * (ho - 1) + 1  # extent of a strided window along one axis

  def lax_conv(x, w):
    return jax.lax.conv_general_dilated(
        x, w, (s, s), [(1, 1), (1, 1)], dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def shifted(x):
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return [xp[:, i:i + last:s, j:j + last:s, :] for i in range(3) for j in range(3)]

  def fwd_im2col(x, w):
    cols = jnp.concatenate(shifted(x), -1).reshape(-1, 9 * c)
    return (cols @ w.reshape(9 * c, co)).reshape(n, ho, ho, co)

  def fwd_taps(x, w):
    wt = w.reshape(9, c, co)
    return sum(t.reshape(-1, c) @ wt[k] for k, t in enumerate(shifted(x))).reshape(
        n, ho, ho, co)

  def dw_im2col(x, dy):
    cols = jnp.concatenate(shifted(x), -1).reshape(-1, 9 * c)
    return (cols.T @ dy.reshape(-1, co)).reshape(3, 3, c, co)

  def dw_taps(x, dy):
    d = dy.reshape(-1, co)
    return jnp.stack([t.reshape(-1, c).T @ d for t in shifted(x)]).reshape(3, 3, c, co)

  def dw_gemm_t(x, dy):
    xt = jnp.pad(jnp.transpose(x, (3, 0, 1, 2)), ((0, 0), (0, 0), (1, 1), (1, 1)))
    taps = [xt[:, :, i:i + last:s, j:j + last:s] for i in range(3) for j in range(3)]
    cols_t = jnp.stack(taps, 0).reshape(9 * c, -1)
    return (cols_t @ dy.reshape(-1, co)).reshape(3, 3, c, co)

  def dx_taps(x, dy):
    del x
    wt, d, hp = w.reshape(9, c, co), dy.reshape(-1, co), h + 2
    acc = None
    for k in range(9):
      i, j = divmod(k, 3)
      g = (d @ wt[k].T).reshape(n, ho, ho, c)
      g = jax.lax.pad(g, 0.0, ((0, 0, 0), (i, hp - i - last, s - 1),
                               (j, hp - j - last, s - 1), (0, 0, 0)))
      acc = g if acc is None else acc + g
    return acc[:, 1:h + 1, 1:h + 1, :]

  def lax_dx(x, dy):
    return jax.vjp(lambda a: lax_conv(a, w), x)[1](dy)[0]

  def lax_dw(x, dy):
    return jax.vjp(lambda b: lax_conv(x, b), w)[1](dy)[0]

  print(f"3x3 conv {c}->{co}, {h} px, stride {s}, batch {n}; ms (median of {a.repeats})")
  for kind, ref_fn, args, variants in (
      ("forward", lax_conv, (x, w), {"im2col": fwd_im2col, "taps": fwd_taps}),
      ("input grad", lax_dx, (x, dy), {"taps": dx_taps}),
      ("weight grad", lax_dw, (x, dy), {"im2col": dw_im2col, "taps": dw_taps,
                                        "gemm_t": dw_gemm_t})):
    t_ref, ref = _time(ref_fn, *args, repeats=a.repeats)
    cells = [f"xla {t_ref:7.1f}"]
    scale = float(jnp.max(jnp.abs(ref)))
    for name, fn in variants.items():
      t, out = _time(fn, *args, repeats=a.repeats)
      err = float(jnp.max(jnp.abs(out - ref))) / scale
      cells.append(f"{name} {t:7.1f} (x{t / t_ref:.2f}, rel err {err:.0e})")
    print(f"{kind:12s} " + " | ".join(cells), flush=True)


if __name__ == "__main__":
  main()
