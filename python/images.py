"""PNG grids of images (PIL only; torchvision is not a dependency)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch


def image_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2, scale: int = 1) -> np.ndarray:
    """Tile images into one uint8 array.

    Args:
        images: (N, C, H, W) with C in {1, 3}, values in [0, 1] (clamped).
        nrow: images per row; default ceil(sqrt(N)).
        padding: white pixels between images and around the grid.
        scale: integer up-scaling (nearest neighbour), so that 16x16 digits stay visible.

    Returns:
        (rows, cols) for one channel or (rows, cols, 3) uint8.
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, 1 or 3, H, W); got {tuple(images.shape)}")
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    ncol_images, nrow_images = nrow, math.ceil(n / nrow)
    pixels = (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    if scale > 1:
        pixels = pixels.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
        h, w = h * scale, w * scale
    grid = np.full((c, padding + nrow_images * (h + padding), padding + ncol_images * (w + padding)), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, ncol_images)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top:top + h, left:left + w] = pixels[i].numpy()
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None, padding: int = 2,
              scale: int = 1) -> Path:
    """Write :func:`image_grid` of ``images`` as a PNG at ``path``; returns the path."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(images, nrow, padding, scale)).save(path)
    return path


def display_scale(image_size: int) -> int:
    """Up-scaling that makes small images readable in a grid (16 -> 2, 32 -> 1)."""
    return max(1, 32 // image_size)


def save_labelled_rows(rows: list[tuple[str, torch.Tensor]], path: str | os.PathLike, scale: int = 1,
                       padding: int = 2, title: str | None = None) -> Path:
    """Write one PNG with a row of images per label, the label at the left of its row.

    Args:
        rows: (label, images (n, C, H, W) in [0, 1]) pairs; every row has the same image shape.
        path: where the PNG goes.
        scale: integer up-scaling of the images.
        padding: white pixels between images.
        title: an optional line of text above the rows.

    Returns:
        The path.
    """
    from PIL import Image, ImageDraw

    if not rows:
        raise ValueError("rows must hold at least one (label, images) pair")
    strips = [Image.fromarray(image_grid(images, nrow=len(images), padding=padding, scale=scale)).convert("RGB")
              for _, images in rows]
    draw = ImageDraw.Draw(strips[0])
    label_width = 8 + max(draw.textbbox((0, 0), label)[2] for label, _ in rows)
    title_height = 16 if title else 0
    width = label_width + max(s.width for s in strips)
    canvas = Image.new("RGB", (width, title_height + sum(s.height for s in strips)), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 2), title, fill="black")
    top = title_height
    for (label, _), strip in zip(rows, strips):
        canvas.paste(strip, (label_width, top))
        draw.text((4, top + strip.height // 2 - 6), label, fill="black")
        top += strip.height
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
