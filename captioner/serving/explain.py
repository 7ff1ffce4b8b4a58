"""Where the model looked: one figure per image with the photo, the caption and a heatmap per word.

Used by `captioner predict --explain OUT_DIR` and by the evaluate stage's samples.png. Drawn with
matplotlib's object API on the Agg canvas (no pyplot, no display, safe in threads).
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from captioner.core.atomic import atomic_path

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, SubFigure

    from captioner.serving.api import Caption

PHOTO_PIXELS = 512
COLUMNS = 5


def load_photo(path: str | os.PathLike[str], max_side: int = PHOTO_PIXELS) -> np.ndarray:
    """The photo at `path` upright (EXIF orientation applied), RGB, at most `max_side` pixels a side."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
        image.thumbnail((max_side, max_side))
        return np.asarray(image)


def draw_heatmap(ax: Axes, photo: np.ndarray, grid: np.ndarray, title: str) -> None:
    """The photo with an attention grid (h, w) stretched over it, brightest where the weight is highest.

    The grid is scaled from its least to its most attended cell, so a uniform map leaves the photo plain.
    """
    height, width = photo.shape[:2]
    span = float(grid.max() - grid.min())
    scaled = (grid - grid.min()) / span if span > 1e-6 else np.zeros_like(grid)
    ax.imshow(photo)
    ax.imshow(scaled, cmap="inferno", alpha=0.6 * scaled, vmin=0.0, vmax=1.0,
              extent=(0, width, height, 0), interpolation="bilinear")
    ax.set_title(title, fontsize=10)
    ax.axis("off")


def grid_size(result: Caption, max_words: int | None = None, columns: int = COLUMNS) -> tuple[int, int]:
    """(rows, columns) of panels: the photo, then one heatmap per word, `columns` to a row."""
    words = 0 if result.attention is None else len(result.words[:max_words])
    cols = min(columns, words + 1)
    return (words + cols) // cols, cols


def draw_explanation(fig: Figure | SubFigure, photo: np.ndarray, result: Caption, title: str = "",
                     max_words: int | None = None, columns: int = COLUMNS) -> None:
    """Fill `fig`: the photo with its caption, then a heatmap per word (a note instead when there is no attention)."""
    maps = [] if result.attention is None else list(zip(result.words[:max_words], result.attention))
    rows, cols = grid_size(result, max_words, columns)
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax in axes:
        ax.axis("off")
    axes[0].imshow(photo)
    caption = textwrap.fill(result.caption or "(empty caption)", 36)
    axes[0].set_title(f"{title}\n{caption}" if title else caption, fontsize=9, loc="left")
    if result.attention is None:
        axes[0].text(0.5, -0.08, "no attention maps: this decoder does not attend over the image grid",
                     transform=axes[0].transAxes, ha="center", va="top", fontsize=7)
    for (word, grid), ax in zip(maps, axes[1:]):
        draw_heatmap(ax, photo, grid, word)


def explanation_figure(photo: np.ndarray, result: Caption, title: str = "") -> Figure:
    """A standalone figure for one image: photo and caption, then one heatmap per word, five panels to a row."""
    from matplotlib.figure import Figure

    rows, cols = grid_size(result)
    fig = Figure(figsize=(3 * cols, 3.3 * rows), layout="constrained")
    draw_explanation(fig, photo, result, title)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = 80) -> None:
    """Write `fig` as a PNG atomically (temp file + rename)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)


def explanation_paths(images: list[Path], out_dir: Path) -> list[Path]:
    """`out_dir/<stem>.png` per image; a repeated stem gets `-2`, `-3`... so no figure overwrites another."""
    used: dict[str, int] = {}
    out = []
    for image in images:
        used[image.stem] = used.get(image.stem, 0) + 1
        suffix = f"-{used[image.stem]}" if used[image.stem] > 1 else ""
        out.append(out_dir / f"{image.stem}{suffix}.png")
    return out
