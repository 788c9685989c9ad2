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
# NOT RUN in the first session (no CPU time left); the next chunk of the study:
# 5. The other paper backbones on the main dataset (short schedule, one seed;
#    KD teacher: the CE ResNet-18 of the same seed).
# run --config=experiments/configs/brain_tumor_mri.py --out=$OUT/brain_tumor_mri_short \
#   --methods=ce,ls,tfkd,kd,ols --models=mobilenet_v2,vgg19_bn --seeds=0 --teacher_model=resnet18 \
#   --title="Brain MRI (4 classes), short schedule (4 epochs, crop+flip)" \
#   -- --config.num_epochs=4 --config.width_multiplier=0.25
