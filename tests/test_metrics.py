"""BLEU against hand-computed values, special-token stripping, and CIDEr-D sanity."""

import math

import pytest

from captioner.model.metrics import caption_scores, cider_d, corpus_bleu_scores, tokens

# Hand computation (corpus BLEU sums clipped n-gram matches and n-gram counts over the corpus):
#  hyp 1 "the cat sat on the mat", refs "the cat is on the mat" / "a cat sat on the mat"
#    1-grams 6/6 ("the" x2 clipped at 2 by ref 1), 2-grams 5/5, 3-grams 3/4 ("the cat sat" missing),
#    4-grams 2/3 ("cat sat on the", "sat on the mat" match; "the cat sat on" doesn't)
#  hyp 2 "a dog runs home", refs "a dog runs fast" / "the dog is running"
#    1-grams 3/4, 2-grams 2/3, 3-grams 1/2, 4-grams 0/1
#  corpus: p1 = 9/10, p2 = 7/8, p3 = 4/6, p4 = 2/4; hypothesis length 10 = closest reference length 10, BP = 1
#  BLEU-n = (p1 ... pn) ** (1/n)
REFS = [["the cat is on the mat", "a cat sat on the mat"], ["a dog runs fast", "the dog is running"]]
HYPS = ["the cat sat on the mat", "a dog runs home"]
P = [9 / 10, 7 / 8, 4 / 6, 2 / 4]


def expected(n: int, bp: float = 1.0) -> float:
    return bp * math.prod(P[:n]) ** (1 / n)


def test_bleu_matches_hand_computed_values():
    scores = corpus_bleu_scores(REFS, HYPS)
    assert scores["bleu1"] == pytest.approx(0.9)
    assert scores["bleu2"] == pytest.approx(math.sqrt(0.9 * 0.875))
    for n in (1, 2, 3, 4):
        assert scores[f"bleu{n}"] == pytest.approx(expected(n))
    assert scores["bleu4"] == pytest.approx(0.2625**0.25)


def test_special_tokens_are_stripped_from_both_sides():
    hyps = ["<start> the cat sat on the mat <end>", "<start> a dog runs home <end> <pad> <pad>"]
    refs = [["<start> the cat is on the mat <end>", "a cat sat on the mat"], ["a dog runs fast <end>", "the dog is running"]]
    assert corpus_bleu_scores(refs, hyps) == pytest.approx(corpus_bleu_scores(REFS, HYPS))
    assert tokens("<start> A Dog, runs! <unk> <end>") == ["a", "dog", "runs"]


def test_brevity_penalty_and_no_smoothing():
    # "a dog runs": 1-, 2-, 3-gram precision 1, no 4-grams -> p4 = 0 and BLEU-4 = 0 without smoothing;
    # length 3 against closest reference length 4: BP = exp(1 - 4/3)
    scores = corpus_bleu_scores([REFS[1]], ["a dog runs"])
    assert scores["bleu1"] == pytest.approx(math.exp(1 - 4 / 3))
    assert scores["bleu3"] == pytest.approx(math.exp(1 - 4 / 3))
    assert scores["bleu4"] < 1e-50  # NLTK's method0 puts sys.float_info.min for a zero precision: 0 in effect


def test_cider_rewards_the_right_caption():
    refs = [["a red circle", "the circle is red"], ["a blue square", "the square is blue"], ["a green triangle", "one green triangle"]]
    good = cider_d(refs, ["a red circle", "a blue square", "a green triangle"])
    bad = cider_d(refs, ["a blue square", "a green triangle", "a red circle"])
    assert good > bad >= 0.0
    both = caption_scores({"x": refs[0], "y": refs[1], "z": refs[2]}, {"x": "a red circle", "y": "a blue square", "z": "a green triangle"})
    assert set(both) == {"bleu1", "bleu2", "bleu3", "bleu4", "cider"}
    assert both["cider"] == pytest.approx(good)
