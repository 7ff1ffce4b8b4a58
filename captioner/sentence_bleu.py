"""Smoothed sentence BLEU-4 per caption against its image's references: a self-critical reward term.

The reported BLEU is a corpus score (captioner.metrics), which says nothing about one sampled caption.
This is its per-sentence form: clipped 1-4-gram precisions, the 2-4-gram ones smoothed by adding one
to both counts (Lin & Och 2004; NLTK's SmoothingFunction().method2, which tests compare against), and
the brevity penalty against the closest reference length, so a sample's reward moves with what corpus
BLEU-4 counts. References are counted per call, for the images of one batch only: nothing is held
per training image.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import numpy as np

_N = 4


def _grams(words: Sequence[str]) -> Counter:
    """Counts of every 1..4-gram of a sentence (tuples of words)."""
    return Counter(tuple(words[i : i + n]) for n in range(1, _N + 1) for i in range(len(words) - n + 1))


def _reference_side(references: Sequence[str]) -> tuple[Counter, list[int]]:
    """The most times each n-gram occurs in any one reference (the clip), and the reference lengths."""
    clip: Counter = Counter()
    lengths = []
    for reference in references:
        words = reference.split()
        lengths.append(len(words))
        clip |= _grams(words)  # | keeps the larger count of each n-gram
    return clip, lengths


def sentence_bleu4(words: Sequence[str], clip: Counter, lengths: Sequence[int]) -> float:
    """Smoothed BLEU-4 of one tokenised caption given its references' clip counts and lengths."""
    length = len(words)
    if length == 0 or not lengths:
        return 0.0
    matched = [0] * _N
    for gram, count in _grams(words).items():
        matched[len(gram) - 1] += min(count, clip.get(gram, 0))
    if matched[0] == 0:
        return 0.0
    log_precision = math.log(matched[0] / length)
    for n in range(2, _N + 1):
        log_precision += math.log((matched[n - 1] + 1) / (max(length - n + 1, 1) + 1))
    closest = min(lengths, key=lambda ref: (abs(ref - length), ref))
    brevity = 0.0 if length >= closest else 1.0 - closest / length
    return math.exp(brevity + log_precision / _N)


class SentenceBleu:
    """Smoothed BLEU-4 of captions for image i against references[i] (cleaned, space-separated text)."""

    def __init__(self, references: Sequence[Sequence[str]]):
        self.references = references

    def scores(self, indices: Sequence[int], captions: Sequence[str]) -> np.ndarray:
        """BLEU-4 of captions[j] against references[indices[j]], as float64 (0 to 1)."""
        sides: dict[int, tuple[Counter, list[int]]] = {}
        out = np.empty(len(captions), dtype=np.float64)
        for j, (index, caption) in enumerate(zip(indices, captions)):
            index = int(index)
            if index not in sides:
                sides[index] = _reference_side(self.references[index])
            out[j] = sentence_bleu4(caption.split(), *sides[index])
        return out
