"""The tuned comparisons behind docs/RESULTS.md, as data (see ols_jax.study.sweep).

  python experiments/sweeps.py radmix_converged --jobs=2 --threads_per_job=1

runs (or resumes) one sweep: every candidate on the tuning seed, the selection
by validation NLL (written to <out>/selection.json), then the kept candidate of
every arm on the other seeds. ``--list`` prints the cells without running them.
``edge_<regime cell>`` (e.g. ``edge_reg_breast``) runs that cell's grid-edge check,
``ext_<regime cell>`` seeds 1-4 of the settings its binding edges would keep.
"""

import argparse
import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent

from ols_jax.study import sweep as sweep_lib  # noqa: E402

# The five arms of "a fair test of OLS": CE; LS (optax / PyTorch form) with eps
# tuned; Tf-KD as released (ResNet-18 values, not tuned); OLS from a uniform
# and from a zero initial S, alpha tuned.
FAIR_ARMS = (
    sweep_lib.Arm("ce", "ce"),
    sweep_lib.Arm("ls", "ls", grid=(("eps", (0.05, 0.1, 0.2)),)),
    sweep_lib.Arm("tfkd_reg", "tfkd_reg"),
    sweep_lib.Arm("ols_uniform", "ols", fixed=(("ols_init", "uniform"),),
                  grid=(("alpha", (0.3, 0.5, 0.7)),)),
    sweep_lib.Arm("ols_zeros", "ols", fixed=(("ols_init", "zeros"),),
                  grid=(("alpha", (0.3, 0.5, 0.7)),)),
)

# The calibration verdict's arms, fixed before any of its runs: FAIR_ARMS with
# the OLS grid widened to the seed paper's {0.3, 0.5, 0.7, 0.9}, plus FLSD-53
# and MbLS as released (MbLS margin 5 or 10, alpha 0.1).
CALIBRATION_ARMS = (
    sweep_lib.Arm("ce", "ce"),
    sweep_lib.Arm("ls", "ls", grid=(("eps", (0.05, 0.1, 0.2)),)),
    sweep_lib.Arm("tfkd_reg", "tfkd_reg"),
    sweep_lib.Arm("ols_uniform", "ols", fixed=(("ols_init", "uniform"),),
                  grid=(("alpha", (0.3, 0.5, 0.7, 0.9)),)),
    sweep_lib.Arm("ols_zeros", "ols", fixed=(("ols_init", "zeros"),),
                  grid=(("alpha", (0.3, 0.5, 0.7, 0.9)),)),
    sweep_lib.Arm("flsd53", "flsd53"),
    sweep_lib.Arm("mbls", "mbls", grid=(("mbls_margin", (5.0, 10.0)),)),
)

# Every fitted cell: no augmentation (CE can fit its training set), the test
# split halved into a calibration half (selection, T, thresholds, conformal
# sets) and the reported half, the corruption suite and far-OOD sets in the
# final evaluation, one host device per run (two runs share the cores).
# Rule fixed before the runs: 15 epochs; if CE on seed 0 ends below 99% train
# accuracy, the cell is rerun at 30 epochs under a new name.
_FITTED = ("--config.augment=none", "--config.calibration_split=test_half",
           "--config.shift_eval=True", "--cpu_devices=1")


def _fitted(name, dataset, config, ood_sets):
  return sweep_lib.Sweep(
      name=name,
      title=(f"{dataset}, ResNet-18 x0.25, 15 epochs, no augmentation, calibration split "
             f"(half of test), tuned on validation NLL (seed 0)"),
      config=config, model="resnet18", arms=CALIBRATION_ARMS, seeds=(0, 1, 2),
      extra=_FITTED + (f"--config.ood_sets={ood_sets}",))


