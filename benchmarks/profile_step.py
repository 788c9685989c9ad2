"""Where the CPU time of one OLS train step goes, by kind of op.

Runs the compiled train step under ``jax.profiler`` (a Perfetto trace), reads
the duration of every XLA CPU thunk, and attributes each to the HLO
instruction of the same name in the compiled module:

- ``conv_forward``: convolutions under ``jvp(...)`` and not under ``transpose``;
- ``conv_input_grad``: convolutions under ``transpose(jvp(...))`` whose output
  is not kernel-shaped;
- ``conv_weight_grad``: convolutions whose output has the shape of a
  convolution kernel of the model (XLA often drops their metadata);
- ``batch_norm``: ops whose ``op_name`` lies in a ``bn*`` / ``downsample_bn``
  module (forward and backward);
- ``layout_copy``: copies / transposes / bitcasts with no model metadata
  (layout changes XLA inserts around the convolutions);
- ``rest``: everything else (loss, OLS sums, optimiser update, ReLU, pooling).

Shares are of the summed thunk time; ``thunk_sum / wall`` above 1 means ops
ran concurrently on the two cores. Cases: the study model (ResNet-18 x0.25,
28 px, batch 128) and full-width ResNet-18 at 64 px (batch 32), one device.

  python benchmarks/profile_step.py --json benchmarks/results/profile_step_xeon.json
  python benchmarks/profile_step.py --tiny      # seconds: the script's own check
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time

import common

CATEGORIES = ("conv_forward", "conv_input_grad", "conv_weight_grad", "batch_norm",
              "layout_copy", "rest")
# (name, image size, batch, width)
CASES = (("x025_28px_b128", 28, 128, 0.25), ("x1_64px_b32", 64, 32, 1.0))
TINY_CASES = (("tiny", 16, 8, 0.125),)

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\w+)\[([\d,]*)\][^ ]*\s+([\w\-]+)\(")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_BN = re.compile(r"(^|/)(bn\d*|downsample_bn)(/|$)")


def parse_hlo(text: str) -> dict:
  """``{instruction: (opcode, output shape, op_name, called computation,
  computation it lies in)}`` of an HLO module's text."""
  out, computation = {}, None
  for line in text.splitlines():
    m = _INSTR.match(line)
    if not m:
      c = _COMPUTATION.match(line)
      if c:
        computation = c.group(1)
      continue
    name, _, dims, opcode = m.groups()
    shape = tuple(int(d) for d in dims.split(",") if d)
    op = _OP_NAME.search(line)
    calls = _CALLS.search(line)
    out[name] = (opcode, shape, op.group(1) if op else "", calls.group(1) if calls else None,
                 computation)
  return out


def _inner_convolution(hlo: dict, computation: str, seen=()) -> tuple | None:
  """The first convolution inside ``computation`` (or a computation it calls)."""
  for opcode, shape, op_name, calls, where in hlo.values():
    if where != computation:
      continue
    if opcode == "convolution":
      return shape, op_name
    if calls and calls not in seen:
      found = _inner_convolution(hlo, calls, seen + (computation,))
      if found:
        return found
  return None


def classify(opcode: str, shape: tuple, op_name: str, kernel_shapes: set) -> str:
  """The category (see the module docstring) of one HLO instruction."""
  if opcode == "convolution":
    if tuple(sorted(shape)) in kernel_shapes:
      return "conv_weight_grad"
    if "transpose(" in op_name:
      return "conv_input_grad"
    return "conv_forward" if op_name else "conv_input_grad"
  if _BN.search(op_name) and "(ResNet)" in op_name:
    return "batch_norm"
  if not op_name and opcode in ("copy", "transpose", "bitcast"):
    return "layout_copy"
  return "rest"


