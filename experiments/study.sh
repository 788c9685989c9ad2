#!/usr/bin/env bash
# The commands behind docs/RESULTS.md. Every command skips finished runs, so the
# script can be stopped and rerun to finish in chunks.
#
#   bash experiments/study.sh [radmix|radmix_fitted|calibration|regime|cold_start|all]  (default: all)
#
# The earlier short-schedule studies (docs/RESULTS.md, "Under-fitted regime") ran
# with the code of commit f316bbc, where `ls` was today's `ls_kminus1`, `tfkd` was
# today's `tfkd_paper` and flips did not swap lateral labels; they are reproduced by
#   git checkout f316bbc && bash experiments/study.sh all
set -eu
cd "$(dirname "$0")/.."
# This checkout's package, not whichever one `pip install -e .` points at: a
# study run from a frozen worktree must not pick up later edits of another tree.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

radmix() {
  python experiments/sweeps.py radmix_converged --jobs=1
  python experiments/collect_sweep.py radmix_converged
}

radmix_fitted() {
  python experiments/sweeps.py radmix_fitted --jobs=2 --threads_per_job=1
  python experiments/collect_sweep.py radmix_fitted
}

# The calibration verdict: three fitted cells on the calibration split, two
# single-device runs sharing the cores; the smallest cells first.
calibration() {
  for cell in cal_brain44 cal_brain4 cal_radmix; do
    python experiments/sweeps.py "$cell" --jobs=2 --threads_per_job=1
    python experiments/collect_sweep.py "$cell"
  done
}

# The regime study (docs/results/regime_plan.md): nine cells, cheapest first,
# five seeds each, every seed with its own calibration / reported halves; after
# each cell its grid-edge check (seed 0 past the grid ends its kept settings
# take) and seeds 1-4 of what a binding edge would keep (the plan's notes of
# 2026-12-07), then the across-cells report.
regime() {
  for cell in reg_breast reg_chestct reg_retina reg_kidney reg_chestct64 reg_pneumonia \
              reg_alzheimer reg_brain4 reg_radmix; do
    python experiments/sweeps.py "$cell" --jobs=2 --threads_per_job=1
    python experiments/collect_sweep.py "$cell"
    python experiments/sweeps.py "edge_$cell" --jobs=2 --threads_per_job=1
    python experiments/collect_sweep.py "edge_$cell"
    python experiments/sweeps.py "ext_$cell" --jobs=2 --threads_per_job=1
    python experiments/collect_sweep.py "ext_$cell"
  done
  python experiments/regime_meta.py
}

# The cold-start check (docs/results/cold_start_plan.md): pretrain on RadMix's
# training split, then random vs pretrained starts for CE and OLS in three cells.
cold_start() {
  python experiments/radimagenet.py --config=experiments/configs/radmix.py \
      --workdir=runs/cold_start/pretrain_radmix --config.model=resnet18 --config.method=ce \
      --config.augment=none --config.num_epochs=15 --config.seed=0 \
      --config.evals=conformal --cpu_devices=1
  for cell in cs_chestct cs_kidney cs_brain4; do
    python experiments/sweeps.py "$cell" --jobs=2 --threads_per_job=1
    python experiments/collect_sweep.py "$cell"
  done
}

case "${1:-all}" in
  radmix) radmix ;;
  radmix_fitted) radmix_fitted ;;
  calibration) calibration ;;
  regime) regime ;;
  cold_start) cold_start ;;
  all) radmix; radmix_fitted; calibration; regime ;;
  *) echo "usage: $0 [radmix|radmix_fitted|calibration|regime|cold_start|all]" >&2; exit 2 ;;
esac
