"""Where a training step's time goes: torch.profiler over a few steps of the config's model.

    python benchmarks/profile_step.py [--config configs/digits.yaml] [--stock] [--steps 10]

Prints the operators by self CPU (or CUDA) time. `--stock` profiles the matched stock diffusers
UNet2DModel of benchmarks/run.py instead of ours.
"""

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, stock_unet  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs/digits.yaml"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--stock", action="store_true")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rows", type=int, default=15)
    args = parser.parse_args()


    from denoising_diffusion.training import parse_config
    from denoising_diffusion.training.components import build_unet

    config = parse_config(["--config", args.config])
    torch.manual_seed(0)
    unet = build_unet(config)
    if args.stock:
        unet = stock_unet(config.resolution, config.channels, sum(p.numel() for p in unet.parameters()))
    unet = unet.to(args.device)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    x = torch.randn(config.train_batch_size, config.channels, config.resolution, config.resolution, device=args.device)
    t = torch.randint(0, 1000, (x.shape[0],), device=args.device) if args.stock else torch.rand(x.shape[0], device=args.device)

    def step():
        loss = (unet(x, t).sample - x).abs().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            step()
    key = "self_cuda_time_total" if args.device.startswith("cuda") else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows))


if __name__ == "__main__":
    main()
