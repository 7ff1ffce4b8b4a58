"""The embedded sample: synthetic scenes of coloured shapes with five true captions each.

Made by the project itself (license-clean, no download), deterministic from a seed, in the same
Kaggle-Flickr8k layout as the real data, and learnable: colours, kinds, counts and positions are
all visible in the picture and named in the captions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from captioner.data.datasets.raw import RawDataset, finalize

SIZE = 224
COLOURS = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220),
    "yellow": (240, 220, 30), "purple": (140, 40, 170), "orange": (250, 140, 20),
}
BACKGROUNDS = {"white": (245, 245, 245), "black": (15, 15, 15), "gray": (128, 128, 128)}
KINDS = ("circle", "square", "triangle")
SPLIT_FRACTIONS = {"train": 0.7, "val": 0.15}
_AN = re.compile(r"\ba (?=[aeiou])")


@dataclass(frozen=True)
class Shape:
    """One shape in a scene: kind, colour name, size class, and centre in pixels."""

    kind: str
    colour: str
    large: bool
    x: float
    y: float

    @property
    def phrase(self) -> str:
        return f"{self.colour} {self.kind}"


def _region(shape: Shape) -> str:
    """Where a lone shape sits, in words."""
    col = "left" if shape.x < SIZE / 3 else "right" if shape.x > 2 * SIZE / 3 else ""
    row = "top" if shape.y < SIZE / 3 else "bottom" if shape.y > 2 * SIZE / 3 else ""
    return f"{row} {col}".strip() or "middle"


def _draw(draw: ImageDraw.ImageDraw, shape: Shape, rng: np.random.Generator) -> None:
    """Draw one shape with a slightly jittered colour."""
    r = (38 if shape.large else 22) * rng.uniform(0.9, 1.1)
    fill = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in COLOURS[shape.colour])
    x, y = shape.x, shape.y
    if shape.kind == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif shape.kind == "square":
        draw.rectangle([x - r, y - r, x + r, y + r], fill=fill)
    else:
        draw.polygon([(x, y - r * 1.15), (x - r * 1.1, y + r * 0.85), (x + r * 1.1, y + r * 0.85)], fill=fill)


def _layout(rng: np.random.Generator, n: int) -> tuple[list[tuple[float, float]], str]:
    """Centres for n shapes and the axis they line up on ('single', 'vertical' or 'horizontal')."""
    jitter = lambda: float(rng.uniform(-12, 12))  # noqa: E731
    if n == 1:
        return [(float(rng.uniform(45, SIZE - 45)), float(rng.uniform(45, SIZE - 45)))], "single"
    axis = "horizontal" if n == 3 or rng.random() < 0.5 else "vertical"
    slots = np.linspace(50, SIZE - 50, n)
    across = float(rng.uniform(70, SIZE - 70))
    if axis == "horizontal":
        return [(s + jitter(), across + jitter()) for s in slots], axis
    return [(across + jitter(), s + jitter()) for s in slots], axis


def _captions(shapes: list[Shape], axis: str, bg: str, rng: np.random.Generator) -> list[str]:
    """Five different true sentences about the scene, drawn from varied phrasings."""
    a = shapes[0]
    same = len({s.phrase for s in shapes}) == 1
    plural = f"{a.colour} {a.kind}s"
    if len(shapes) == 1:
        size = "large" if a.large else "small"
        options = [
            f"a {a.phrase} on a {bg} background", f"a {size} {a.phrase}",
            f"a single {a.phrase} in the {_region(a)}", f"one {size} {a.phrase} on {bg}",
            f"a {a.kind} that is {a.colour} on a {bg} background", f"there is a {a.phrase} in the {_region(a)}",
        ]
    elif len(shapes) == 2 and same:
        where = "one above the other" if axis == "vertical" else "side by side"
        options = [
            f"two {plural} on a {bg} background", f"two {a.kind}s that are {a.colour}",
            f"a pair of {plural}", f"two {plural} {where}", f"two {a.colour} {a.kind}s on {bg}",
        ]
    elif len(shapes) == 2:
        b = shapes[1]
        if axis == "vertical":
            options = [f"a {a.phrase} above a {b.phrase}", f"a {b.phrase} below a {a.phrase}",
                       f"a {a.phrase} over a {b.phrase} on a {bg} background", f"a {b.phrase} under a {a.phrase}"]
        else:
            options = [f"a {a.phrase} to the left of a {b.phrase}", f"a {b.phrase} to the right of a {a.phrase}",
                       f"a {a.phrase} next to a {b.phrase} on a {bg} background",
                       f"a {a.phrase} and a {b.phrase} side by side"]
        options += [f"a {a.phrase} and a {b.phrase} on a {bg} background", f"two shapes a {a.phrase} and a {b.phrase}"]
    elif same:
        options = [f"three {plural} in a row", f"three {plural} on a {bg} background", f"a row of three {plural}",
                   f"three {a.kind}s that are {a.colour}", f"three {a.colour} {a.kind}s on {bg}"]
    else:
        b, c = shapes[1], shapes[2]
        listing = f"a {a.phrase} a {b.phrase} and a {c.phrase}"
        options = [f"{listing} in a row", f"three shapes on a {bg} background", f"{listing} on {bg}",
                   f"three shapes {listing}", f"from left to right {listing}", f"a row of three shapes on {bg}"]
    picks = rng.choice(len(options), size=5, replace=False)
    return [_AN.sub("an ", options[i]) for i in sorted(picks)]


def _scene(rng: np.random.Generator) -> tuple[Image.Image, list[str]]:
    """One random scene and its five captions."""
    bg = str(rng.choice(list(BACKGROUNDS)))
    n = int(rng.choice([1, 2, 3], p=[0.35, 0.4, 0.25]))
    centres, axis = _layout(rng, n)
    same = n > 1 and rng.random() < 0.3
    kind, colour = str(rng.choice(KINDS)), str(rng.choice(list(COLOURS)))
    large = bool(rng.random() < 0.5) if n == 1 else n == 2
    shapes = [
        Shape(kind if same else str(rng.choice(KINDS)), colour if same else str(rng.choice(list(COLOURS))),
              large, x, y)
        for x, y in centres
    ]
    base = np.array(BACKGROUNDS[bg], dtype=np.float32) + rng.normal(0, 6, 3)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)[None, None, :].repeat(SIZE, 0).repeat(SIZE, 1))
    draw = ImageDraw.Draw(img)
    for shape in shapes:
        _draw(draw, shape, rng)
    noisy = np.asarray(img.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float32) + rng.normal(0, 5, (SIZE, SIZE, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), _captions(shapes, axis, bg, rng)


def generate_sample(folder: Path, n_images: int, seed: int) -> RawDataset:
    """Render `n_images` scenes into `folder/Images` and return them as a raw dataset with a 70/15/15 split."""
    if n_images < 10:
        raise ValueError("data.sample_images must be at least 10")
    images = folder / "Images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    captions, files = {}, {}
    for i in range(n_images):
        img, caps = _scene(rng)
        name = f"sample_{i:05d}.jpg"
        img.save(images / name, quality=90)
        captions[name], files[name] = caps, images / name
    names = sorted(captions)
    order = [names[i] for i in rng.permutation(len(names))]
    n_train = round(SPLIT_FRACTIONS["train"] * len(names))
    n_val = round(SPLIT_FRACTIONS["val"] * len(names))
    splits = {"train": sorted(order[:n_train]), "val": sorted(order[n_train:n_train + n_val]),
              "test": sorted(order[n_train + n_val:])}
    report = {"layout": "kaggle", "sample_seed": seed, "empty_captions_dropped": 0}
    return finalize(captions, splits, files, report)
