#!/usr/bin/env bash
# The prepared check for a lent GPU (about 8 minutes end to end), run from the repository root:
#   bash benchmarks/device_check.sh            # results under $OUT (device tool) or benchmarks/results
#   bash benchmarks/device_check.sh --tiny     # seconds, on a CPU: the script's own test
# 1. benchmarks/device_check.py: the JAX train step beside PyTorch (ResNet-50 224 px, bf16,
#    batch 128/256) and the regime study's 28/64 px step -> gpu_<device>_check.json;
# 2. a study chunk: the main job on the embedded 28 px brain MRI set, regime-study settings,
#    3 epochs, timed end to end -> gpu_<device>_study_chunk.json. It needs ml_collections,
#    grain and tensorflow-datasets; where they are missing it is skipped and the log says why
#    (carry them as wheels under .whl/, see the device tool's README).
set -uo pipefail
export PYTHONUNBUFFERED=1
tiny=0; [ "${1:-}" = "--tiny" ] && tiny=1
out="${OUT:-benchmarks/results}"; mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PWD" || exit 1
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 |
       tr ' ' '_' | tr -cd 'A-Za-z0-9_')
name=${name:-cpu}
log="$out/device_check_${name}.log"
echo "device check: $name, $(date -u +%FT%TZ)" | tee "$log"
if [ $tiny = 1 ]; then
  python3 benchmarks/device_check.py --tiny --json "$out/gpu_${name}_check.json" 2>&1 | tee -a "$log"
  epochs=1; limit=300; extra="--config.model=tiny_cnn"
else
  timeout 330 python3 benchmarks/device_check.py --json "$out/gpu_${name}_check.json" 2>&1 | tee -a "$log"
  epochs=3; limit=150; extra=""
fi
rc=${PIPESTATUS[0]}
echo "step comparison exit $rc" | tee -a "$log"
if python3 -c "import ml_collections, grain, tensorflow_datasets" 2>/dev/null; then
  work=$(mktemp -d)
  start=$(date +%s)
  timeout $limit python3 experiments/radimagenet.py --config=experiments/configs/brain_tumor_mri.py \
    --workdir="$work/run" --config.augment=none --config.calibration_split=test_half \
    --config.num_epochs=$epochs --config.progress=False --config.figures=False \
    --config.tensorboard=False $extra 2>&1 | tail -3 | tee -a "$log"
  end=$(date +%s)
  if [ -f "$work/run/results.json" ]; then
    (python3 - "$work/run/results.json" "$out/gpu_${name}_study_chunk.json" $((end - start)) <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
keep = {k: r.get(k) for k in ("dataset", "model", "method", "num_epochs", "final_step",
                              "wall_time_s", "host", "data_origin", "device_kind")}
keep.update(test=r["test"], process_wall_s=float(sys.argv[3]))
json.dump(keep, open(sys.argv[2], "w"), indent=2)
print(f"study chunk: {keep['num_epochs']} epochs in {keep['wall_time_s']:.1f} s -> {sys.argv[2]}")
PY
  ) 2>&1 | tee -a "$log"
  else
    echo "study chunk: no results.json (timed out or failed)" | tee -a "$log"
  fi
  rm -rf "$work"
else
  echo "study chunk skipped: ml_collections, grain or tensorflow_datasets missing" | tee -a "$log"
fi
exit $rc
