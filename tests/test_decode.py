"""Greedy and beam search: beam 1 == greedy, no pad/start/unk ever, stop at <end>, batching changes nothing."""

import numpy as np
import pytest

pytest.importorskip("keras")

from captioner.model.decode import CaptionDecoder  # noqa: E402
from captioner.model.decoders import DecoderSpec, build_decoder  # noqa: E402
from captioner.data.text import END_ID, PAD_ID, START_ID, UNK_ID  # noqa: E402

VOCAB = 24


def make(kind: str, seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    shape = (3, 3, 12) if kind == "attention" else (12,)
    model = build_decoder(DecoderSpec(kind, VOCAB, shape, 8, 16, 0.0))
    # larger random output weights so the model has definite, varied preferences
    logits = model.get_layer("logits")
    kernel, bias = logits.get_weights()
    rng = np.random.default_rng(seed)
    logits.set_weights([kernel * 8, rng.normal(scale=2.0, size=bias.shape).astype("float32")])
    images = rng.normal(size=(9, *shape)).astype("float32")
    return model, images


def set_bias(model, ids, value):
    logits = model.get_layer("logits")
    kernel, bias = logits.get_weights()
    bias[list(ids)] = value
    logits.set_weights([kernel, bias])


@pytest.mark.parametrize("kind", ["merge", "inject", "attention"])
def test_beam_one_equals_greedy(kind):
    model, images = make(kind)
    dec = CaptionDecoder(model, max_length=8)
    greedy = dec.greedy(images)
    assert dec.beam(images, 1) == greedy
    assert any(greedy)


def test_never_emits_pad_start_or_unk():
    model, images = make("merge")
    set_bias(model, [PAD_ID, START_ID, UNK_ID], 50.0)  # the model would love to say them
    dec = CaptionDecoder(model, max_length=8)
    for seqs in (dec.greedy(images), dec.beam(images, 3)):
        for seq in seqs:
            assert not {PAD_ID, START_ID, UNK_ID, END_ID} & set(seq)
            assert len(seq) <= 7


def test_stops_at_end():
    model, images = make("merge")
    set_bias(model, [END_ID], 50.0)
    dec = CaptionDecoder(model, max_length=8)
    assert dec.greedy(images) == [[]] * len(images)
    assert dec.beam(images, 3) == [[]] * len(images)


@pytest.mark.parametrize("kind", ["merge", "attention"])
def test_batched_equals_one_image_at_a_time(kind):
    model, images = make(kind, seed=3)
    batched = CaptionDecoder(model, max_length=8).beam(images, 3)
    single = CaptionDecoder(model, max_length=8, chunk_images=1)
    assert [single.beam(images[i : i + 1], 3)[0] for i in range(len(images))] == batched
    assert single.beam(images, 3) == batched


def test_beam_finds_at_least_as_likely_captions_as_greedy():
    model, images = make("inject", seed=5)
    dec = CaptionDecoder(model, max_length=8)

    def score(image, seq):
        total = 0.0
        h, c, *context = (t.numpy() for t in dec.models.init(image[None]))
        prev = START_ID
        for token in [*seq, END_ID]:
            log_p, h, c = dec.step(np.array([prev]), h, c, context)
            total += log_p[0, token]
            prev = token
        return total / (len(seq) + 1)

    greedy, beam = dec.greedy(images), dec.beam(images, 4)
    better = sum(score(img, b) >= score(img, g) - 1e-5 for img, g, b in zip(images, greedy, beam))
    assert better >= len(images) - 1


def sequence_log_prob(dec, image, seq):
    """Summed log p of `seq` then <end> for one image, word by word through the step model."""
    h, c, *context = (t.numpy() for t in dec.models.init(image[None]))
    total, prev = 0.0, START_ID
    for token in [*seq, END_ID]:
        log_p, h, c = dec.step(np.array([prev]), h, c, context)
        total += float(log_p[0, token])
        prev = token
    return total


@pytest.mark.parametrize("kind", ["merge", "attention"])
def test_beam_search_reports_every_beam_with_its_log_prob(kind):
    model, images = make(kind, seed=2)
    dec = CaptionDecoder(model, max_length=8, attention=True)
    found = dec.beam_search(images, 3)
    assert [f.ids[0] for f in found] == CaptionDecoder(model, max_length=8).beam(images, 3)
    for image, beams in zip(images, found):
        assert len(beams.ids) == len(beams.log_probs) == 3
        assert len({tuple(ids) for ids in beams.ids}) == 3  # distinct captions
        for ids, log_prob in zip(beams.ids, beams.log_probs):
            if len(ids) < 7:  # a beam cut at max length has no <end> in its score
                assert log_prob == pytest.approx(sequence_log_prob(dec, image, ids), abs=1e-3)
        if kind == "merge":
            assert beams.attention is None
        else:  # one distribution over the 3x3 grid per word
            for ids, maps in zip(beams.ids, beams.attention):
                assert maps.shape == (len(ids), 9)
                np.testing.assert_allclose(maps.sum(axis=1), 1.0, atol=1e-5)


def test_beams_carry_the_length_normalised_score_they_are_ranked_by():
    model, images = make("merge", seed=2)
    for beams in CaptionDecoder(model, max_length=8).beam_search(images, 4, length_alpha=0.7):
        assert beams.scores == sorted(beams.scores, reverse=True)
        for ids, log_prob, score in zip(beams.ids, beams.log_probs, beams.scores):
            length = len(ids) + 1 if len(ids) < 7 else len(ids)  # <end> counts; a beam cut at max length has none
            assert score == pytest.approx(log_prob / length**0.7, rel=1e-5)


def test_attention_maps_follow_the_image():
    model, images = make("attention", seed=4)
    found = CaptionDecoder(model, max_length=8, attention=True).beam_search(images[:2], 1)
    assert found[0].ids[0] and found[1].ids[0]
    assert not np.allclose(found[0].attention[0][0], found[1].attention[0][0])
    assert CaptionDecoder(model, max_length=8).beam_search(images[:1], 1)[0].attention is None


def test_top_k_is_a_stable_argsorts_head():
    from captioner.model.decode import _top_k

    rng = np.random.default_rng(0)
    values = rng.integers(0, 6, size=(50, 40)).astype(np.float32)  # many ties
    for k in (1, 3, 40):
        np.testing.assert_array_equal(_top_k(values, k), np.argsort(-values, axis=1, kind="stable")[:, :k])