# The regime study's arms (docs/results/regime_plan.md, fixed before its runs):
# CE; LS with an eps grid reaching 0.01; FLSD-53 as released; MbLS with three
# margins around the released 10; OLS from a uniform S with the seed paper's
# alpha grid and 0.95 (earlier cells kept its 0.9 edge); OLS with momentum on S (m 0.5 / 0.9, never published); OLS + the
# MbLS margin penalty (released MbLS weight 0.1, margin 10). OLS zeros and
# Tf-KD leave these cells (the plan says why).
REGIME_ARMS = (
    sweep_lib.Arm("ce", "ce"),
    sweep_lib.Arm("ls", "ls", grid=(("eps", (0.01, 0.05, 0.1)),)),
    sweep_lib.Arm("flsd53", "flsd53"),
    sweep_lib.Arm("mbls", "mbls", grid=(("mbls_margin", (5.0, 10.0, 20.0)),)),
    sweep_lib.Arm("ols_uniform", "ols", fixed=(("ols_init", "uniform"),),
                  grid=(("alpha", (0.3, 0.5, 0.7, 0.9, 0.95)),)),
    sweep_lib.Arm("ols_momentum", "ols", fixed=(("ols_init", "uniform"),),
                  grid=(("ols_momentum", (0.5, 0.9)), ("alpha", (0.5, 0.9)))),
    sweep_lib.Arm("ols_mbls", "ols_mbls", fixed=(("ols_init", "uniform"),),
                  grid=(("alpha", (0.5, 0.9)),)),
)

# A regime cell: no augmentation, test halved per seed into a calibration half
# (selection, T, thresholds, conformal sets) and the reported half, the
# corruption suite and one far-OOD set, one host device per run. Sets under
# 2,000 training images get 30 epochs (their few steps per epoch), the rest 15.
def _regime(name, title, config, ood_set, epochs, more=()):
  return sweep_lib.Sweep(
      name=name,
      title=(f"{title}, ResNet-18 x0.25, {epochs} epochs, no augmentation, calibration "
             f"half of test drawn per seed, tuned on its NLL (seed 0)"),
      config=config, model="resnet18", arms=REGIME_ARMS, seeds=(0, 1, 2, 3, 4),
      extra=("--config.augment=none", "--config.calibration_split=test_half",
             f"--config.num_epochs={epochs}", "--config.shift_eval=True",
             f"--config.ood_sets={ood_set}", "--cpu_devices=1") + tuple(more),
      split_per_seed=True)


# The regime study's cells, cheapest first (the order study.sh runs them).
REGIME_CELLS = (
    _regime("reg_breast", "BreastMNIST (2 classes, 546 train, 28 px)",
            "experiments/configs/breast_us.py", "chest_ct", 30),
    _regime("reg_chestct", "Chest CT (4 classes, 493 train, 28 px)",
            "experiments/configs/chest_ct.py", "retinamnist", 30),
    _regime("reg_retina", "RetinaMNIST (5 classes, 1080 train, 28 px, RGB)",
            "experiments/configs/retina.py", "chest_ct", 30),
    _regime("reg_kidney", "Kidney CT (4 classes, 1369 train, 28 px)",
            "experiments/configs/kidney_ct.py", "retinamnist", 30),
    _regime("reg_chestct64", "Chest CT (4 classes, 493 train, 64 px)",
            "experiments/configs/chest_ct.py:px64", "kidney_ct", 30),
    _regime("reg_pneumonia", "PneumoniaMNIST (2 classes, 4708 train, 28 px)",
            "experiments/configs/chest_xray.py", "chest_ct", 15),
    _regime("reg_alzheimer", "Alzheimer MRI (4 classes, 4609 train, 28 px)",
            "experiments/configs/alzheimer_mri.py", "chest_ct", 15),
    _regime("reg_brain4", "Brain MRI 4 classes (4781 train, 28 px)",
            "experiments/configs/brain_tumor_mri.py", "chest_ct", 15,
            more=("--config.cross_source=brain_tumor_44",)),
    _regime("reg_radmix", "RadMix (75 classes, 13547 train, 28 px)",
            "experiments/configs/radmix.py", "retinamnist", 15),
)

