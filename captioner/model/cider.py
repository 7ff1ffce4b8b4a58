"""CIDEr-D per caption against a fixed reference corpus: the reward of self-critical training.

The arithmetic is pycocoevalcap's CiderScorer (tf-idf n-grams 1-4, clipped hypothesis weights, Gaussian
length penalty with sigma 6, x10), but document frequencies come once from the whole reference corpus and
every reference vector is computed once, so scoring thousands of sampled captions per batch stays cheap.
References are held compactly: an n-gram is an id, a reference two small arrays (ids, weights), so the
30,000 Flickr8k training captions take about a quarter of the memory of dicts keyed by word tuples.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import numpy as np

_N = 4
_SIGMA = 6.0

_Vector = tuple[np.ndarray, np.ndarray, np.ndarray, int]  # n-gram ids (sorted), weights, norm per n, length


class CiderD:
    """CIDEr-D of captions for image i against references[i], idf taken from all of `references`."""

    def __init__(self, references: Sequence[Sequence[str]]):
        self._words: dict[str, int] = {}
        self._grams: dict[tuple[int, ...], int] = {}  # n-gram of word ids -> n-gram id
        orders: list[int] = []  # n - 1 of each n-gram id
        cooked = [[self._count(ref.split(), orders) for ref in refs] for refs in references]
        frequency = np.zeros(len(self._grams), dtype=np.float64)
        for refs in cooked:
            if refs:
                frequency[np.unique(np.concatenate([ids for ids, _, _ in refs]))] += 1
        self.log_images = math.log(float(max(len(cooked), 1)))
        self._idf = self.log_images - np.log(np.maximum(frequency, 1.0))
        self._order = np.array(orders, dtype=np.int64)
        self.references = [[self._vector(*counted) for counted in refs] for refs in cooked]

    def _count(self, words: Sequence[str], orders: list[int] | None = None):
        """(sorted ids, counts) of a sentence's 1..4-grams that have ids, and the counts of those that have none.

        With `orders` (building the references) every new word and n-gram gets an id; otherwise an n-gram
        no reference has stays without one: it matches nothing and only adds to the sentence's norm.
        """
        if orders is not None:
            word_ids = [self._words.setdefault(w, len(self._words)) for w in words]
        else:
            word_ids = [self._words.get(w, w) for w in words]  # an unseen word stays itself: no n-gram id
        known: Counter = Counter()
        unknown: Counter = Counter()
        for k in range(1, _N + 1):
            for i in range(len(word_ids) - k + 1):
                gram = tuple(word_ids[i : i + k])
                gram_id = self._grams.get(gram)
                if gram_id is None and orders is not None:
                    gram_id = self._grams[gram] = len(orders)
                    orders.append(k - 1)
                if gram_id is None:
                    unknown[gram] += 1
                else:
                    known[gram_id] += 1
        ids = np.array(sorted(known), dtype=np.int64)
        return ids, np.array([known[i] for i in ids.tolist()], dtype=np.float64), unknown

    def _vector(self, ids: np.ndarray, counts: np.ndarray, unknown: Counter) -> _Vector:
        """The tf-idf vector of a counted sentence: weights of its known n-grams, norm per n, length in bigrams."""
        weights = counts * self._idf[ids]
        orders = self._order[ids]
        squares = np.bincount(orders, weights * weights, minlength=_N).astype(np.float64)
        length = int(counts[orders == 1].sum())  # pycocoevalcap measures length in bigrams; kept so scores match
        for gram, count in unknown.items():  # document frequency 0: idf is log(images)
            squares[len(gram) - 1] += (count * self.log_images) ** 2
            length += count if len(gram) == 2 else 0
        return ids, weights, np.sqrt(squares), length

    def score(self, image: int, caption: str) -> float:
        """CIDEr-D of one caption (space-separated words) for image index `image`."""
        refs = self.references[image]
        if not refs:
            return 0.0
        ids, weights, norms, length = self._vector(*self._count(caption.split()))
        total = 0.0
        for ref_ids, ref_weights, ref_norms, ref_length in refs:
            _, mine, theirs = np.intersect1d(ids, ref_ids, assume_unique=True, return_indices=True)
            clipped = np.minimum(weights[mine], ref_weights[theirs]) * ref_weights[theirs]
            dots = np.bincount(self._order[ids[mine]], clipped, minlength=_N).astype(np.float64)
            both = (norms != 0) & (ref_norms != 0)
            dots[both] /= norms[both] * ref_norms[both]
            total += float(dots.sum()) * math.exp(-((length - ref_length) ** 2) / (2 * _SIGMA**2))
        return total / _N / len(refs) * 10.0

    def scores(self, images: Sequence[int], captions: Sequence[str]) -> np.ndarray:
        """CIDEr-D of captions[j] for image index images[j], as float32."""
        return np.array([self.score(i, c) for i, c in zip(images, captions)], dtype=np.float32)
