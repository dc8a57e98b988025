#!/usr/bin/env bash
# Every GPU figure in one command (run on a CUDA machine, from the repository root, after the
# README's set-up with a CUDA build of torch):
#   bash benchmarks/gpu.sh [OUT_DIR]          # default outputs/gpu
# 1. the whole test suite on CUDA (tests/test_cuda.py runs there), 2. training images/s of
# configs/emoji.yaml, fp32 and bf16, with and without torch.compile and channels_last, 3. sampling
# images/s at 20 steps, batch 256, fp16 and bf16, ours vs stock DDIMPipeline at matched parameters,
# 4. the dense bf16 matmul peak and the fraction of it each reaches, 5. a short real training run on
# the emoji with its sample grid, then 6. a check of the targets (>= 10,000 training images/s in
# bf16; sampling >= 2x stock at the same dtype). Brings its own data: data/emoji (make it here with
# `python benchmarks/data/emoji.py`, or carry the folder along).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/gpu}
mkdir -p "$OUT"
status=0
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())" \
  | tee "$OUT/gpu.txt" || exit 1
[ -d data/emoji ] || python benchmarks/data/emoji.py --out data/emoji || exit 1

python -m pytest -q tests 2>&1 | tee "$OUT/tests.log" || status=1
python benchmarks/training_speed.py --config configs/emoji.yaml --device cuda --batch_size 256 --repeats 3 \
  2>&1 | tee "$OUT/training_speed.txt" || status=1
for dtype in fp16 bf16; do
  python benchmarks/sampling_speed.py --config configs/emoji.yaml --device cuda --dtype "$dtype" \
    2>&1 | tee "$OUT/sampling_speed-$dtype.txt" || status=1
done
python benchmarks/gpu_peak.py --config configs/emoji.yaml --device cuda 2>&1 | tee "$OUT/gpu_peak.txt" || status=1
start=$(date +%s)
python train_ddim.py --config configs/emoji.yaml --output_dir "$OUT/emoji-run" --overwrite_output_dir \
  --max_train_steps 3000 --checkpointing_steps 1000 --save_images_steps 1000 --logger none \
  2>&1 | tail -5 | tee "$OUT/train.txt" || status=1
echo "short training run: $(( $(date +%s) - start )) s wall" | tee -a "$OUT/train.txt"
cp "$OUT/emoji-run/samples.png" "$OUT/emoji-samples.png" 2>/dev/null || status=1
python benchmarks/gpu_check.py 2>&1 | tee "$OUT/check.txt" || status=1
exit $status
