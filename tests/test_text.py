"""Caption cleaning rules and the vocabulary / id encoding."""

import numpy as np
import pytest

from captioner.data.corpus import tokenize
from captioner.core.errors import CaptionerError
from captioner.data.text import END_ID, MAX_LENGTH, PAD_ID, START_ID, UNK_ID, Vocabulary, clean_caption


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("A dog runs through the grass .", "a dog runs through the grass"),
        ("Two dogs, 3 cats & 1 bird!", "two dogs cats bird"),
        ("A girl in a t-shirt", "a girl in a t shirt"),
        ("The dog's ball", "the dogs ball"),
        ("  I   see   a   B   ", "i see a b"),
        ("k9 unit 2nd place", "unit place"),
        ("Café crème", "caf cr me"),
    ],
)
def test_clean_caption(raw, clean):
    assert clean_caption(raw) == clean


def test_one_letter_words_kept():
    assert clean_caption("A man and a woman").split() == ["a", "man", "and", "a", "woman"]


def test_vocabulary_reserved_ids_min_count_and_length():
    vocab = Vocabulary.build(["a dog runs", "a dog", "a cat sits here now"], min_count=2, max_length_percentile=100)
    assert vocab.tokens[:6] == ("<pad>", "<unk>", "<start>", "<end>", "a", "dog")
    assert "cat" not in vocab.tokens
    assert vocab.max_length == 5 + 2
    ids = vocab.encode(["a cat dog"])[0]
    assert list(ids) == [START_ID, 4, UNK_ID, 5, END_ID, PAD_ID, PAD_ID]
    assert vocab.decode(ids) == "a dog"


def test_encode_truncates_but_keeps_end_token():
    vocab = Vocabulary.build(["a b", "a b"], min_count=1, max_length_percentile=50)
    ids = vocab.encode(["a b a b a b"])[0]
    assert len(ids) == vocab.max_length == 4
    assert ids[0] == START_ID and ids[-1] == END_ID


def test_vocabulary_json_roundtrip():
    vocab = Vocabulary.build(["a dog runs"], min_count=1, max_length_percentile=99)
    assert Vocabulary.from_json(vocab.to_json()) == vocab


def test_tokenize_uses_train_split_only():
    captions = {"t.jpg": ["a dog runs"] * 5, "v.jpg": ["zebra zebra"] * 5, "x.jpg": ["a cat"] * 5}
    splits = {"train": ["t.jpg"], "val": ["v.jpg"], "test": ["x.jpg"]}
    vocab, arrays = tokenize(captions, splits, min_count=1, max_length_percentile=100)
    assert "zebra" not in vocab.tokens and "cat" not in vocab.tokens
    assert list(arrays["names"]) == ["t.jpg", "v.jpg", "x.jpg"]
    assert arrays["train_tokens"].shape == (5, vocab.max_length)
    assert set(arrays["val_image"]) == {1}
    assert np.all(arrays["val_tokens"][:, 1:3] == UNK_ID)


def test_only_reserved_tokens_is_a_warning(capsys):
    captions = {"t.jpg": ["a dog runs"], "v.jpg": ["a cat"], "x.jpg": ["a cat"]}
    splits = {"train": ["t.jpg"], "val": ["v.jpg"], "test": ["x.jpg"]}
    vocab, _ = tokenize(captions, splits, min_count=5, max_length_percentile=100)
    assert len(vocab) == 4
    err = capsys.readouterr().err
    assert "warning: no train word is seen tokenize.min_count=5 times: the vocabulary holds only <pad>" in err
    tokenize({**captions, "t.jpg": ["a dog runs"] * 5}, splits, min_count=5, max_length_percentile=100)
    assert "vocabulary holds only" not in capsys.readouterr().err


def test_max_length_is_capped():
    vocab = Vocabulary.build(["word " * 5000], min_count=1, max_length_percentile=100)
    assert vocab.max_length == MAX_LENGTH


@pytest.mark.parametrize(
    "change, message",
    [
        ({"max_length": 10**9}, r"'max_length' must be an integer >= 3 <= 200, got 1000000000"),
        ({"max_length": "12"}, r"'max_length' must be an integer"),
        ({"max_length": None}, r"'max_length' is empty"),
        ({"tokens": "a b"}, r"'tokens' must be a list"),
        ({"tokens": ["a", "<pad>", "<unk>", "<start>", "<end>"]}, r"'tokens' must start with <pad>, <unk>, <start>, <end>"),
        ({"tokens": ["<pad>", "<unk>", "<start>", "<end>", "dog", "dog"]}, r"'tokens' lists 'dog' twice"),
        ({"tokens": ["<pad>", "<unk>", "<start>", "<end>", 7]}, r"'tokens' must be a list of words without spaces, found 7"),
        ({"size": 99}, r"'size' is 99 but 'tokens' has 7 entries"),
    ],
)
def test_vocabulary_json_values_are_checked(change, message):
    data = {**Vocabulary.build(["a dog runs"], min_count=1, max_length_percentile=99).to_json(), **change}
    with pytest.raises(CaptionerError, match=message) as err:
        Vocabulary.from_json(data, "bundle/vocab.json")
    assert str(err.value).startswith("bundle/vocab.json: ")
