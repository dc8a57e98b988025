"""Sampling throughput, ours vs the stock diffusers recipe, eager and torch.compile'd, interleaved.

    python benchmarks/sampling_speed.py [--config configs/digits.yaml] [--repeats 3]

Our `CosineDDIMPipeline` and diffusers' `DDIMPipeline` around the matched-parameter stock
`UNet2DModel` of benchmarks/common.py, each eager and with its UNet compiled in place
(`compile_unet`, inductor). Throughput does not depend on the weights, so the models are freshly
initialised. Each round times one call of every variant (batch 256, 20 steps) in turn, so machine
load affects them alike; the table gives the median and best round. Writes
benchmarks/results/sampling_speed-<machine>.json.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, machine_info, machine_tag, stock_unet, sync  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs/digits.yaml"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"],
                        help="Both pipelines' weights and sampling dtype (half precision on GPUs).")
    parser.add_argument("--no_compile", action="store_true", help="Eager pipelines only (no compilation time).")
    args = parser.parse_args()

    from diffusers import DDIMPipeline, DDIMScheduler

    from denoising_diffusion import CosineDDIMPipeline, compile_unet
    from denoising_diffusion.training import parse_config
    from denoising_diffusion.training.components import build_scheduler, build_unet

    config = parse_config(["--config", args.config])
    device, batch, steps = args.device, args.batch_size, args.steps
    pipes = {}
    for compiled in (False,) if args.no_compile else (False, True):
        torch.manual_seed(0)
        ours = build_unet(config)
        stock = stock_unet(config.resolution, config.channels, sum(p.numel() for p in ours.parameters()))
        for name, pipe in (("ours", CosineDDIMPipeline(ours.eval(), build_scheduler(config))),
                           ("stock", DDIMPipeline(stock.eval(), DDIMScheduler(num_train_timesteps=1000)))):
            dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
            pipe = pipe.to(device, dtype)
            pipe.set_progress_bar_config(disable=True)
            if compiled:
                compile_unet(pipe.unet)
            start = time.perf_counter()
            pipe(batch_size=batch, num_inference_steps=2, generator=torch.Generator(device).manual_seed(0),
                 output_type="pt")  # warm-up; compiles the compiled variant
            sync(device)
            label = f"{name} {'compiled' if compiled else 'eager'}"
            pipes[label] = {"pipe": pipe, "warmup_s": time.perf_counter() - start, "images_per_s": []}
            print(f"{label}: warm-up {pipes[label]['warmup_s']:.1f} s", flush=True)

    with torch.no_grad():
        for _ in range(args.repeats):
            for label, entry in pipes.items():
                sync(device)
                start = time.perf_counter()
                entry["pipe"](batch_size=batch, num_inference_steps=steps,
                              generator=torch.Generator(device).manual_seed(0), output_type="pt")
                sync(device)
                entry["images_per_s"].append(batch / (time.perf_counter() - start))

    info = machine_info()
    base = statistics.median(pipes["stock eager"]["images_per_s"])
    lines = [f"Machine: {info['cpu']} ({info['cores']} cores){', ' + info['gpu'] if info['gpu'] else ''}, "
             f"torch {info['torch']}, device {device}, {args.dtype}; {Path(args.config).name} model, batch {batch}, "
             f"{steps} steps.", "",
             "| pipeline | images/s (median, best) | vs stock eager | warm-up s |", "| --- | ---: | ---: | ---: |"]
    for label, entry in pipes.items():
        med = statistics.median(entry["images_per_s"])
        lines.append(f"| {label} | {med:.1f} ({max(entry['images_per_s']):.1f}) | {med / base:.2f} | {entry['warmup_s']:.1f} |")
    print("\n".join(lines))
    result = {"machine": info, "device": device, "dtype": args.dtype, "config": Path(args.config).name,
              "batch_size": batch, "steps": steps,
              "pipelines": {k: {"images_per_s": v["images_per_s"], "warmup_s": v["warmup_s"]} for k, v in pipes.items()}}
    suffix = "" if args.dtype == "fp32" else f"-{args.dtype}"
    out = RESULTS / f"sampling_speed-{machine_tag()}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