def categorise(events, hlo: dict, kernel_shapes: set) -> dict:
  """Summed microseconds per category over the trace's thunk events.

  A fusion that holds a convolution (XLA CPU runs most convolutions inside
  YNN / XNNPACK / oneDNN fusions) counts as that convolution: its shape and
  metadata, else the fusion's own metadata.
  """
  sums = collections.Counter()
  inner_cache = {}
  for e in events:
    if e.get("ph") != "X" or e["name"] not in hlo:
      continue
    opcode, shape, op_name, calls, _ = hlo[e["name"]]
    if opcode in ("fusion", "custom-call", "call") and calls:
      if calls not in inner_cache:
        inner_cache[calls] = _inner_convolution(hlo, calls)
      inner = inner_cache[calls]
      if inner is not None:
        opcode, shape, op_name = "convolution", inner[0], inner[1] or op_name
    if opcode == "fusion" and re.match(r"(transpose_copy|copy|bitcast)", e["name"]):
      opcode = "copy"  # a fusion is named after its root
    sums[classify(opcode, shape, op_name, kernel_shapes)] += e.get("dur", 0.0)
  return {c: float(sums.get(c, 0.0)) for c in CATEGORIES}


def child(size: int, batch: int, width: float, steps: int) -> dict:
  """One case: per-category milliseconds per step and the wall step time."""
  import jax  # pylint: disable=import-outside-toplevel
  from ols_jax import parallel  # pylint: disable=import-outside-toplevel
  mesh = parallel.make_mesh(jax.devices()[:1])
  step, mesh = common.jit_step("ols", 4, mesh)
  data = parallel.put_batch(common.make_batch(batch, size, 4), mesh)
  state = parallel.replicate_on_mesh(common.make_state("resnet18", 4, size, width=width), mesh)
  hlo = parse_hlo(step.lower(state, data).compile().as_text())
  kernel_shapes = {tuple(sorted(x.shape)) for x in jax.tree.leaves(state.params)
                   if x.ndim == 4}
  runner = common.StepRunner(step, state, data)
  runner(2)
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
      start = time.perf_counter()
      runner(steps)
      wall = time.perf_counter() - start
    (path,) = glob.glob(os.path.join(tmp, "**", "perfetto_trace.json.gz"), recursive=True)
    with gzip.open(path) as f:
      trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  us = categorise(events, hlo, kernel_shapes)
  total = sum(us.values())
  if total <= 0:
    raise RuntimeError("the trace held no XLA thunk events of the step")
  plain_wall = runner(steps) / steps
  return {"steps": steps, "wall_ms_per_step_traced": 1e3 * wall / steps,
          "wall_ms_per_step_untraced": 1e3 * plain_wall,
          "thunk_ms_per_step": 1e-3 * total / steps,
          "thunk_sum_over_wall": (1e-6 * total) / wall,
          "ms_per_step": {c: 1e-3 * v / steps for c, v in us.items()},
          "share": {c: v / total for c, v in us.items()}}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--tiny", action="store_true", help="tiny case, 1 step")
  p.add_argument("--json", default=None)
  a = p.parse_args()
  cases, steps = (TINY_CASES, 1) if a.tiny else (CASES, a.steps)
  rows = []
  for case, size, batch, width in cases:
    out = common.run_child(__file__, {"size": size, "batch": batch, "width": width,
                                      "steps": steps}, env_updates={"JAX_PLATFORMS": "cpu"})
    row = {"case": case, "image_size": size, "batch_size": batch, "width": width, **out}
    rows.append(row)
    shares = "  ".join(f"{c} {100 * row['share'][c]:.1f}%" for c in CATEGORIES)
    print(f"{case:15s} {row['wall_ms_per_step_untraced']:8.1f} ms/step  "
          f"thunks/wall {row['thunk_sum_over_wall']:.2f}  {shares}", flush=True)
  if a.json:
    common.write_json(a.json, {"machine": common.machine_info(), "categories": CATEGORIES,
                               "cases": rows})


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  common.main_or_child(main, child)
