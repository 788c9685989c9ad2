"""Train-step throughput, compile time and memory of the model zoo.

For every (model, image size) it jits one SGD (momentum 0.9) step with
donated params / batch stats / optimizer state, times the compilation, runs
warm-up steps and reports the median images/s over several timed windows.
Memory comes from the compiled executable's ``memory_analysis()`` (arguments +
temporaries + outputs - aliased) and the process' peak RSS growth.

Example (a few minutes on a 2-core CPU; ``run_all.py --models`` runs the same
at 64 px):
  python benchmarks/bench_models.py --sizes 64 --batch 8 --json benchmarks/results/models_64px.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import common  # noqa: E402  (benchmarks/, on sys.path when run as a script)
from ols_jax import models  # noqa: E402  pylint: disable=g-import-not-at-top

DEFAULT_MODELS = ('tiny_cnn', 'resnet18', 'resnet34', 'resnet50',
                  'mobilenet_v2', 'vgg19', 'vgg19_bn')


def _peak_rss_mib() -> float:
  # ru_maxrss is KiB on Linux.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _memory_mib(compiled) -> float | None:
  """Arguments + temporaries + outputs - aliased bytes, in MiB (or None)."""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if stats is None:
    return None
  total = (stats.argument_size_in_bytes + stats.temp_size_in_bytes +
           stats.output_size_in_bytes - stats.alias_size_in_bytes)
  return total / 2**20


def bench_one(name: str, size: int, batch: int, *, channels: int,
              num_classes: int, width: float, small_input: bool,
              dtype: str, warmup: int, windows: int, steps: int) -> dict:
  """Benchmarks one jitted, donated SGD train step.

  Args:
    name: model name in ``models.MODEL_NAMES``.
    size: square image size in px.
    batch: images per step.
    channels: input channels.
    num_classes: logits per image.
    width: ``width_multiplier``.
    small_input: the models' ``small_input`` option.
    dtype: compute dtype name ('float32' or 'bfloat16').
    warmup: untimed steps after compilation.
    windows: timed windows (the median is reported).
    steps: steps per timed window.

  Returns:
    A dict of the settings and measurements.
  """
  rss0 = _peak_rss_mib()
  model = models.create(name, num_classes, width_multiplier=width,
                        small_input=small_input, dtype=jnp.dtype(dtype))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(-1, 1, (batch, size, size, channels)),
                       jnp.float32)
  labels = jnp.asarray(rng.integers(0, num_classes, (batch,)), jnp.int32)
  variables = jax.jit(model.init)({'params': jax.random.key(0)}, images[:1])
  params = variables['params']
  stats = variables.get('batch_stats', {})
  tx = optax.sgd(0.01, momentum=0.9)
  opt_state = tx.init(params)

  def loss_fn(params, stats, key):
    variables = {'params': params, **({'batch_stats': stats} if stats else {})}
    logits, updates = model.apply(variables, images, train=True,
                                  mutable=['batch_stats'],
                                  rngs={'dropout': key})
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return loss.mean(), updates.get('batch_stats', {})

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
  def train_step(params, stats, opt_state, key):
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, stats, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, loss

  key = jax.random.key(1)
  start = time.perf_counter()
  compiled = train_step.lower(params, stats, opt_state, key).compile()
  compile_s = time.perf_counter() - start
  for _ in range(warmup):
    params, stats, opt_state, loss = compiled(params, stats, opt_state, key)
  jax.block_until_ready(loss)
  rates = []
  for _ in range(windows):
    start = time.perf_counter()
    for _ in range(steps):
      params, stats, opt_state, loss = compiled(params, stats, opt_state, key)
    jax.block_until_ready(loss)
    rates.append(batch * steps / (time.perf_counter() - start))
  return {
      'model': name,
      'size': size,
      'batch': batch,
      'width': width,
      'small_input': small_input,
      'dtype': dtype,
      'params': models.count_params(params),
      'images_per_s': statistics.median(rates),
      'images_per_s_windows': rates,
      'compile_s': compile_s,
      'xla_memory_mib': _memory_mib(compiled),
      'rss_growth_mib': _peak_rss_mib() - rss0,
      'final_loss': float(loss),
  }


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', nargs='+', default=list(DEFAULT_MODELS),
                      choices=models.MODEL_NAMES)
  parser.add_argument('--sizes', nargs='+', type=int, default=[64])
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--large_batch', type=int, default=2,
                      help='batch for sizes >= 160 px (CPU-friendly)')
  parser.add_argument('--channels', type=int, default=3)
  parser.add_argument('--num_classes', type=int, default=4)
  parser.add_argument('--width_multiplier', type=float, default=1.0)
  parser.add_argument('--small_input', action='store_true')
  parser.add_argument('--dtype', default='float32',
                      choices=('float32', 'bfloat16'))
  parser.add_argument('--warmup', type=int, default=1)
  parser.add_argument('--windows', type=int, default=3)
  parser.add_argument('--steps', type=int, default=2,
                      help='train steps per timed window')
  parser.add_argument('--json', default=None, help='write results here')
  args = parser.parse_args(argv)

  print(f'# jax {jax.__version__} on {jax.devices()[0].platform} '
        f'({jax.device_count()} device(s)), {os.cpu_count()} CPU cores, '
        f'{platform.processor() or platform.machine()}')
  header = (f'{"model":<13} {"px":>4} {"batch":>5} {"params":>12} '
            f'{"img/s":>9} {"compile s":>9} {"XLA MiB":>9} {"RSS+ MiB":>9}')
  print(header)
  print('-' * len(header))
  results = []
  for size in args.sizes:
    batch = args.large_batch if size >= 160 else args.batch
    for name in args.models:
      r = bench_one(name, size, batch, channels=args.channels,
                    num_classes=args.num_classes, width=args.width_multiplier,
                    small_input=args.small_input, dtype=args.dtype,
                    warmup=args.warmup, windows=args.windows, steps=args.steps)
      results.append(r)
      mem = ('n/a' if r['xla_memory_mib'] is None else
             f'{r["xla_memory_mib"]:.0f}')
      print(f'{name:<13} {size:>4} {batch:>5} {r["params"]:>12,} '
            f'{r["images_per_s"]:>9.1f} {r["compile_s"]:>9.1f} {mem:>9} '
            f'{r["rss_growth_mib"]:>9.0f}', flush=True)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'argv': sys.argv, 'jax': jax.__version__,
                 'cpu_count': os.cpu_count(), 'machine': common.machine_info(),
                 'results': results}, f,
                indent=2)


if __name__ == '__main__':
  main()
