"""Caption cleaning, the vocabulary built from train captions, and encoding to / decoding from token ids."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from captioner.core.errors import CaptionerError
from captioner.core.schema import Field, check

PAD, UNK, START, END = "<pad>", "<unk>", "<start>", "<end>"
PAD_ID, UNK_ID, START_ID, END_ID = 0, 1, 2, 3
RESERVED = (PAD, UNK, START, END)
MAX_LENGTH = 200  # longest padded sequence (<start> + words + <end>) a vocabulary or a bundle may ask for

_MAX_LENGTH_FIELD = Field("int", low=len(RESERVED) - 1, high=MAX_LENGTH)
_TOKENS_FIELD = Field("list")

MIRRORED_WORDS = {"left": "right", "right": "left"}  # what a caption of an image says of its mirror image

_DIGIT = re.compile(r"\d")
_NON_LETTER = re.compile(r"[^a-z]+")


def clean_caption(caption: str) -> str:
    """Lowercase, drop tokens with digits, strip punctuation, collapse whitespace; one-letter words stay."""
    words = []
    for token in caption.lower().split():
        if _DIGIT.search(token):
            continue
        words.extend(_NON_LETTER.sub(" ", token.replace("'", "")).split())
    return " ".join(words)


@dataclass(frozen=True)
class Vocabulary:
    """Token list whose index is the token id; ids 0-3 are <pad>, <unk>, <start>, <end>."""

    tokens: tuple[str, ...]
    max_length: int

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int, max_length_percentile: float) -> "Vocabulary":
        """Keep words seen at least `min_count` times; cap length at a percentile of caption lengths."""
        counts: Counter[str] = Counter()
        lengths = []
        for caption in captions:
            words = caption.split()
            counts.update(words)
            lengths.append(len(words))
        if not lengths:
            raise ValueError("no captions to build a vocabulary from")
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        cap = math.ceil(float(np.percentile(lengths, max_length_percentile)))
        return cls(tokens=RESERVED + tuple(words), max_length=min(max(cap, 1) + 2, MAX_LENGTH))

    @classmethod
    def from_json(cls, data: Any, where: str = "vocab.json") -> "Vocabulary":
        """Rebuild from the dict that `to_json` wrote (vocab.json), checking every value; errors name `where`."""
        if not isinstance(data, dict):
            raise CaptionerError(f"{where}: expected a JSON object")
        tokens = check(where, "tokens", data.get("tokens"), _TOKENS_FIELD)
        max_length = check(where, "max_length", data.get("max_length"), _MAX_LENGTH_FIELD)
        bad = next((t for t in tokens if not isinstance(t, str) or not t or t != t.strip() or " " in t), None)
        if bad is not None or len(tokens) == 0:
            raise CaptionerError(f"{where}: 'tokens' must be a list of words without spaces, found {bad!r}")
        if tuple(tokens[: len(RESERVED)]) != RESERVED:
            raise CaptionerError(f"{where}: 'tokens' must start with {', '.join(RESERVED)}")
        if len(set(tokens)) != len(tokens):
            repeated = next(t for t in tokens if tokens.count(t) > 1)
            raise CaptionerError(f"{where}: 'tokens' lists {repeated!r} twice")
        if "size" in data and data["size"] != len(tokens):
            raise CaptionerError(f"{where}: 'size' is {data['size']!r} but 'tokens' has {len(tokens)} entries")
        return cls(tokens=tuple(tokens), max_length=max_length)

    def to_json(self) -> dict:
        """A JSON-ready dict: the token list (index = id) and the padded sequence length."""
        return {"size": len(self.tokens), "max_length": self.max_length, "tokens": list(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def index(self) -> dict[str, int]:
        """Token -> id."""
        return {token: i for i, token in enumerate(self.tokens)}

    def encode(self, captions: Sequence[str]) -> np.ndarray:
        """Cleaned captions -> (n, max_length) int32 ids: <start> words <end>, padded with 0, truncated words."""
        index = self.index
        out = np.full((len(captions), self.max_length), PAD_ID, dtype=np.int32)
        for row, caption in enumerate(captions):
            ids = [index.get(w, UNK_ID) for w in caption.split()][: self.max_length - 2]
            seq = [START_ID, *ids, END_ID]
            out[row, : len(seq)] = seq
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Token ids -> words, stopping at <end> and leaving out pad, start and unknown tokens."""
        words = []
        for i in ids:
            i = int(i)
            if i == END_ID:
                break
            if i in (PAD_ID, START_ID, UNK_ID) or i >= len(self.tokens):
                continue
            words.append(self.tokens[i])
        return " ".join(words)


def mirror_caption(caption: str) -> str:
    """The caption of the image mirrored left-right: `left` and `right` swapped, every other word kept."""
    return " ".join(MIRRORED_WORDS.get(word, word) for word in caption.split())


def mirror_ids(vocab: Vocabulary) -> np.ndarray:
    """Token id -> its id in the mirrored caption (`table[ids]`): `left` and `right` swapped, the rest kept.

    A word whose mirror word is not in the vocabulary becomes <unk>, as tokenizing the mirrored caption gives.
    """
    index = vocab.index
    return np.array([index.get(MIRRORED_WORDS.get(token, token), UNK_ID) for token in vocab.tokens], dtype=np.int32)
