"""Scoring a pipeline's samples: drawing them, KID/FID against real features and the recognised
fraction. What `evaluate`, the sweep, the trainer's KID and the benchmarks share (the real images
come from `training.data.real_images`).
"""

import os
import time
from pathlib import Path

import torch

from .features import DigitsFeatures
from .kid import extract_features, kid_fid


def model_folder(model: str) -> Path:
    """A saved pipeline's folder: `model` itself, or the Hub repo `model` downloaded."""
    if os.path.isdir(model):
        return Path(model)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model))


@torch.no_grad()
def generate(pipe, num_images: int, num_inference_steps: int, batch_size: int = 256, seed: int = 0,
             scheduler=None) -> tuple[torch.Tensor, float]:
    """`num_images` samples in [0, 1] (CPU float32, (N, C, H, W)) and the seconds they took."""
    if scheduler is not None:
        pipe.scheduler = scheduler
    generator = torch.Generator(device=pipe.device).manual_seed(seed)
    images, start = [], time.perf_counter()
    for first in range(0, num_images, batch_size):
        count = min(batch_size, num_images - first)
        out = pipe(batch_size=count, generator=generator, num_inference_steps=num_inference_steps, output_type="pt")
        images.append(out.images.float().cpu())
    if pipe.device.type == "cuda":
        torch.cuda.synchronize()
    return torch.cat(images), time.perf_counter() - start


def score_samples(fake: torch.Tensor, real_features: torch.Tensor, extractor: torch.nn.Module,
                  batch_size: int = 256) -> dict[str, float]:
    """KID/FID of samples (N, C, H, W) in [0, 1] against precomputed real features; with the digits
    features also the fraction the classifier recognises with p >= 0.9 (`recognised`)."""
    scores = kid_fid(real_features, extract_features(fake, extractor, batch_size))
    if isinstance(extractor, DigitsFeatures):
        scores["recognised"] = extractor.recognised_fraction(fake)
    return scores
