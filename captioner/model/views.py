"""Training on two views of every image (`features.flip`): as it is, and mirrored left-right.

The mirrored view's feature rows sit beside the originals as one source of 2N rows (row N + r is image r
mirrored), and its captions beside the originals with `left` and `right` swapped (`text.mirror_ids`). Each
time an image comes up in an epoch, a seeded draw shows it in one of the two views, so an epoch costs what it
did with one view. The draws come from their own generator: flip changes which view a batch shows, never which
images and captions make up the batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from captioner.data.text import Vocabulary, mirror_ids

VIEW_STREAM = 0x666C6970  # the view draws' generator is seeded with [seed, VIEW_STREAM]


class BothViews:
    """Feature rows of both views as one source: row r < N is image r as it is, row N + r is image r mirrored."""

    def __init__(self, original: Any, mirrored: Any) -> None:
        if tuple(original.shape) != tuple(mirrored.shape):
            raise ValueError(f"mirrored rows of shape {mirrored.shape} for original rows of shape {original.shape}")
        self.original, self.mirrored = original, mirrored
        self.images = int(original.shape[0])
        self.shape: tuple[int, ...] = (2 * self.images, *original.shape[1:])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, indices) -> np.ndarray:
        """The rows at `indices` (0..2N-1) in that order, each read from its view's source."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        flipped = idx >= self.images
        if not flipped.any():
            return np.asarray(self.original[idx])
        if flipped.all():
            return np.asarray(self.mirrored[idx - self.images])
        plain = np.asarray(self.original[idx[~flipped]])
        mirrored = np.asarray(self.mirrored[idx[flipped] - self.images])
        out = np.empty((len(idx), *plain.shape[1:]), dtype=np.result_type(plain, mirrored))
        out[~flipped], out[flipped] = plain, mirrored
        return out


@dataclass
class Mirror:
    """The mirrored view of a feature source: its rows (same order as the originals) and the token-id swap."""

    rows: Any  # a FeatureReader (or its pooled form, or an array) of the mirrored images
    ids: np.ndarray  # token id -> its id in the mirrored caption

    @classmethod
    def of(cls, rows: Any, vocab: Vocabulary) -> "Mirror":
        """The mirrored view `rows` with the swap of `vocab`'s `left` and `right`."""
        return cls(rows, mirror_ids(vocab))

    def sources(self, features: Any, tokens: np.ndarray) -> tuple[BothViews, np.ndarray]:
        """(rows of both views, token rows of both views): the originals first, then the mirrored."""
        return BothViews(features, self.rows), np.concatenate([tokens, self.ids[tokens]])


def view_draws(seed: int) -> np.random.Generator:
    """The generator of a run's view draws (apart from every other generator of the run)."""
    return np.random.default_rng([seed, VIEW_STREAM])


def show(rng: np.random.Generator, rows: np.ndarray, caption_ids: np.ndarray, images: int, captions: int
         ) -> tuple[np.ndarray, np.ndarray]:
    """Each image of a batch in a view drawn at random: (its rows, its captions' indices) in the sources of
    `Mirror.sources`, an image's captions (grouped image by image, as many for each) following its view."""
    mirrored = rng.random(len(rows)) < 0.5
    per_image = len(caption_ids) // max(len(rows), 1)
    return rows + images * mirrored, caption_ids + captions * np.repeat(mirrored, per_image)
