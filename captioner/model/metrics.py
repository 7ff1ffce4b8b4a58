"""Corpus BLEU-1..4 (NLTK) and CIDEr-D (pycocoevalcap, pure Python), on cleaned tokens without special tokens."""

from __future__ import annotations

import warnings
from typing import Mapping, Sequence

from captioner.data.text import RESERVED, clean_caption

_SPECIAL = frozenset(RESERVED) | {"startseq", "endseq"}


def tokens(caption: str) -> list[str]:
    """Clean a caption and drop start/end/pad/unknown markers, so both sides are scored on words only."""
    kept = " ".join(w for w in caption.split() if w not in _SPECIAL)
    return clean_caption(kept).split()


def corpus_bleu_scores(
    references: Sequence[Sequence[str]], hypotheses: Sequence[str], orders: Sequence[int] = (1, 2, 3, 4)
) -> dict[str, float]:
    """Corpus BLEU-n for each n in `orders`: uniform weights 1/n, all references per image, no smoothing (0-1 scale)."""
    from nltk.translate.bleu_score import corpus_bleu

    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} reference sets but {len(hypotheses)} hypotheses")
    refs = [[tokens(r) for r in refs] for refs in references]
    hyps = [tokens(h) for h in hypotheses]
    scores = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NLTK warns when a higher-order n-gram has no match (score 0)
        for n in orders:
            scores[f"bleu{n}"] = float(corpus_bleu(refs, hyps, weights=tuple([1.0 / n] * n)))
    return scores


def cider_d(references: Sequence[Sequence[str]], hypotheses: Sequence[str]) -> float:
    """CIDEr-D as pycocoevalcap computes it (tf-idf n-grams 1-4, length penalty, clipping; x10 as in papers)."""
    from pycocoevalcap.cider.cider import Cider

    if not hypotheses:
        return 0.0
    gts = {i: [" ".join(tokens(r)) for r in refs] for i, refs in enumerate(references)}
    res = {i: [" ".join(tokens(h))] for i, h in enumerate(hypotheses)}
    score, _ = Cider().compute_score(gts, res)
    return float(score)


def caption_scores(references: Mapping[str, Sequence[str]], predictions: Mapping[str, str]) -> dict[str, float]:
    """BLEU-1..4 and CIDEr-D for predictions keyed by image, against that image's references."""
    names = list(predictions)
    refs = [list(references[n]) for n in names]
    hyps = [predictions[n] for n in names]
    return {**corpus_bleu_scores(refs, hyps), "cider": cider_d(refs, hyps)}
