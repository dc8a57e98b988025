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
from .memorisation import nearest_neighbour_ratio


def model_folder(model: str) -> Path:
    """A saved pipeline's folder: `model` itself, or the Hub repo `model` downloaded."""
    if os.path.isdir(model):
        return Path(model)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model))


@torch.no_grad()
def generate(pipe, num_images: int, num_inference_steps: int, batch_size: int = 256, seed: int = 0,
             scheduler=None, class_labels: torch.Tensor | None = None, **call_kwargs) -> tuple[torch.Tensor, float]:
    """`num_images` samples in [0, 1] (CPU float32, (N, C, H, W)) and the seconds they took.

    The noise comes from one generator seeded with `seed`, so two calls with the same seed start from
    the same noise whatever else differs. `class_labels` (N,) asks for a class per image; other keyword
    arguments (`guidance_scale`, `autoguidance_scale`, `guidance_interval`, ...) go to the pipeline call.
    """
    if scheduler is not None:
        pipe.scheduler = scheduler
    generator = torch.Generator(device=pipe.device).manual_seed(seed)
    images, start = [], time.perf_counter()
    for first in range(0, num_images, batch_size):
        count = min(batch_size, num_images - first)
        labels = None if class_labels is None else class_labels[first:first + count]
        out = pipe(batch_size=count, generator=generator, num_inference_steps=num_inference_steps, output_type="pt",
                   class_labels=labels, **call_kwargs)
        images.append(out.images.float().cpu())
    if pipe.device.type == "cuda":
        torch.cuda.synchronize()
    return torch.cat(images), time.perf_counter() - start


def score_samples(fake: torch.Tensor, real_features: torch.Tensor, extractor: torch.nn.Module,
                  batch_size: int = 256, train_pixels: torch.Tensor | None = None,
                  nn_reference: float | None = None) -> dict[str, float]:
    """KID/FID of samples (N, C, H, W) in [0, 1] against precomputed real features; with the digits
    features also the fraction the classifier recognises with p >= 0.9 (`recognised`) and each digit's
    share of those over its real share (`class_balance`); with `train_pixels` (M, C, H, W) in [0, 1], the
    mean distance to the nearest training image and its ratio to `nn_reference` (`memorisation`)."""
    scores = kid_fid(real_features, extract_features(fake, extractor, batch_size))
    if isinstance(extractor, DigitsFeatures):
        scores["recognised"] = extractor.recognised_fraction(fake)
        scores["class_balance"] = extractor.class_balance(fake)
    if train_pixels is not None:
        scores.update(nearest_neighbour_ratio(fake, train_pixels, nn_reference))
    return scores
