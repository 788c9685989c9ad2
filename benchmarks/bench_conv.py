"""Where does an XLA CPU train step lose to PyTorch? One convolution at a time.

For each distinct convolution of ResNet-18 (small-input stem) at one image
size and batch, times the three kernels of training, forward (y = x * w),
input gradient (dx) and weight gradient (dw), in JAX (XLA CPU, each jitted on
its own, via ``jax.vjp`` of ``lax.conv_general_dilated``) and, when torch is
installed, in PyTorch eager (``torch.nn.grad.conv2d_input/_weight``).
It is the measurement behind docs/PERFORMANCE.md's finding that XLA's CPU
weight-gradient convolution is the slowest part of a training step.

  python benchmarks/bench_conv.py --image_size 64 --batch_size 32 --repeats 2
"""

from __future__ import annotations

import argparse
import pathlib

import common
import jax
import jax.numpy as jnp
import numpy as np


def resnet18_convs(size: int):
  """(name, H_in, C_in, C_out, kernel, stride) of ResNet-18's distinct convs."""
  rows = [("stem", size, 3, 64, 3, 1)]
  h, cin = size, 64
  for i, width in enumerate((64, 128, 256, 512)):
    stride = 1 if i == 0 else 2
    rows.append((f"stage{i + 1}_first", h, cin, width, 3, stride))
    if stride == 2:
      rows.append((f"stage{i + 1}_down", h, cin, width, 1, 2))
    h = h // stride
    rows.append((f"stage{i + 1}_3x3", h, width, width, 3, 1))
    cin = width
  return rows


def jax_times(n, h, cin, cout, k, stride, *, repeats: int):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((n, h, h, cin), np.float32))
  w = jnp.asarray(rng.standard_normal((k, k, cin, cout), np.float32) * 0.1)
  pad = k // 2

  def conv(x, w):
    return jax.lax.conv_general_dilated(
        x, w, (stride, stride), [(pad, pad)] * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  y = jax.jit(conv)(x, w)
  dy = jnp.ones_like(y)
  fwd = jax.jit(conv)
  dx = jax.jit(lambda x, w, dy: jax.vjp(lambda a: conv(a, w), x)[1](dy)[0])
  dw = jax.jit(lambda x, w, dy: jax.vjp(lambda b: conv(x, b), w)[1](dy)[0])
  return {
      "fwd": common.median_seconds(lambda _: fwd(x, w), repeats=repeats),
      "dx": common.median_seconds(lambda _: dx(x, w, dy), repeats=repeats),
      "dw": common.median_seconds(lambda _: dw(x, w, dy), repeats=repeats),
  }


def torch_times(n, h, cin, cout, k, stride, *, repeats: int):
  import torch  # pylint: disable=import-outside-toplevel
  g = torch.Generator().manual_seed(0)
  fmt = torch.channels_last
  x = torch.randn(n, cin, h, h, generator=g).contiguous(memory_format=fmt)
  w = (torch.randn(cout, cin, k, k, generator=g) * 0.1).contiguous(
      memory_format=fmt)
  pad = k // 2
  conv = torch.nn.functional.conv2d
  with torch.no_grad():
    y = conv(x, w, stride=stride, padding=pad)
  dy = torch.ones_like(y)

  def fwd(_):
    with torch.no_grad():
      conv(x, w, stride=stride, padding=pad)

  def dx(_):
    torch.nn.grad.conv2d_input(x.shape, w, dy, stride=stride, padding=pad)

  def dw(_):
    torch.nn.grad.conv2d_weight(x, w.shape, dy, stride=stride, padding=pad)

  return {"fwd": common.median_seconds(fwd, repeats=repeats),
          "dx": common.median_seconds(dx, repeats=repeats),
          "dw": common.median_seconds(dw, repeats=repeats)}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--image_size", type=int, default=64)
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--no_torch", action="store_true")
  p.add_argument("--json", type=pathlib.Path, default=None)
  a = p.parse_args()
  have_torch = common.torch_available() and not a.no_torch
  frameworks = ("lax", "torch") if have_torch else ("lax",)
  rows, totals = [], {}
  print(f"ResNet-18 convolutions, {a.image_size} px, batch {a.batch_size}; "
        "ms per call (median of {a.repeats})".format(a=a))
  for name, h, cin, cout, k, stride in resnet18_convs(a.image_size):
    row = {"conv": name, "h": h, "cin": cin, "cout": cout, "k": k,
           "stride": stride}
    row["lax"] = jax_times(a.batch_size, h, cin, cout, k, stride,
                           repeats=a.repeats)
    if have_torch:
      row["torch"] = torch_times(a.batch_size, h, cin, cout, k, stride,
                                 repeats=a.repeats)
    rows.append(row)
    cells = []
    for impl in frameworks:
      t = row[impl]
      totals.setdefault(impl, {"fwd": 0.0, "dx": 0.0, "dw": 0.0})
      for part in t:
        totals[impl][part] += t[part]
      cells.append(f"{impl}: " + " ".join(
          f"{part} {1e3 * t[part]:7.1f}" for part in ("fwd", "dx", "dw")))
    print(f"{name:14s} {h:3d}px {cin:3d}->{cout:3d} k{k} s{stride} | "
          + " | ".join(cells), flush=True)
  print("sum (each distinct conv once): " + " | ".join(
      f"{impl}: " + " ".join(f"{part} {1e3 * v:.0f}" for part, v in t.items())
      for impl, t in totals.items()))
  if a.json:
    common.write_json(a.json, {"image_size": a.image_size,
                               "batch_size": a.batch_size, "rows": rows,
                               "totals_s": totals})


if __name__ == "__main__":
  main()