# The cold-start check (docs/results/cold_start_plan.md, fixed before its runs):
# CE and OLS (uniform S0, the OLS paper's alpha 0.5), each from a random start
# and from ResNet-18 x0.25 pretrained with CE on RadMix's training split
# (COLD_START_PRETRAIN), same epochs, schedule and learning rate; no grid, so
# the tuning seed runs one candidate per arm; three seeds, each with its own
# calibration / reported halves of test.
COLD_START_PRETRAIN = "runs/cold_start/pretrain_radmix"
COLD_START_ARMS = (
    sweep_lib.Arm("ce_random", "ce"),
    sweep_lib.Arm("ols_random", "ols", fixed=(("ols_init", "uniform"), ("alpha", 0.5))),
    sweep_lib.Arm("ce_pretrained", "ce", fixed=(("init_from", COLD_START_PRETRAIN),)),
    sweep_lib.Arm("ols_pretrained", "ols", fixed=(("ols_init", "uniform"), ("alpha", 0.5),
                                                  ("init_from", COLD_START_PRETRAIN))),
)


def _cold_start(name, title, config, epochs):
  return sweep_lib.Sweep(
      name=name,
      title=(f"{title}, ResNet-18 x0.25, {epochs} epochs, no augmentation, random vs "
             "RadMix-pretrained start, calibration half of test drawn per seed"),
      config=config, model="resnet18", arms=COLD_START_ARMS, seeds=(0, 1, 2),
      extra=("--config.augment=none", "--config.calibration_split=test_half",
             f"--config.num_epochs={epochs}", "--config.evals=conformal,selective",
             "--cpu_devices=1"),
      split_per_seed=True, reference="ce_random",
      interactions=((("ce_random", "ols_random"), ("ce_pretrained", "ols_pretrained")),),
      comparisons=(("ce_random", "ols_random"), ("ce_pretrained", "ols_pretrained"),
                   ("ce_random", "ce_pretrained"), ("ols_random", "ols_pretrained")))


COLD_START_CELLS = (
    _cold_start("cs_chestct", "Chest CT (4 classes, 493 train, 28 px)",
                "experiments/configs/chest_ct.py", 30),
    _cold_start("cs_kidney", "Kidney CT (4 classes, 1369 train, 28 px)",
                "experiments/configs/kidney_ct.py", 30),
    _cold_start("cs_brain4", "Brain MRI 4 classes (4781 train, 28 px)",
                "experiments/configs/brain_tumor_mri.py", 15),
)

SWEEPS = (
    sweep_lib.Sweep(
        name="radmix_converged",
        title=("RadMix (75 classes, 28 px), ResNet-18 x0.25, 15 epochs, crop + "
               "laterality-aware flip, tuned on validation (seed 0)"),
        config="experiments/configs/radmix.py", model="resnet18", arms=FAIR_ARMS,
        seeds=(0, 1, 2)),
    # The same comparison without augmentation: the regime check of
    # radmix_converged found CE under-fitted (train accuracy 78%) and not
    # over-confident, so no calibration verdict could come from it. Without
    # crops and flips CE can fit its training set, the regime OLS is meant for.
    # One host device per run (two runs share the cores, study.sh): a run on
    # two host devices aborted in XLA's in-process all-gather (40 s rendezvous
    # timeout) on an unloaded 2-core host, and one device has no collectives.
    sweep_lib.Sweep(
        name="radmix_fitted",
        title=("RadMix (75 classes, 28 px), ResNet-18 x0.25, 15 epochs, no augmentation "
               "(the fitted regime), tuned on validation (seed 0)"),
        config="experiments/configs/radmix.py", model="resnet18", arms=FAIR_ARMS,
        seeds=(0, 1, 2), extra=("--config.augment=none", "--cpu_devices=1")),
    _fitted("cal_brain44", "Brain MRI 44 classes (28 px)",
            "experiments/configs/brain_tumor_44.py:fitted", "chest_ct,retinamnist"),
    _fitted("cal_brain4", "Brain MRI 4 classes (28 px)",
            "experiments/configs/brain_tumor_mri.py", "chest_ct,retinamnist"),
    _fitted("cal_radmix", "RadMix 75 classes (28 px)",
            "experiments/configs/radmix.py", "retinamnist"),
) + REGIME_CELLS + COLD_START_CELLS


