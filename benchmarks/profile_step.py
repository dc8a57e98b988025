"""Where a training step's time goes: torch.profiler over a few steps of the config's model.

    python benchmarks/profile_step.py [--config configs/digits.yaml] [--stock] [--steps 10]

Prints the operators by self CPU (or CUDA) time. `--stock` profiles the matched stock diffusers
UNet2DModel of benchmarks/common.py instead of ours.
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, stock_unet, sync  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs/digits.yaml"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--stock", action="store_true")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--batch_size", type=int, default=None, help="Training batch (default: the config's).")
    args = parser.parse_args()

    from denoising_diffusion.training import parse_config
    from denoising_diffusion.training.components import build_unet

    config = parse_config(["--config", args.config]
                          + (["--train_batch_size", str(args.batch_size)] if args.batch_size else []))
    torch.manual_seed(0)
    unet = build_unet(config)
    if args.stock:
        unet = stock_unet(config.resolution, config.channels, sum(p.numel() for p in unet.parameters()))
    unet = unet.to(args.device)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    x = torch.randn(config.train_batch_size, config.channels, config.resolution, config.resolution, device=args.device)
    t = torch.randint(0, 1000, (x.shape[0],), device=args.device) if args.stock else torch.rand(x.shape[0], device=args.device)

    conditional = not args.stock and unet.config.num_class_embeds is not None
    labels = {"class_labels": torch.zeros(x.shape[0], dtype=torch.long, device=args.device)} if conditional else {}

    def step():
        loss = (unet(x, t, **labels).sample - x).abs().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    cuda = args.device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync(args.device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            step()
        sync(args.device)
    wall = (time.perf_counter() - start) / args.steps
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    averages = prof.key_averages()
    print(averages.table(sort_by=key, row_limit=args.rows))
    if cuda:  # where a step's time goes: the GPU busy with kernels, or waiting for the host to launch them
        kernels = sum(getattr(e, "self_device_time_total", 0) or getattr(e, "self_cuda_time_total", 0) for e in averages)
        kernels = kernels / 1e6 / args.steps
        launches = sum(e.count for e in averages if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
        print(f"per step (batch {x.shape[0]}, under the profiler): {wall * 1e3:.1f} ms wall, {kernels * 1e3:.1f} ms of GPU "
              f"kernels ({kernels / wall:.0%} busy), {launches / args.steps:.0f} kernel launches; a GPU busy well under "
              "100% is waiting for the host (launch overhead), not for its arithmetic")


if __name__ == "__main__":
    main()
