"""Compare the GPU figures benchmarks/gpu.sh wrote for this machine with two thresholds: training
configs/emoji.yaml at >= 10,000 images/s in bf16 (the Keras DDIM example's ~1.6M flowers images in
under 3 minutes), and sampling >= 2x the stock DDIMPipeline at the same dtype. Prints each
comparison with its figures; exits 1 if a figure is below its threshold or missing."""

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine_tag  # noqa: E402


def main() -> int:
    tag, below = machine_tag(), 0
    path = RESULTS / f"training_speed-{tag}.json"
    if path.exists():
        training = json.loads(path.read_text())
        bf16 = {k: statistics.median(v["train_images_per_s"]) for k, v in training["variants"].items()
                if k.startswith("bf16")}
        if bf16:
            best = max(bf16, key=bf16.get)
            ok = bf16[best] >= 10_000
            below += not ok
            print(f"{'above' if ok else 'BELOW'}: training >= 10,000 images/s in bf16: {bf16[best]:.0f} ({best}, "
                  f"batch {training['batch_size']}); 1.6M images in {1.6e6 / bf16[best] / 60:.1f} min")
    else:
        print(f"missing: {path}")
        below += 1
    for dtype in ("fp16", "bf16"):
        path = RESULTS / f"sampling_speed-{tag}-{dtype}.json"
        if not path.exists():
            print(f"missing: {path}")
            below += 1
            continue
        speed = {k: statistics.median(v["images_per_s"]) for k, v in json.loads(path.read_text())["pipelines"].items()}
        for mode in ("eager", "compiled"):
            if f"ours {mode}" not in speed:
                continue
            ratio = speed[f"ours {mode}"] / speed[f"stock {mode}"]
            ok = ratio >= 2.0
            below += not ok
            print(f"{'above' if ok else 'BELOW'}: sampling >= 2x stock, {dtype} {mode}: {ratio:.2f}x "
                  f"({speed[f'ours {mode}']:.0f} vs {speed[f'stock {mode}']:.0f} images/s)")
    return 1 if below else 0


if __name__ == "__main__":
    sys.exit(main())
