"""CIDEr-D per caption against a fixed reference corpus: the reward of self-critical training.

The arithmetic is pycocoevalcap's CiderScorer (tf-idf n-grams 1-4, clipped hypothesis weights, Gaussian
length penalty with sigma 6, x10), but document frequencies come once from the whole reference corpus and
every reference vector is computed once, so scoring thousands of sampled captions per batch stays cheap.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import numpy as np

_N = 4
_SIGMA = 6.0

_Vector = tuple[list[dict[tuple[str, ...], float]], list[float], int]


def ngram_counts(words: Sequence[str], n: int = _N) -> Counter:
    """Counts of every 1..n-gram of a tokenised sentence."""
    counts: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i : i + k])] += 1
    return counts


class CiderD:
    """CIDEr-D of captions for image i against references[i], idf taken from all of `references`."""

    def __init__(self, references: Sequence[Sequence[str]]):
        cooked = [[ngram_counts(ref.split()) for ref in refs] for refs in references]
        self.document_frequency: Counter = Counter()
        for refs in cooked:
            self.document_frequency.update({g for ref in refs for g in ref})
        self.log_images = math.log(float(max(len(cooked), 1)))
        self.references = [[self._vector(ref) for ref in refs] for refs in cooked]

    def _vector(self, counts: Counter) -> _Vector:
        vec: list[dict[tuple[str, ...], float]] = [{} for _ in range(_N)]
        norm = [0.0] * _N
        length = 0
        for gram, tf in counts.items():
            n = len(gram) - 1
            weight = float(tf) * (self.log_images - math.log(max(1.0, self.document_frequency.get(gram, 0.0))))
            vec[n][gram] = weight
            norm[n] += weight * weight
            if n == 1:  # pycocoevalcap measures length in bigrams; kept so the scores match it
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    def score(self, image: int, caption: str) -> float:
        """CIDEr-D of one caption (space-separated words) for image index `image`."""
        refs = self.references[image]
        if not refs:
            return 0.0
        vec, norm, length = self._vector(ngram_counts(caption.split()))
        total = 0.0
        for ref_vec, ref_norm, ref_length in refs:
            penalty = math.exp(-((length - ref_length) ** 2) / (2 * _SIGMA**2))
            for n in range(_N):
                dot = sum(min(w, ref_vec[n].get(g, 0.0)) * ref_vec[n].get(g, 0.0) for g, w in vec[n].items())
                if norm[n] and ref_norm[n]:
                    dot /= norm[n] * ref_norm[n]
                total += dot * penalty
        return total / _N / len(refs) * 10.0

    def scores(self, images: Sequence[int], captions: Sequence[str]) -> np.ndarray:
        """CIDEr-D of captions[j] for image index images[j], as float32."""
        return np.array([self.score(i, c) for i, c in zip(images, captions)], dtype=np.float32)
