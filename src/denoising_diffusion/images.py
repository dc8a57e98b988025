"""Sample grids: image tensors laid out as one PIL image."""

import math

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch


def image_grid(images: torch.Tensor, min_tile: int = 64, padding: int = 2) -> PIL.Image.Image:
    """(N, C, H, W) images in [0, 1] -> one PIL image: an about-square grid of tiles upscaled
    (nearest) to at least `min_tile` pixels, separated by `padding` gray pixels."""
    n, c, h, w = images.shape
    scale = max(1, math.ceil(min_tile / h))
    tiles = images.float().cpu().repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    th, tw = h * scale + padding, w * scale + padding
    grid = torch.full((c, rows * th + padding, cols * tw + padding), 0.5)
    for i, tile in enumerate(tiles):
        r, col = divmod(i, cols)
        grid[:, padding + r * th:padding + r * th + h * scale, padding + col * tw:padding + col * tw + w * scale] = tile
    array = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return PIL.Image.fromarray(array.squeeze(-1) if c == 1 else array)


def image_row(images: torch.Tensor, tile: int = 48) -> PIL.Image.Image:
    """(N, C, H, W) images in [0, 1] -> one strip of N tiles of at least `tile` pixels."""
    tiles = [image_grid(image[None], min_tile=tile) for image in images]
    strip = PIL.Image.new(tiles[0].mode, (sum(t.width for t in tiles), tiles[0].height))
    for i, t in enumerate(tiles):
        strip.paste(t, (i * t.width, 0))
    return strip


def labelled_rows(rows: list[tuple[str, torch.Tensor]], tile: int = 48, label_width: int = 170) -> PIL.Image.Image:
    """One image: for each (label, images (N, C, H, W) in [0, 1]) a row of samples, the label on the left."""
    strips = [image_row(images, tile) for _, images in rows]
    width = label_width + max(s.width for s in strips)
    canvas = PIL.Image.new("RGB", (width, sum(s.height for s in strips)), "white")
    draw = PIL.ImageDraw.Draw(canvas)
    y = 0
    for (label, _), strip in zip(rows, strips):
        canvas.paste(strip.convert("RGB"), (label_width, y))
        draw.text((6, y + strip.height // 2 - 6), label, fill="black")
        y += strip.height
    return canvas
