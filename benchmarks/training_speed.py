"""Training-step and sampling throughput of the default model under each speed option, interleaved.

    python benchmarks/training_speed.py [--config configs/digits.yaml] [--device cpu] [--repeats 6] [--batch_size N]

Each variant (eager, channels_last, torch.compile, both; fp32, and bf16 autocast on CUDA and on CPUs
with AVX512-BF16/AMX, where `mixed_precision: auto` picks it; elsewhere only when named) runs a
full training step (forward, MAE loss, backward, AdamW) on the config's model and batch size. The
variants are timed in turns, `--repeats` rounds of `--iters` steps each, so a busy machine slows
them all alike; the table gives the median and the best round. Compilation happens in the warm-up
and is reported separately. Sampling is timed the same way (batch 256, one UNet call per step).
Writes benchmarks/results/training_speed-<machine>.json (`--out` for another name).
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, machine_info, machine_tag, sync  # noqa: E402


def make_variant(config, device, channels_last, compile_, dtype, sample_batch: int = 256):
    from denoising_diffusion import compile_unet
    from denoising_diffusion.training.components import build_unet

    torch.manual_seed(0)
    unet = build_unet(config).to(device)
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    if compile_:
        compile_unet(unet)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4, foreach=True)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(config.train_batch_size, config.channels, config.resolution, config.resolution,
                    device=device).contiguous(memory_format=fmt)
    t = torch.rand(config.train_batch_size, device=device)
    # class-conditional configs: labels for every image (the "no class" one for sampling)
    labels = sample_labels = None
    if unet.config.num_class_embeds:
        labels = torch.zeros(config.train_batch_size, dtype=torch.long, device=device)
        sample_labels = torch.full((sample_batch,), unet.config.num_class_embeds - 1, device=device)

    def step():
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
            loss = (unet(x, t, class_labels=labels).sample.float() - x).abs().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    sample_x = torch.randn(sample_batch, config.channels, config.resolution, config.resolution,
                           device=device).contiguous(memory_format=fmt)
    sample_t = torch.full((sample_batch,), 0.5, device=device)

    @torch.no_grad()
    def sample_call():
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
            unet.eval()
            unet(sample_x, sample_t, class_labels=sample_labels)
            unet.train()

    return step, sample_call


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs/digits.yaml"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--no_compile", action="store_true", help="Skip the torch.compile variants.")
    parser.add_argument("--batch_size", type=int, default=None, help="Training batch (default: the config's).")
    parser.add_argument("--sample_batch_size", type=int, default=256, help="Batch of the sampling calls.")
    parser.add_argument("--variants", nargs="+", default=None,
                        help="Only these variants, named as in the table: 'fp32', 'bf16 channels_last', "
                             "'bf16 compile', 'bf16 channels_last compile', ... (default: all; bf16 on CUDA and on "
                             "CPUs with AVX512-BF16/AMX only, elsewhere when named: emulated there).")
    parser.add_argument("--out", default=None, help="Results file (default: benchmarks/results/training_speed-<machine>.json).")
    args = parser.parse_args()

    from denoising_diffusion.hardware import cpu_has_native_bf16
    from denoising_diffusion.training import parse_config

    config = parse_config(["--config", args.config] + (["--train_batch_size", str(args.batch_size)] if args.batch_size else []))
    device = args.device
    native_bf16 = device.startswith("cuda") or (device == "cpu" and cpu_has_native_bf16())
    dtypes = [torch.float32, torch.bfloat16]  # bf16 where it is emulated only when named in --variants
    candidates = {(f"{'bf16' if dtype == torch.bfloat16 else 'fp32'}"
                   f"{' channels_last' if channels_last else ''}{' compile' if compile_ else ''}"): (dtype, channels_last, compile_)
                  for dtype in dtypes for channels_last in (False, True)
                  for compile_ in ((False,) if args.no_compile else (False, True))}
    unknown = sorted(set(args.variants or []) - set(candidates))
    if unknown:
        parser.error(f"unknown variants {unknown} on {device}; expected some of {sorted(candidates)}")
    chosen = args.variants or [name for name, (dtype, _, _) in candidates.items()
                               if dtype == torch.float32 or native_bf16]
    variants = {}
    for name, (dtype, channels_last, compile_) in candidates.items():
        if name in chosen:
            step, sample_call = make_variant(config, device, channels_last, compile_, dtype, args.sample_batch_size)
            start = time.perf_counter()
            for _ in range(3):
                step()
                sample_call()
            sync(device)
            warmup = time.perf_counter() - start
            variants[name] = {"step": step, "sample": sample_call, "warmup_s": warmup, "train": [], "sample_calls": []}
            print(f"{name}: warm-up (incl. compilation) {warmup:.1f} s", flush=True)

    batch = config.train_batch_size
    for _ in range(args.repeats):
        for v in variants.values():
            sync(device)
            start = time.perf_counter()
            for _ in range(args.iters):
                v["step"]()
            sync(device)
            v["train"].append(batch * args.iters / (time.perf_counter() - start))
            start = time.perf_counter()
            for _ in range(args.iters):
                v["sample"]()
            sync(device)
            # images/s of a 20-step sampler = UNet calls per second * batch / 20
            v["sample_calls"].append(args.sample_batch_size * args.iters / 20 / (time.perf_counter() - start))

    info = machine_info()
    base = statistics.median(variants[next(iter(variants))]["train"])
    base_s = statistics.median(variants[next(iter(variants))]["sample_calls"])
    lines = [f"Machine: {info['cpu']} ({info['cores']} cores){', ' + info['gpu'] if info['gpu'] else ''}, "
             f"torch {info['torch']}, device {device}; {Path(args.config).name} model, batch {batch}.", "",
             f"| variant | training images/s (median, best) | vs eager fp32 | sampling images/s at 20 steps, batch {args.sample_batch_size} "
             "(median, best) | vs eager fp32 | warm-up s |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    result = {"machine": info, "device": device, "config": Path(args.config).name, "batch_size": batch,
              "sample_batch_size": args.sample_batch_size, "variants": {}}
    for name, v in variants.items():
        train_med, sample_med = statistics.median(v["train"]), statistics.median(v["sample_calls"])
        lines.append(f"| {name} | {train_med:.1f} ({max(v['train']):.1f}) | {train_med / base:.2f} | "
                     f"{sample_med:.1f} ({max(v['sample_calls']):.1f}) | {sample_med / base_s:.2f} | {v['warmup_s']:.1f} |")
        result["variants"][name] = {"train_images_per_s": v["train"], "sample_images_per_s_20_steps": v["sample_calls"],
                                    "warmup_s": v["warmup_s"]}
    print("\n".join(lines))
    out = Path(args.out) if args.out else RESULTS / f"training_speed-{machine_tag()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
