#!/usr/bin/env bash
# Every GPU figure in one run of at most TOTAL_SECONDS (560) on one CUDA GPU, from the repository root:
#   bash benchmarks/gpu.sh [OUT_DIR]                 # default outputs/gpu
# Without CUDA (or with DRY_RUN=1) it is a dry run on the CPU: every step runs, tiny, and the CUDA-only
# ones are skipped, so a first GPU run is the real one.
#
# A machine without network: bring what it lacks. Prepare once, on a machine with network:
#   bash benchmarks/gpu_prepare.sh                   # .whl/ (missing wheels) and data/emoji
# then carry `.whl` and `data/emoji` along with the working tree. The script installs the wheels
# into /tmp/site (no index, nothing else touched) and imports the package from src/.
#
# Steps, each with a time limit (seconds, overridable: LIMIT_TESTS=300 bash benchmarks/gpu.sh):
#  1. tests/test_cuda.py
#  2. training images/s of configs/emoji.yaml (64x64): fp32, and bf16 with and without channels_last
#  3. sampling images/s at 20 steps, batch 256, fp16 and bf16, ours vs stock DDIMPipeline at matched
#     parameters and dtype
#  4. the dense bf16 matmul peak and the fraction of it each figure reaches; a profile of one
#     training step (kernel time vs launch overhead)
#  5. a short real training run on the emoji (RUN_SECONDS of training, 80) and its sample grid
#  6. the figures against the thresholds (benchmarks/gpu_check.py)
#  7. in the time left: bf16 channels_last under torch.compile, then the rest of the test suite on CUDA
# Writes OUT_DIR/run.log (everything printed), the results JSON files of steps 2-4 (copy them into
# benchmarks/results to keep them), the short run's summary and its sample grid: 8 files at most.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=$(mkdir -p "${1:-outputs/gpu}" && cd "${1:-outputs/gpu}" && pwd)
exec > >(tee "$OUT/run.log") 2>&1
export BENCHMARK_RESULTS=$OUT  # the benchmarks write their JSON straight into OUT
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
status=0
began=$(date +%s)

TOTAL_SECONDS=${TOTAL_SECONDS:-560}  # the whole run; each step's limit is cut to what is left of it
step() {  # step NAME LIMIT_SECONDS COMMAND...: run it under its limit, log its time and exit status
  local name=$1 limit=$2 start rc left
  shift 2
  left=$(( TOTAL_SECONDS - ($(date +%s) - began) ))
  if [ "$left" -lt 15 ]; then echo "== $name: skipped, the run's ${TOTAL_SECONDS} s are used up"; status=1; return 1; fi
  [ "$limit" -le "$left" ] || limit=$left
  echo "== $name (limit ${limit} s, $(( $(date +%s) - began )) s into the run)"
  start=$(date +%s)
  timeout --signal=INT --kill-after=15 "$limit" "$@"
  rc=$?
  echo "== $name: exit $rc after $(( $(date +%s) - start )) s$([ $rc -eq 124 ] && echo ' (time limit)')"
  [ $rc -eq 0 ] || status=1
  return $rc
}

