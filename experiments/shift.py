"""A finished run under distribution shift: the corruption suite on its test split.

  python experiments/shift.py --workdir=runs/smoke --output=shift.json \
      --figure=shift.png
  python experiments/shift.py --workdir=runs/smoke --output=shift.json \
      --corruptions=gaussian_noise,contrast --severities=1,3,5

Restores the run's selected checkpoint, loads its test split as the run did
(the same half with ``--config.calibration_split=test_half``), corrupts it
with every chosen corruption and severity (``ols_jax/corruptions.py``) and
scores it through the training's evaluation path, raw and with the run's own
temperature. Writes a JSON list of records ``{corruption, severity,
top1_error, ece, nll, ece_ts, nll_ts, aurc}`` (the clean set first, as
``none`` / 0: it equals the run's results.json test metrics) and, with
``--figure``, the error and ECE curves against severity. Progress goes to
stderr.
"""

import sys

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from ols_jax import cli  # noqa: E402
from ols_jax import distributed  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished training run.")
_OUTPUT = flags.DEFINE_string("output", None, "Records: a .json file.")
_FIGURE = flags.DEFINE_string("figure", None, "Optional figure: a .png file.")
_CORRUPTIONS = flags.DEFINE_string(
    "corruptions", None, "Comma-separated corruptions (default: all eight).")
_SEVERITIES = flags.DEFINE_string(
    "severities", None, "Comma-separated severities in 1..5 (default: all).")
_PROGRESS = flags.DEFINE_bool("progress", True, "One line per record on stderr.")
_DEBUG = flags.DEFINE_bool("debug", False, "Show full tracebacks on errors.")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", 0,
    "On a CPU-only host: XLA devices to split the CPU into (0 = one per usable core).")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  distributed.configure_cpu_devices(_CPU_DEVICES.value, ())
  from ols_jax import shift_run  # pylint: disable=import-outside-toplevel
  log = (lambda m: print(m, file=sys.stderr, flush=True)) if _PROGRESS.value else None
  summary = cli.call_or_exit(
      shift_run.shift_to_files, _WORKDIR.value, _OUTPUT.value, figure=_FIGURE.value,
      corruption_names=_CORRUPTIONS.value, severity_list=_SEVERITIES.value, log=log,
      debug=_DEBUG.value)
  records = summary["records"]
  clean = records[0]
  worst = {k: max(records, key=lambda r, k=k: r[k]) for k in ("ece", "ece_ts")}
  where = {k: f"{r['corruption']} {r['severity']}" for k, r in worst.items()}
  print(f"scored {len(records)} sets ({len(records) - 1} corrupted + clean) of "
        f"{summary['method']} / {summary['model']} on {summary['dataset']}: clean top-1 "
        f"error {100 * clean['top1_error']:.2f}%, ECE {100 * clean['ece']:.2f}% "
        f"({100 * clean['ece_ts']:.2f}% after TS); worst ECE "
        f"{100 * worst['ece']['ece']:.2f}% ({where['ece']}), after TS "
        f"{100 * worst['ece_ts']['ece_ts']:.2f}% ({where['ece_ts']}) -> "
        f"{summary['output']}" + (f", {summary['figure']}" if summary["figure"] else ""))
  return 0


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "output"])
  app.run(main)
