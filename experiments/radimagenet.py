"""Train and evaluate one method/model/dataset: the project's main job.

  python experiments/radimagenet.py --config=experiments/configs/smoke.py --workdir=runs/smoke

Every config field can be overridden: --config.method=ce --config.seed=1 ...
Rerunning the same command on the same workdir resumes the run.
"""


from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ols_jax import cli
from ols_jax import parallel

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (resumed if it holds a run).")
_DEBUG = flags.DEFINE_bool("debug", False, "Show full tracebacks on errors.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Multi-host run: call jax.distributed.initialize() first (coordinator, process "
    "count and id from the cluster environment, e.g. SLURM or Cloud TPU).")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", 0,
    "On a CPU-only host: split the CPU into this many XLA devices for data "
    "parallelism (XLA runs each convolution on one thread). 0 = one per usable "
    "core, reduced to a count that divides the batch sizes; 1 = a single device. "
    "Ignored when XLA_FLAGS already fixes the host device count or thread count.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  if not _DEBUG.value:
    # Orbax logs a traceback for a failed write that it also raises; the raised
    # error is reported on one line (--debug shows everything).
    logging.get_absl_logger().addFilter(
        lambda r: r.levelno < logging.converter.STANDARD_ERROR or "orbax" not in r.pathname)
  if _DISTRIBUTED.value:
    parallel.initialize_distributed(auto=True)
  else:
    config = _CONFIG.value
    parallel.configure_cpu_devices(_CPU_DEVICES.value,
                                   (config.batch_size, config.eval_batch_size))
  return cli.run_main(_CONFIG.value, _WORKDIR.value, debug=_DEBUG.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
