"""How close samples lie to the training images: a memorising model is not a better model.

`nearest_neighbour_distances` gives each sample's Euclidean distance (pixels in [0, 1]) to its
nearest training image. The reference for "not closer than real data" is the same distance for real
images the model did not see; where the model saw every real image (the built-in digits), each real
image's distance to its nearest *other* training image (`leave_one_out=True`) is that reference.
"""

import torch


@torch.no_grad()
def nearest_neighbour_distances(samples: torch.Tensor, train: torch.Tensor, leave_one_out: bool = False,
                                batch_size: int = 512) -> torch.Tensor:
    """(N,) distances from each of `samples` (N, C, H, W) to its nearest image of `train` (M, C, H, W),
    both in [0, 1] at the same size. With `leave_one_out`, `samples` is `train` itself and each image's
    own entry is skipped."""
    if samples.shape[1:] != train.shape[1:]:
        raise ValueError(f"samples {tuple(samples.shape[1:])} and training images {tuple(train.shape[1:])} must "
                         "have the same shape (resize one to the other first).")
    flat_train = train.flatten(1).double()
    out = []
    for first in range(0, len(samples), batch_size):
        chunk = samples[first:first + batch_size].flatten(1).double()
        distances = torch.cdist(chunk, flat_train)
        if leave_one_out:
            rows = torch.arange(len(chunk))
            distances[rows, rows + first] = float("inf")
        out.append(distances.min(dim=1).values)
    return torch.cat(out).float()


def nearest_neighbour_ratio(samples: torch.Tensor, train: torch.Tensor, reference: float | None = None) -> dict:
    """`nn_distance`: the samples' mean distance to the nearest training image; `nn_ratio`: that over
    `reference` (default: the training images' own leave-one-out mean). Below 1: closer to the training
    images than real unseen data is."""
    if reference is None:
        reference = float(nearest_neighbour_distances(train, train, leave_one_out=True).mean())
    distance = float(nearest_neighbour_distances(samples, train).mean())
    return {"nn_distance": distance, "nn_ratio": distance / reference}
