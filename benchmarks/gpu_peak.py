"""The dense bf16 matmul peak of this device, the model's FLOPs per image, and the fraction of the
peak that the measured training and sampling throughputs reach.

    python benchmarks/gpu_peak.py --config configs/emoji.yaml [--device cuda]

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` on one forward (and one training
step: forward + backward) of the config's UNet. The throughputs are read from the newest
`results/training_speed-<machine>.json` and `results/sampling_speed-<machine>[-fp16|-bf16].json`
for this machine (run training_speed.py and sampling_speed.py first; benchmarks/gpu.sh does).
Writes results/gpu_peak-<machine>.json.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, flops_per_image, machine_info, machine_tag, matmul_peak  # noqa: E402

def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs/emoji.yaml"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--matmul_size", type=int, default=8192)
    args = parser.parse_args()

    from denoising_diffusion.training import parse_config
    from denoising_diffusion.training.components import build_unet

    config = parse_config(["--config", args.config])
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    peak = matmul_peak(args.device, dtype, args.matmul_size, iters=50)
    unet = build_unet(config).to(args.device)
    flops = flops_per_image(unet, (config.channels, config.resolution, config.resolution), 0.5, args.device,
                            class_labels=0 if unet.config.num_class_embeds else None)
    forward, train_step = flops["forward"], flops["train"]
    tag = machine_tag()
    lines = [f"Machine: {machine_info()['gpu'] or machine_info()['cpu']}; dense {str(dtype)[6:]} matmul peak "
             f"{peak / 1e12:.1f} TFLOP/s; {Path(args.config).name}: {forward / 1e9:.2f} GFLOP forward, "
             f"{train_step / 1e9:.2f} GFLOP per training image.", "",
             "| measurement | images/s (median) | achieved TFLOP/s | fraction of peak |", "| --- | ---: | ---: | ---: |"]
    result = {"machine": machine_info(), "peak_flops": peak, "forward_flops_per_image": forward,
              "train_flops_per_image": train_step, "fractions": {}}

    def add(name, images_per_s, flops):
        achieved = images_per_s * flops
        lines.append(f"| {name} | {images_per_s:.0f} | {achieved / 1e12:.2f} | {achieved / peak:.1%} |")
        result["fractions"][name] = {"images_per_s": images_per_s, "fraction": achieved / peak}

    training = RESULTS / f"training_speed-{tag}.json"
    if training.exists():
        data = json.loads(training.read_text())
        for name, v in data["variants"].items():
            if dtype == torch.bfloat16 and name.startswith("fp32"):
                continue  # measured against the bf16 peak: only the bf16 variants
            add(f"training {name} (batch {data['batch_size']})", statistics.median(v["train_images_per_s"]), train_step)
    for suffix in ("", "-fp16", "-bf16"):
        sampling = RESULTS / f"sampling_speed-{tag}{suffix}.json"
        if sampling.exists():
            data = json.loads(sampling.read_text())
            if dtype == torch.bfloat16 and data.get("dtype", "fp32") == "fp32":
                continue
            for name, v in data["pipelines"].items():
                if name.startswith("ours"):  # one UNet call per step
                    add(f"sampling {name} {data.get('dtype', 'fp32')} ({data['steps']} steps, batch {data['batch_size']})",
                        statistics.median(v["images_per_s"]), forward * data["steps"])
    print("\n".join(lines))
    out = RESULTS / f"gpu_peak-{tag}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
