#!/usr/bin/env bash
# The results study behind docs/RESULTS.md, as run on a 2-core CPU.
# Every command skips the cells whose results.json already exists, so the
# script can be stopped and rerun to finish in chunks.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/study}
JOBS=${JOBS:-2}
TPJ=${TPJ:-1}
run() { python experiments/compare.py --jobs="$JOBS" --threads_per_job="$TPJ" "$@"; }
# Usage: bash experiments/study.sh [part1|part2|part3|part4|part5|all]   (default: all)

part1() {
  # 1. Main dataset and model, short schedule (under-fitted regime): 5 methods x 3 seeds.
  run --config=experiments/configs/brain_tumor_mri.py --out=$OUT/brain_tumor_mri_short \
    --methods=ce,ls,tfkd,kd,ols --models=resnet18 --seeds=0,1,2 \
    --title="Brain MRI (4 classes), ResNet-18 w0.25, short schedule (4 epochs, crop+flip)" \
    -- --config.num_epochs=4
  # 2. Main dataset and model, long schedule without augmentation (train accuracy -> ~100%),
  #    with the OLS ablations (alpha, initial S) on seed 0.
  run --config=experiments/configs/brain_tumor_mri.py --out=$OUT/brain_tumor_mri_long \
    --methods=ce,ls,tfkd,kd,ols --models=resnet18 --seeds=0,1,2 \
    --title="Brain MRI (4 classes), ResNet-18 w0.25, long schedule (20 epochs, no augmentation)" \
    -- --config.num_epochs=20 --config.augment=none
  run --config=experiments/configs/brain_tumor_mri.py --out=$OUT/brain_tumor_mri_long \
    --methods=ols --models=resnet18 --seeds=0 --alphas=0.3,0.7,0.9 --ols_inits=zeros \
    --title="Brain MRI (4 classes), ResNet-18 w0.25, long schedule (20 epochs, no augmentation)" \
    -- --config.num_epochs=20 --config.augment=none
  # 3. Many classes: 44-class brain MRI (tumour type x sequence); seeds 0,1 first, then 2.
  for seeds in 0,1 0,1,2; do
  run --config=experiments/configs/brain_tumor_44.py --out=$OUT/brain_tumor_44 \
    --methods=ce,ls,tfkd,kd,ols --models=resnet18 --seeds=$seeds \
    --title="Brain MRI (44 classes), ResNet-18 w0.25, 8 epochs" -- --config.num_epochs=8
  done
  # 4. Binary contrast: breast ultrasound.
  run --config=experiments/configs/breast_us.py --out=$OUT/breast_us \
    --methods=ce,ls,tfkd,kd,ols --models=resnet18 --seeds=0,1,2 \
    --title="Breast ultrasound (binary), ResNet-18 w0.25, 20 epochs" -- --config.num_epochs=20
  # 5. The other paper backbones on the main dataset, short schedule, seed 0, CE and OLS only
  #    (all the CPU time this session had).
  run --config=experiments/configs/brain_tumor_mri.py --out=$OUT/brain_tumor_mri_short \
    --methods=ce,ols --models=mobilenet_v2,vgg19_bn --seeds=0 \
    --title="Brain MRI (4 classes), short schedule (4 epochs, crop+flip)" \
    -- --config.num_epochs=4 --config.width_multiplier=0.25
}

part2() {
  # --- Second session: the other datasets with >= 4 classes, one model (ResNet-18 w0.25, 28 px),
  #     five methods x 3 seeds, short schedules sized so each run takes 1-5 minutes on one core.
  #     Epochs per dataset: about 80-420 optimiser steps in all (see each config file).
  # 6. RadMix, 75 classes (MR/CT/XR/US modality-anatomy-pathology): the RadImageNet-like set.
  run --config=experiments/configs/radmix.py --out=$OUT/radmix \
    --methods=ce,ls,tfkd,kd,ols --models=resnet18 --seeds=0,1,2 \
    --title="RadMix (75 classes), ResNet-18 w0.25, 4 epochs" -- --config.num_epochs=4
  # 7. Alzheimer brain MRI (4 dementia stages, 4609 training images), 5 epochs.
  run --config=experiments/configs/alzheimer_mri.py --out=$OUT/alzheimer_mri \
    --methods=ce,ls,tfkd,kd,ols --models=resnet18 --seeds=0,1,2 \
    --title="Alzheimer MRI (4 classes), ResNet-18 w0.25, 5 epochs"
  # 8. Kidney CT (4 classes, 1369 training images), 10 epochs.
  run --config=experiments/configs/kidney_ct.py --out=$OUT/kidney_ct \
    --methods=ce,ls,tfkd,kd,ols --models=resnet18 --seeds=0,1,2 \
    --title="Kidney CT (4 classes), ResNet-18 w0.25, 10 epochs"
  # 9. Chest CT (4 lung-cancer classes, 493 training images), 20 epochs.
  run --config=experiments/configs/chest_ct.py --out=$OUT/chest_ct \
    --methods=ce,ls,tfkd,kd,ols --models=resnet18 --seeds=0,1,2 \
    --title="Chest CT (4 classes), ResNet-18 w0.25, 20 epochs"
  # 10. Retina fundus (5 DR grades, RGB, 1080 training images), 12 epochs.
  run --config=experiments/configs/retina.py --out=$OUT/retina \
    --methods=ce,ls,tfkd,kd,ols --models=resnet18 --seeds=0,1,2 \
    --title="Retina fundus (5 DR grades), ResNet-18 w0.25, 12 epochs" -- --config.num_epochs=12
}