# ---------------------------------------------------------------- set-up
PIP_INSTALL=(python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --only-binary=:all:)
if ! python3 -c "import diffusers, datasets" 2>/dev/null; then  # what this machine lacks, from the carried wheels
  compgen -G ".whl/*.whl" >/dev/null || { echo "diffusers/datasets missing and no wheels in .whl/ (benchmarks/gpu_prepare.sh)"; exit 1; }
  "${PIP_INSTALL[@]}" --target /tmp/site .whl/*.whl || { echo "installing the carried wheels failed"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
elif compgen -G ".whl/*.whl" >/dev/null; then  # installed already (a dry run): check that the wheels would install
  "${PIP_INSTALL[@]}" --python-version 3.12 --implementation cp --target "$(mktemp -d)" .whl/*.whl \
    && echo "the carried wheels install for Python 3.12" || { echo "the carried wheels do not install"; status=1; }
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
python3 - <<'PY' || { echo "the package does not import"; exit 1; }
import accelerate, datasets, diffusers, huggingface_hub, torch, transformers
import denoising_diffusion
print("python3", __import__("sys").version.split()[0], "| torch", torch.__version__, "| diffusers", diffusers.__version__,
      "| datasets", datasets.__version__, "| accelerate", accelerate.__version__, "| transformers", transformers.__version__,
      "| huggingface_hub", huggingface_hub.__version__)
print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device")
PY
if [ "${DRY_RUN:-0}" = 1 ] || ! python3 -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  DRY=1; DEVICE=cpu; echo "dry run on the CPU: tiny steps, CUDA-only steps skipped"
else
  DRY=0; DEVICE=cuda; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
[ -f data/emoji/dataset_info.json ] || [ -f data/emoji/state.json ] || [ -f data/emoji/dataset_dict.json ] \
  || { echo "data/emoji is missing: make it with python benchmarks/data/emoji.py and carry it along"; exit 1; }
TAG=$(python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from common import machine_tag; print(machine_tag())")

# ---------------------------------------------------------------- 1. tests
PYTEST=(python3 -m pytest -q -p no:cacheprovider -o addopts=-ra -rf)
python3 -c "import pytest_timeout" 2>/dev/null && PYTEST+=(--timeout 150)
if [ $DRY = 1 ]; then
  step tests-cuda 120 "${PYTEST[@]}" tests/test_cuda.py  # skips itself without CUDA
  step tests 120 "${PYTEST[@]}" tests/test_structure.py tests/test_scheduler.py
else  # the rest of the suite runs last, in what time is left (step 7)
  step tests-cuda "${LIMIT_TEST_CUDA:-75}" "${PYTEST[@]}" tests/test_cuda.py
fi

# ---------------------------------------------------------------- 2-4. speed
if [ $DRY = 1 ]; then
  SPEED=(--repeats 1 --iters 1 --batch_size 8 --sample_batch_size 8); TRAIN_VARIANTS=(fp32 "fp32 channels_last"); DTYPES=(fp32)
  SAMPLE=(--repeats 1 --batch_size 8 --steps 2 --no_compile); PEAK=(--matmul_size 512)
else
  SPEED=(--repeats 3 --iters 10 --batch_size 256)
  TRAIN_VARIANTS=(fp32 bf16 "bf16 channels_last")
  DTYPES=(fp16 bf16); SAMPLE=(--repeats 3 --batch_size 256 --steps 20 --no_compile); PEAK=()
fi
step training-speed "${LIMIT_TRAINING_SPEED:-60}" python3 benchmarks/training_speed.py --config configs/emoji.yaml \
  --device $DEVICE "${SPEED[@]}" --variants "${TRAIN_VARIANTS[@]}"
for dtype in "${DTYPES[@]}"; do
  step "sampling-speed-$dtype" "${LIMIT_SAMPLING_SPEED:-40}" python3 benchmarks/sampling_speed.py \
    --config configs/emoji.yaml --device $DEVICE --dtype "$dtype" "${SAMPLE[@]}"
done
step gpu-peak "${LIMIT_PEAK:-25}" python3 benchmarks/gpu_peak.py --config configs/emoji.yaml --device $DEVICE "${PEAK[@]}"
step profile "${LIMIT_PROFILE:-30}" python3 benchmarks/profile_step.py --config configs/emoji.yaml --device $DEVICE \
  --batch_size "$([ $DRY = 1 ] && echo 8 || echo 256)"

# ---------------------------------------------------------------- 5. a short real run
# Steps for about RUN_SECONDS of training at the measured bf16 channels_last rate (batch 256).
RUN_SECONDS=${RUN_SECONDS:-80}
if [ $DRY = 1 ]; then
  STEPS=5; RUN=(--train_batch_size 8 --max_train_samples 64)
else
  STEPS=$(python3 - "$OUT/training_speed-$TAG.json" "$RUN_SECONDS" <<'PY'
import json, statistics, sys
try:
    variants = json.load(open(sys.argv[1]))["variants"]
    rate = statistics.median(variants["bf16 channels_last"]["train_images_per_s"])
except (OSError, KeyError, ValueError):
    rate = 2000.0  # no measurement: a guess that keeps the run short
print(max(100, int(float(sys.argv[2]) * rate * 0.8 / 256)))
PY
)
  RUN=(--train_batch_size 256 --mixed_precision bf16 --channels_last --dataloader_num_workers 4)
fi
echo "short training run: $STEPS steps"
step train-run "${LIMIT_TRAIN_RUN:-$(( RUN_SECONDS + 60 ))}" python3 train_ddim.py --config configs/emoji.yaml \
  --output_dir "$OUT/emoji-run" --overwrite_output_dir --max_train_steps "$STEPS" --checkpointing_steps "$STEPS" \
  --save_images_steps "$STEPS" --logging_steps 50 --logger none "${RUN[@]}"
cp "$OUT/emoji-run/samples.png" "$OUT/emoji-samples.png" 2>/dev/null || status=1
cp "$OUT/emoji-run/training_summary.json" "$OUT/emoji-run-summary.json" 2>/dev/null || status=1
rm -rf "$OUT/emoji-run"  # the figures are copied; the folder would exceed what comes back

# ---------------------------------------------------------------- 6. the figures
[ $DRY = 1 ] || step check 30 python3 benchmarks/gpu_check.py

# ---------------------------------------------------------------- 7. what the time left allows
if [ $DRY = 0 ]; then
  # torch.compile on its own: its compilation alone took over 100 s on an H200 machine.
  step training-speed-compile "${LIMIT_COMPILE:-90}" python3 benchmarks/training_speed.py \
    --config configs/emoji.yaml --device $DEVICE "${SPEED[@]}" --variants "bf16 channels_last compile" \
    --out "$OUT/training_speed-compile-$TAG.json"
  XDIST=(); python3 -c "import xdist" 2>/dev/null && XDIST=(-n 16)
  # -v: each test's outcome is printed as it ends, so a run cut short by its limit still names its failures
  step tests "${LIMIT_TESTS:-150}" "${PYTEST[@]/-q/-v}" "${XDIST[@]}" tests --ignore tests/test_cuda.py
fi
echo "== done in $(( $(date +%s) - began )) s, exit $status; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit $status
