"""KID and FID between real images and a pipeline's samples, computed by torchmetrics.

Features are extracted once per image set (any `nn.Module` mapping (N, C, H, W) in [0, 1] to
(N, D)); torchmetrics' `KernelInceptionDistance` and `FrechetInceptionDistance` then run on them.
"""

import torch
from torch import nn


class _PrecomputedFeatures(nn.Module):
    """Hands torchmetrics features that were already extracted (so each image is embedded once)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


@torch.no_grad()
def extract_features(images: torch.Tensor, features: nn.Module, batch_size: int = 256) -> torch.Tensor:
    """(N, C, H, W) images in [0, 1] -> (N, D) float64 features on the CPU."""
    features = features.eval()
    device = next(features.parameters(), torch.empty(0)).device
    chunks = [features(chunk.to(device).float()).double().cpu() for chunk in images.split(batch_size)]
    return torch.cat(chunks)


def kid_fid(real_features: torch.Tensor, fake_features: torch.Tensor, subsets: int = 100,
            subset_size: int = 1000, seed: int = 0) -> dict[str, float]:
    """KID (mean and std over `subsets` random subsets) and FID from precomputed features.

    torchmetrics draws the KID subsets from torch's global generator; they are drawn here under
    `seed` (the caller's generator state is left as it was), so the same features always give the
    same KID.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, len(real_features), len(fake_features))
    passthrough = _PrecomputedFeatures(real_features.shape[1])
    kid = KernelInceptionDistance(feature=passthrough, subsets=subsets, subset_size=size)
    fid = FrechetInceptionDistance(feature=passthrough)
    for metric in (kid, fid):
        metric.update(real_features, real=True)
        metric.update(fake_features, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return {"kid": float(kid_mean), "kid_std": float(kid_std), "fid": float(fid.compute())}
