"""Check the GPU targets against the figures benchmarks/gpu.sh wrote for this machine:
training of configs/emoji.yaml at >= 10,000 images/s in bf16 (the Keras DDIM example's ~1.6M flowers images in
under 3 minutes), and sampling >= 2x stock DDIMPipeline at the same dtype. Prints each target
with its figure and exits 1 if one is missed."""

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_tag  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    tag, missed = machine_tag(), 0
    training = json.loads((RESULTS / f"training_speed-{tag}.json").read_text())
    bf16 = {k: statistics.median(v["train_images_per_s"]) for k, v in training["variants"].items() if k.startswith("bf16")}
    best = max(bf16, key=bf16.get)
    ok = bf16[best] >= 10_000
    missed += not ok
    print(f"{'MET ' if ok else 'MISSED'} training >= 10,000 images/s in bf16: {bf16[best]:.0f} ({best}); "
          f"1.6M images in {1.6e6 / bf16[best] / 60:.1f} min")
    for dtype in ("fp16", "bf16"):
        data = json.loads((RESULTS / f"sampling_speed-{tag}-{dtype}.json").read_text())
        speed = {k: statistics.median(v["images_per_s"]) for k, v in data["pipelines"].items()}
        for mode in ("eager", "compiled"):
            ratio = speed[f"ours {mode}"] / speed[f"stock {mode}"]
            ok = ratio >= 2.0
            missed += not ok
            print(f"{'MET ' if ok else 'MISSED'} sampling >= 2x stock, {dtype} {mode}: {ratio:.2f}x "
                  f"({speed[f'ours {mode}']:.0f} vs {speed[f'stock {mode}']:.0f} images/s)")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