# The grid-edge check of the regime cells (regime_plan.md, dated note of
# 2026-12-07): where the kept setting of a primary-family arm sits on an end of
# its grid, seed 0 runs the settings one step past that end. MbLS's margins
# halve / double (2.5, 40); LS's eps goes to 0.2 and 0.3 above and 0.001 below;
# OLS's alpha to 0.1 and 0.2 below (alpha = 0 drops the hard-label term) and
# 0.99 above.
EDGE_BEYOND = {
    "ls": {"eps": {"lowest": (0.001,), "highest": (0.2, 0.3)}},
    "mbls": {"mbls_margin": {"lowest": (2.5,), "highest": (40.0,)}},
    "ols_uniform": {"alpha": {"lowest": (0.1, 0.2), "highest": (0.99,)}},
}
EDGE_PREFIX = "edge_"
EXT_PREFIX = "ext_"


def selection_of(cell: sweep_lib.Sweep, results=REPO / "docs" / "results") -> dict:
  """The cell's collected ``selection.json``.

  Raises:
    FileNotFoundError: the cell's selection is not collected yet.
  """
  path = pathlib.Path(results) / cell.name / "selection.json"
  if not path.exists():
    raise FileNotFoundError(f"{path}: no selection.json of {cell.name} (collect the cell "
                            "first); its edge check needs the kept settings")
  return json.loads(path.read_text())


def edge_of(cell: sweep_lib.Sweep, selection: dict) -> sweep_lib.Sweep:
  """The cell's grid-edge check, from its selection."""
  return sweep_lib.edge_check(cell, selection, EDGE_BEYOND)


def find(name: str, results=REPO / "docs" / "results") -> sweep_lib.Sweep:
  """The sweep called ``name``; ``edge_<cell>`` is the grid-edge check of a
  regime cell, built from the cell's collected ``selection.json``, and
  ``ext_<cell>`` the other seeds of the settings its binding edges would keep.

  Raises:
    KeyError: no such sweep.
    FileNotFoundError: an edge check of a cell whose selection is not collected.
  """
  if name.startswith(EXT_PREFIX):
    from ols_jax.study import regime  # pylint: disable=import-outside-toplevel
    cell = sweep_lib.find(REGIME_CELLS, name[len(EXT_PREFIX):])
    selection = selection_of(cell, results)
    edge = edge_of(cell, selection)
    rows = regime.edge_rows(selection, edge, pathlib.Path(results) / edge.name)
    return sweep_lib.extension(cell, regime.extended_settings(rows))
  if not name.startswith(EDGE_PREFIX):
    return sweep_lib.find(SWEEPS, name)
  cell = sweep_lib.find(REGIME_CELLS, name[len(EDGE_PREFIX):])
  return edge_of(cell, selection_of(cell, results))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("name", help=", ".join(s.name for s in SWEEPS))
  p.add_argument("--out", default="", help="default: runs/sweeps/<name>")
  p.add_argument("--jobs", type=int, default=1)
  p.add_argument("--threads_per_job", type=int, default=0,
                 help="1 = one XLA thread and one BLAS/OpenMP "
                      "thread per run; 0 = leave threads alone")
  p.add_argument("--list", action="store_true", help="print the cells, run nothing")
  p.add_argument("--results", default="",
                 help="collected cells an edge_ / ext_ check reads; default: docs/results")
  args = p.parse_args(argv)
  try:
    sweep = find(args.name, pathlib.Path(args.results) if args.results
                 else REPO / "docs" / "results")
  except KeyError as e:
    p.error(str(e.args[0]))
  except FileNotFoundError as e:
    p.error(str(e))
  out = pathlib.Path(args.out or REPO / "runs" / "sweeps" / sweep.name)
  if args.list:
    for c in sweep.tuning_cells():
      print("tune ", c.workdir(out), " ".join(f"{k}={v}" for k, v in c.overrides))
    return 0
  failed = sweep_lib.run(sweep, out, REPO, jobs=args.jobs,
                         threads_per_job=args.threads_per_job)
  print(f"selection: {out / 'selection.json'}")
  if failed:
    print(f"{len(failed)} cell(s) failed; see their stdout.log", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
