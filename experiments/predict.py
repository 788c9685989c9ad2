"""Classify new scans with a finished run: calibrated probabilities, abstention,
conformal prediction sets and an out-of-distribution flag.

  python experiments/predict.py --workdir=runs/smoke --input=scans/ --output=preds.csv
  python experiments/predict.py --workdir=runs/smoke \
      --input=../shared/data/brain_tumor_mri/brain_tumor_mri_28.npz --split=test \
      --output=preds.jsonl

Inputs: a folder tree or one file of images (PNG, JPEG, TIFF, ...) or DICOM
files, or one split of a MedMNIST-layout npz. Writes one row per image (CSV
or JSONL by the output's suffix) with the prediction, its confidence,
``abstain``, ``prediction_set`` (split-conformal, ``--conformal=aps|lac`` at
``1 - --conformal_alpha`` coverage), ``ood_score`` and ``ood``
(``--ood_score=mahalanobis|energy|msp``, threshold keeping 95% of validation).
"""

import sys


from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from ols_jax import cli  # noqa: E402
from ols_jax import distributed  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished training run.")
_INPUT = flags.DEFINE_string(
    "input", None, "A folder (searched recursively), an image or DICOM file, or an npz.")
_OUTPUT = flags.DEFINE_string("output", None, "Output file: .csv or .jsonl.")
_SPLIT = flags.DEFINE_string("split", "test", "npz split (<split>_images).")
_NO_TEMPERATURE = flags.DEFINE_bool(
    "no_temperature", False, "Raw probabilities (no temperature scaling).")
_NO_ABSTAIN = flags.DEFINE_bool("no_abstain", False, "Never mark a row as abstain.")
_TARGET = flags.DEFINE_float(
    "target_accuracy", None,
    "Abstention target accuracy other than the run's (needs the run's "
    "val_outputs.npz; otherwise the stored threshold is used).")
_NO_SETS = flags.DEFINE_bool("no_sets", False, "No conformal prediction sets.")
_CONFORMAL = flags.DEFINE_string(
    "conformal", "aps", "Prediction-set method: aps or lac (calibrated on the run's "
    "val_outputs.npz with the published probabilities).")
_CONFORMAL_ALPHA = flags.DEFINE_float(
    "conformal_alpha", None,
    "Miscoverage level: sets target 1 - alpha coverage (default: the run's "
    "config.conformal_alpha).")
_NO_OOD = flags.DEFINE_bool("no_ood", False, "No out-of-distribution score and flag.")
_OOD_SCORE = flags.DEFINE_string(
    "ood_score", None,
    "OOD score: mahalanobis, energy or msp (default: mahalanobis when the run saved "
    "ood_fit.npz, else energy); flagged below the threshold keeping 95% of val.")
_SKIP_BAD = flags.DEFINE_bool(
    "skip_bad", False, "Skip unreadable inputs and report them (default: stop).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 0, "Global batch; 0 = the run's.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Progress line on stderr.")
_DEBUG = flags.DEFINE_bool("debug", False, "Show full tracebacks on errors.")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", 0,
    "On a CPU-only host: XLA devices to split the CPU into (0 = one per usable core).")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  distributed.configure_cpu_devices(_CPU_DEVICES.value, ())
  from ols_jax import predict  # pylint: disable=import-outside-toplevel
  summary = cli.call_or_exit(
      predict.predict_to_file, _WORKDIR.value, _INPUT.value, _OUTPUT.value,
      split=_SPLIT.value, temperature=not _NO_TEMPERATURE.value,
      abstain=not _NO_ABSTAIN.value, target_accuracy=_TARGET.value,
      sets=not _NO_SETS.value, conformal_method=_CONFORMAL.value,
      conformal_alpha=_CONFORMAL_ALPHA.value, ood=not _NO_OOD.value,
      ood_score=_OOD_SCORE.value, skip_bad=_SKIP_BAD.value, batch_size=_BATCH_SIZE.value,
      progress=_PROGRESS.value, debug=_DEBUG.value)
  if summary["skipped"]:
    print(f"skipped {summary['skipped']} bad input(s)", file=sys.stderr)
  print(predict.summary_line(summary))
  return 0


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "input", "output"])
  app.run(main)
