"""Shared helpers of the benchmark suite: building a train state and a
synthetic batch, compiling the project's jit train step, timing several step
functions *interleaved* in one process so that noise from other users of the
(shared) CPU cancels in the ratios, and running a benchmark script again in a
fresh process (settings that JAX reads once per process, e.g. ``XLA_FLAGS``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ols_jax import host
from ols_jax import losses
from ols_jax import models
from ols_jax import parallel
from ols_jax import train_state

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHILD_FLAG = "--child"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def machine_info() -> dict:
  """Host facts recorded with every result file (:func:`ols_jax.host.describe`
  plus the XLA flags in force)."""
  return {**host.describe(), "xla_flags": os.environ.get("XLA_FLAGS", "")}


def make_batch(batch_size: int, image_size: int, num_classes: int,
               channels: int = 3, seed: int = 0) -> Dict[str, np.ndarray]:
  """A synthetic float32 batch in [-1, 1] with integer labels and mask 1."""
  rng = np.random.default_rng(seed)
  return {
      "image": rng.uniform(-1, 1, (batch_size, image_size, image_size,
                                   channels)).astype(np.float32),
      "label": rng.integers(0, num_classes, batch_size).astype(np.int32),
      "mask": np.ones(batch_size, np.float32),
  }


def make_state(model_name: str, num_classes: int, image_size: int, *,
               width: float = 1.0, small_input: bool = True,
               dtype: str = "float32", channels: int = 3, seed: int = 0,
               bn_axis_name=None):
  """A :class:`TrainState` with SGD + momentum (the OLS paper's optimiser)."""
  model = models.create(model_name, num_classes, small_input=small_input,
                        width_multiplier=width, dtype=DTYPES[dtype],
                        bn_axis_name=bn_axis_name)
  tx = optax.sgd(0.01, momentum=0.9)
  return train_state.create(model, tx,
                            input_shape=(image_size, image_size, channels),
                            num_classes=num_classes,
                            rng=jax.random.PRNGKey(seed))


def jit_step(method: str, num_classes: int, mesh=None):
  """The project's jit train step (``parallel.jit_train_step``) for a method."""
  spec = losses.LossSpec(method=method, num_classes=num_classes, alpha=0.5)
  mesh = parallel.make_mesh(jax.devices()[:1]) if mesh is None else mesh
  return parallel.jit_train_step(spec, mesh), mesh


class StepRunner:
  """Owns one (donated) state and runs ``n`` steps of a compiled step."""

  def __init__(self, step_fn, state, batch):
    self.step_fn, self.state, self.batch = step_fn, state, batch

  def __call__(self, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
      self.state, metrics = self.step_fn(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))
    return time.perf_counter() - start


def interleaved(runners: Dict[str, Callable[[int], float]], *, windows: int,
                steps: int, warmup: int = 2) -> Dict[str, dict]:
  """Times every runner in alternating windows (order flipped each window).

  Returns per runner ``{'median_s', 'windows_s'}`` where times are seconds per
  step, and per non-first runner the median of the paired window ratios
  against the first runner (``ratio_vs_first``).
  """
  names = list(runners)
  for name in names:
    runners[name](warmup)
  times = {name: [] for name in names}
  for w in range(windows):
    order = names if w % 2 == 0 else names[::-1]
    for name in order:
      times[name].append(runners[name](steps) / steps)
  out = {}
  base = times[names[0]]
  for name in names:
    ratios = [t / b for t, b in zip(times[name], base)]
    out[name] = {"median_s": statistics.median(times[name]),
                 "windows_s": times[name],
                 "ratio_vs_first": statistics.median(ratios)}
  return out


def median_seconds(fn: Callable, carry=None, *, repeats: int,
                   warmup: int = 1) -> float:
  """Median seconds of ``carry = fn(carry)``, each call waited for, after
  ``warmup`` untimed calls; ``carry`` passes donated state between calls."""
  for _ in range(warmup):
    carry = fn(carry)
  jax.block_until_ready(carry)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    carry = jax.block_until_ready(fn(carry))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def tree_bytes(tree) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def repo_path(path) -> str:
  """``path`` relative to the repository root when it lies inside it (result
  files carry no machine-specific absolute paths), else unchanged."""
  p = pathlib.Path(path).resolve()
  try:
    return str(p.relative_to(ROOT))
  except ValueError:
    return str(path)


def write_json(path, obj, **kwargs) -> None:
  """Writes ``obj`` as indented JSON, creating the parent folder."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(obj, indent=2, **kwargs))


def torchvision_models():
  """``torchvision.models``, or None without torchvision.

  A torchvision wheel built against another PyTorch build fails at
  ``import torchvision`` (its C++ operators, e.g. ``torchvision::nms``, do not
  register); the model definitions are pure Python, so then the package's
  folder is opened without running its ``__init__``.
  """
  import importlib  # pylint: disable=import-outside-toplevel
  import types  # pylint: disable=import-outside-toplevel
  try:
    return importlib.import_module("torchvision.models")
  except ImportError:
    return None
  except Exception:  # pylint: disable=broad-except  (the operator registration)
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
      del sys.modules[name]
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
      return None
    pkg = types.ModuleType("torchvision")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["torchvision"] = pkg
    return importlib.import_module("torchvision.models")


def torch_available() -> bool:
  """Whether PyTorch is installed (``benchmarks/requirements.txt``)."""
  return importlib.util.find_spec("torch") is not None


def run_script(script, args=(), *, xla_flags: str = "", env_updates=None,
               timeout=None):
  """Runs ``python <script> *args --json <tmp>`` in a fresh process.

  ``xla_flags`` is appended to the inherited ``XLA_FLAGS``; ``env_updates``
  sets other variables. The script's stdout is shown as it runs. Returns the
  JSON it wrote; raises ``RuntimeError`` with the end of its stderr when it
  fails.
  """
  env = dict(os.environ, **(env_updates or {}))
  env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {xla_flags}".strip()
  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp) / "out.json"
    res = subprocess.run([sys.executable, str(script), *args, "--json", str(out)],
                         env=env, stderr=subprocess.PIPE, text=True,
                         check=False, timeout=timeout)
    if res.returncode or not out.is_file():
      raise RuntimeError(f"{pathlib.Path(script).name} {' '.join(args)} failed "
                         f"(exit {res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(out.read_text())


def run_child(script, params: dict, **kwargs):
  """Runs ``script``'s child function on ``params`` in a fresh process.

  The child is ``python <script> --child <params as JSON> --json <tmp>``, see
  :func:`main_or_child`; keyword arguments go to :func:`run_script`.
  """
  return run_script(script, [CHILD_FLAG, json.dumps(params)], **kwargs)


def main_or_child(main: Callable[[], None], child: Callable[..., object]):
  """A script's entry: ``child(**params)`` written as JSON when run by
  :func:`run_child`, else ``main()``."""
  argv = sys.argv[1:]
  if argv[:1] != [CHILD_FLAG]:
    main()
    return
  if len(argv) != 4 or argv[2] != "--json":
    sys.exit(f"usage: {sys.argv[0]} {CHILD_FLAG} PARAMS_JSON --json OUT")
  write_json(argv[3], child(**json.loads(argv[1])))
