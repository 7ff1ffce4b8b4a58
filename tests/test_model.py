"""Each decoder builds, trains a step, round-trips through .keras with safe_mode, and its step graph matches."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from captioner.data.text import END_ID  # noqa: E402
from captioner.model.decoders import (  # noqa: E402
    PACK_ROWS,
    DecoderSpec,
    build_decoder,
    decoder_input_shape,
    load_decoder,
    caption_loss,
    packed_rows,
    step_models,
)

FEATURES = {"merge": (20,), "inject": (2, 2, 20), "attention": (2, 3, 20)}


def batch(spec: DecoderSpec, n: int = 6, length: int = 7, seed: int = 0):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(n, *decoder_input_shape(spec.kind, spec.feature_shape))).astype("float32")
    tokens = rng.integers(4, spec.vocab_size, size=(n, length)).astype("int32")
    tokens[:, 0] = 2
    tokens[0, 4], tokens[0, 5:] = END_ID, 0  # a shorter caption: its padding must not count
    return image, tokens


@pytest.mark.parametrize("kind", ["merge", "inject", "attention"])
def test_decoder_trains_saves_and_loads_safely(kind, tmp_path):
    spec = DecoderSpec(kind, vocab_size=30, feature_shape=FEATURES[kind], embedding_dim=8, units=16, dropout=0.2)
    model = build_decoder(spec)
    model.compile(keras.optimizers.Adam(1e-2), loss=caption_loss())
    image, tokens = batch(spec)
    before = model.predict([image, tokens[:, :-1]], verbose=0)
    loss = model.train_on_batch([image, tokens[:, :-1]], tokens[:, 1:])
    assert np.isfinite(loss)
    after = model.predict([image, tokens[:, :-1]], verbose=0)
    real = (tokens[:, 1:] != 0).sum()
    assert real == 4 + 5 * 6 and after.shape == (packed_rows(real), 30) == (PACK_ROWS, 30)  # real targets, padded
    assert not np.allclose(before[:real], after[:real])
    np.testing.assert_array_equal(after[real:], np.repeat(after[:1], len(after) - real, axis=0))  # copies of row 0
    model.save(tmp_path / "m.keras")
    loaded = load_decoder(tmp_path / "m.keras")
    np.testing.assert_array_equal(loaded.predict([image, tokens[:, :-1]], verbose=0), after)

    steps = step_models(loaded)
    h, c, *context = steps.init(image)
    full = keras.ops.convert_to_numpy(keras.ops.log_softmax(loaded([image, tokens[:, :3]]), axis=-1))[:18].reshape(6, 3, -1)
    assert steps.has_attention == (kind == "attention")
    for t in range(3):
        log_p, h, c, *alpha = steps.step([keras.ops.convert_to_tensor(tokens[:, t : t + 1]), h, c, *context])
        np.testing.assert_allclose(keras.ops.convert_to_numpy(log_p), full[:, t], atol=1e-5)
        if steps.has_attention:  # one weight per grid cell, a distribution per image
            alpha = keras.ops.convert_to_numpy(alpha[0])
            assert alpha.shape == (6, 2 * 3) and (alpha >= 0).all()
            np.testing.assert_allclose(alpha.sum(axis=1), 1.0, atol=1e-5)


def test_caption_loss_pairs_packed_logits_with_the_real_targets():
    y_true = np.array([[5, 3, 0, 0], [7, 0, 0, 0]], dtype="int32")  # 3 real targets, row-major: 5, 3, 7
    logits = np.zeros((3, 8), dtype="float32")
    assert float(caption_loss()(y_true, logits)) == pytest.approx(np.log(8), rel=1e-5)
    logits[[0, 1, 2], [5, 3, 7]] = 50.0  # certain of each real target in packed order: loss ~ 0
    assert float(caption_loss()(y_true, logits)) < 1e-6
    padded = np.concatenate([logits, np.full((5, 8), -50.0, dtype="float32")])  # packing padding: ignored
    padded[3:, 0] = 50.0
    assert float(caption_loss()(y_true, padded)) < 1e-6
    padded[0] = 0.0  # one of three real rows uncertain: the mean is over the 3 real rows, not all 8
    assert float(caption_loss()(y_true, padded)) == pytest.approx(np.log(8) / 3, rel=1e-4)


def test_packed_rows_come_in_few_shapes():
    assert [packed_rows(n) for n in (0, 1, PACK_ROWS, PACK_ROWS + 1)] == [0, PACK_ROWS, PACK_ROWS, 2 * PACK_ROWS]


def attention_spec() -> DecoderSpec:
    return DecoderSpec("attention", vocab_size=30, feature_shape=(2, 3, 16), embedding_dim=8, units=16, dropout=0.0,
                       heads=4)


def test_attention_logits_skip_padded_positions_and_ignore_them():
    model = build_decoder(attention_spec())
    image, tokens = batch(attention_spec(), n=4, length=6)
    padded = np.concatenate([tokens, np.zeros((4, 9), dtype="int32")], axis=1)  # 9 more pad positions
    short = keras.ops.convert_to_numpy(model([image, tokens]))
    long = keras.ops.convert_to_numpy(model([image, padded]))
    assert len(short) == packed_rows(4 + 3 * 6)  # row 0 ends after 4 real targets; pads and <end> predict nothing
    np.testing.assert_allclose(long, short, atol=1e-5)


def test_k_captions_per_image_equal_repeated_images():
    model = build_decoder(attention_spec())
    image, tokens = batch(attention_spec(), n=2)
    tokens = np.concatenate([tokens, tokens[::-1], tokens], axis=0)  # 6 captions: 3 per image, rows grouped
    grouped = model([image, tokens.reshape(2, 3, -1).reshape(6, -1)])
    repeated = model([np.repeat(image, 3, axis=0), tokens])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(grouped), keras.ops.convert_to_numpy(repeated), atol=1e-5)


def test_bfloat16_model_computes_close_to_float32_and_returns_float32_logits():
    exact = build_decoder(attention_spec())
    mixed = build_decoder(attention_spec(), "mixed_bfloat16")
    mixed.set_weights(exact.get_weights())
    image, tokens = batch(attention_spec())
    a = keras.ops.convert_to_numpy(exact([image, tokens]))
    b = mixed([image, tokens])
    assert b.dtype == "float32" and all(w.dtype == "float32" for w in mixed.weights)
    b = keras.ops.convert_to_numpy(b)
    assert not np.array_equal(a, b) and np.abs(a - b).max() < 0.1 * np.abs(a).max()
    mixed.compile(keras.optimizers.Adam(1e-2), loss=caption_loss())
    assert np.isfinite(mixed.train_on_batch([image, tokens[:, :-1]], tokens[:, 1:]))


def test_unknown_decoder_and_pooled_attention_are_refused():
    with pytest.raises(ValueError, match="unknown decoder"):
        build_decoder(DecoderSpec("transformer", 10, (4,), 4, 4, 0.0))
    with pytest.raises(ValueError, match="grid"):
        decoder_input_shape("attention", (1280,))
