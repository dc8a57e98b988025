"""What every benchmark shares: the machine, timing, the matmul peak, FLOP counts, the stock diffusers
UNet at a matched size, and averaging over seeds. Benchmarks import this module and the package,
never each other."""

import os
import re
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from denoising_diffusion.hardware import machine_info

ROOT = Path(__file__).resolve().parents[1]  # the repository
# Where the scripts write their JSON: benchmarks/results, or $BENCHMARK_RESULTS (e.g. a run's own folder).
RESULTS = Path(os.environ.get("BENCHMARK_RESULTS") or Path(__file__).resolve().parent / "results")

__all__ = ["RESULTS", "ROOT", "flops_per_image", "machine_info", "machine_tag", "matmul_peak", "mean_over_seeds",
           "stock_unet", "sync", "without_periodic_work"]


def sync(device) -> None:
    """Wait for queued GPU work, so a timer reads finished work (no-op on the CPU)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def machine_tag() -> str:
    """A short file-name tag: the GPU (e.g. 'nvidia-h100-80gb-hbm3'), else the cores and the CPU family
    (e.g. 'cpu2-intel-xeon'). Results files written before the CPU family was part of the tag are named
    'cpu2'; the machine inside each file says which CPU it was."""
    info = machine_info()
    if info["gpu"]:
        return re.sub(r"[^a-z0-9]+", "-", info["gpu"].lower()).strip("-")
    family = re.sub(r"\((r|tm)\)|\b(processor|cpu)\b", "", (info["cpu"] or "").lower())
    family = re.sub(r"[^a-z0-9]+", "-", family).strip("-")
    return f"cpu{info['cores']}" + (f"-{family}" if family else "")


def matmul_peak(device: str, dtype: torch.dtype | None = None, n: int | None = None, iters: int = 10,
                rounds: int = 5) -> float:
    """The best measured dense matmul throughput (FLOP/s) on n x n x n products, over `rounds` rounds of
    `iters` products (defaults: fp32 and n = 2048 on a CPU, bf16 and n = 8192 on a GPU)."""
    gpu = str(device).startswith("cuda")
    dtype = dtype or (torch.bfloat16 if gpu else torch.float32)
    n = n or (8192 if gpu else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(rounds):
        sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            a @ b
        sync(device)
        best = max(best, 2 * n**3 * iters / (time.perf_counter() - start))
    return best


def flops_per_image(model, sample_shape: tuple, timestep, device, class_labels=None, batch: int = 8) -> dict:
    """{"forward", "train"}: FLOPs per image of one forward pass and of one training step (forward +
    backward), both counted by torch's `FlopCounterMode` on a batch of `batch` images.

    `timestep` is one value, repeated for the batch (a float in [0, 1] for ours, an integer for stock).
    """
    x = torch.randn(batch, *sample_shape, device=device)
    t = torch.full((batch,), timestep, device=device)
    labels = None if class_labels is None else torch.full((batch,), class_labels, device=device)
    kwargs = {} if labels is None else {"class_labels": labels}
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, t, **kwargs)
    forward = counter.get_total_flops() / batch
    with FlopCounterMode(display=False) as counter:
        model(x, t, **kwargs).sample.abs().mean().backward()
    model.zero_grad(set_to_none=True)
    return {"forward": forward, "train": counter.get_total_flops() / batch}


def stock_unet(sample_size: int, channels: int, target_params: int):
    """The stock diffusers `UNet2DModel` (self-attention at the middle level, as in
    `train_unconditional.py`) closest to `target_params` parameters (within 10%), widths (32, 64, w)."""
    from diffusers import UNet2DModel

    best = None
    for last in range(48, 257, 8):
        model = UNet2DModel(
            sample_size=sample_size, in_channels=channels, out_channels=channels, layers_per_block=2,
            block_out_channels=(32, 64, last), down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
        )
        params = sum(p.numel() for p in model.parameters())
        if best is None or abs(params - target_params) < abs(best[1] - target_params):
            best = (model, params)
    if abs(best[1] / target_params - 1) > 0.10:
        raise ValueError(f"No stock UNet within 10% of {target_params:,} parameters (closest: {best[1]:,}).")
    return best[0]


def mean_over_seeds(runs: list[dict]) -> dict:
    """The mean of every number the per-seed score dicts `runs` share (KID, its subset std, FID, the
    recognised fraction, ...), plus `kid_seed_spread`: how far apart the seeds' KIDs are (None for one)."""
    keys = [k for k in runs[0] if all(isinstance(r.get(k), (int, float)) for r in runs)]
    out = {key: statistics.mean(r[key] for r in runs) for key in keys}
    kids = [r["kid"] for r in runs]
    out["kid_seed_spread"] = max(kids) - min(kids) if len(kids) > 1 else None
    return out


def without_periodic_work(config, steps: int):
    """`config` for a timed run of `steps` steps: no checkpoint, sample grid or loss read-back inside
    it (each period is longer than the run; the loss is still checked at the last step)."""
    config.max_train_steps = steps
    config.checkpointing_steps = config.save_images_steps = config.logging_steps = steps + 1
    return config
