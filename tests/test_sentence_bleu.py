"""Sentence BLEU-4, the self-critical reward term, agrees with NLTK's smoothed sentence BLEU."""

import random

import numpy as np
import pytest
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

from captioner.sentence_bleu import SentenceBleu

WORDS = "a dog runs through the grass man in red shirt on bike two".split()


def test_scores_match_nltk_method2_on_random_captions():
    rng = random.Random(0)
    references = [[" ".join(rng.choices(WORDS, k=rng.randint(3, 12))) for _ in range(5)] for _ in range(40)]
    indices = [rng.randrange(40) for _ in range(300)]
    captions = [" ".join(rng.choices(WORDS, k=rng.randint(1, 14))) for _ in range(300)]
    ours = SentenceBleu(references).scores(indices, captions)
    smoothing = SmoothingFunction().method2
    nltk = [sentence_bleu([r.split() for r in references[i]], c.split(), smoothing_function=smoothing)
            for i, c in zip(indices, captions)]
    assert ours == pytest.approx(nltk, abs=1e-12)
    assert 0.05 < ours.mean() < 0.9 and (ours > 0).mean() > 0.9  # the draw exercises real, non-zero scores


def test_exact_reference_scores_one_and_unrelated_or_empty_scores_zero():
    references = [["a dog runs through the grass", "a brown dog plays outside"]]
    bleu = SentenceBleu(references)
    assert bleu.scores([0, 0, 0], ["a dog runs through the grass", "two cats sleep", ""]) == pytest.approx([1, 0, 0])


def test_shorter_captions_pay_the_brevity_penalty():
    bleu = SentenceBleu([["a dog runs through the tall green grass"]])
    full, short = bleu.scores([0, 0], ["a dog runs through the tall green grass", "a dog runs through the"])
    assert full == pytest.approx(1.0) and short == pytest.approx(np.exp(1 - 8 / 5))  # all n-grams match