part3() {
  # --- Third session (same Intel Xeon host type as session 2), two runs at a time.
  # 11. OrganAMNIST (11 abdominal CT organs, 34,561 training images), 2 epochs (540 steps).
  run --config=experiments/configs/organamnist.py --out=$OUT/organamnist \
    --methods=ce,ls,tfkd,kd,ols --models=resnet18 --seeds=0,1,2 \
    --title="OrganAMNIST (11 classes), ResNet-18 w0.25, 2 epochs" -- --config.num_epochs=2
  # 12. The other paper backbones on the main dataset with all five methods (short schedule,
  #     seed 0; KD teacher: the CE run of the same backbone). New study folder, so the
  #     first session's brain_tumor_mri_short summary stays as it is.
  run --config=experiments/configs/brain_tumor_mri.py --out=$OUT/backbones_short \
    --methods=ce,ls,tfkd,kd,ols --models=mobilenet_v2,vgg19_bn --seeds=0 \
    --title="Brain MRI (4 classes), MobileNetV2 and VGG-19-BN w0.25, short schedule (4 epochs, crop+flip)" \
    -- --config.num_epochs=4 --config.width_multiplier=0.25
  # 13. The alpha / initial-S ablations of step 2 on seeds 1 and 2 as well (seed 0 and the
  #     alpha = 0.5 runs are step 2's and are skipped; session 3 first restored step 2's results
  #     with `python experiments/collect_results.py --restore=brain_tumor_mri_long`).
  run --config=experiments/configs/brain_tumor_mri.py --out=$OUT/brain_tumor_mri_long \
    --methods=ols --models=resnet18 --seeds=0,1,2 --alphas=0.3,0.7,0.9 --ols_inits=zeros \
    --title="Brain MRI (4 classes), ResNet-18 w0.25, long schedule (20 epochs, no augmentation)" \
    -- --config.num_epochs=20 --config.augment=none
}

part4() {
  # --- Fourth session (Intel Xeon host, two runs at a time). 14. ResNet-50 (the paper's main
  #     backbone) at width x0.25 with the small-input stem (1.48 M parameters), all five methods,
  #     seed 0 first, then seeds 1 and 2; then seeds 1 and 2 of MobileNetV2. Same study folder as
  #     step 12, so its summary holds all three paper backbones.
  T="Brain MRI (4 classes), MobileNetV2, VGG-19-BN and ResNet-50 w0.25, short schedule (4 epochs, crop+flip)"
  for model in resnet50 mobilenet_v2; do
  run --config=experiments/configs/brain_tumor_mri.py --out=$OUT/backbones_short \
    --methods=ce,ls,tfkd,kd,ols --models=$model --seeds=0,1,2 --title="$T" \
    -- --config.num_epochs=4 --config.width_multiplier=0.25
  done
  # 15. Does ResNet-50's OLS leave its near-uniform S on a longer schedule? CE and OLS, seed 0,
  #     10 epochs (370 steps), own study folder.
  run --config=experiments/configs/brain_tumor_mri.py --out=$OUT/resnet50_10ep \
    --methods=ce,ols --models=resnet50 --seeds=0 \
    --title="Brain MRI (4 classes), ResNet-50 w0.25, 10 epochs (crop+flip): does OLS leave the near-uniform S?" \
    -- --config.num_epochs=10 --config.width_multiplier=0.25
}

part5() {
  # --- NOT RUN yet (CPU time ran out): seeds 1 and 2 of VGG-19-BN (15-19 min a run on a shared core).
  run --config=experiments/configs/brain_tumor_mri.py --out=$OUT/backbones_short \
    --methods=ce,ls,tfkd,kd,ols --models=vgg19_bn --seeds=0,1,2 \
    --title="Brain MRI (4 classes), MobileNetV2, VGG-19-BN and ResNet-50 w0.25, short schedule (4 epochs, crop+flip)" \
    -- --config.num_epochs=4 --config.width_multiplier=0.25
}

case "${1:-all}" in
  part1) part1 ;;
  part2) part2 ;;
  part3) part3 ;;
  part4) part4 ;;
  part5) part5 ;;
  all) part1; part2; part3; part4; part5 ;;
  *) echo "usage: $0 [part1|part2|part3|part4|part5|all]" >&2; exit 2 ;;
esac
