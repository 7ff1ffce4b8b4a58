"""Each decoder builds, trains a step, round-trips through .keras with safe_mode, and its step graph matches."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from captioner.model import (  # noqa: E402
    DecoderSpec,
    build_decoder,
    decoder_input_shape,
    load_decoder,
    masked_loss,
    step_models,
)

FEATURES = {"merge": (20,), "inject": (2, 2, 20), "attention": (2, 3, 20)}


def batch(spec: DecoderSpec, n: int = 6, length: int = 7, seed: int = 0):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(n, *decoder_input_shape(spec.kind, spec.feature_shape))).astype("float32")
    tokens = rng.integers(4, spec.vocab_size, size=(n, length)).astype("int32")
    tokens[:, 0] = 2
    tokens[0, 4:] = 0  # a shorter caption: padding must not count in the loss
    return image, tokens


@pytest.mark.parametrize("kind", ["merge", "inject", "attention"])
def test_decoder_trains_saves_and_loads_safely(kind, tmp_path):
    spec = DecoderSpec(kind, vocab_size=30, feature_shape=FEATURES[kind], embedding_dim=8, units=16, dropout=0.2)
    model = build_decoder(spec)
    model.compile(keras.optimizers.Adam(1e-2), loss=masked_loss)
    image, tokens = batch(spec)
    before = model.predict([image, tokens[:, :-1]], verbose=0)
    loss = model.train_on_batch([image, tokens[:, :-1]], tokens[:, 1:])
    assert np.isfinite(loss)
    after = model.predict([image, tokens[:, :-1]], verbose=0)
    assert after.shape == (6, 6, 30) and not np.allclose(before, after)
    model.save(tmp_path / "m.keras")
    loaded = load_decoder(tmp_path / "m.keras")
    np.testing.assert_array_equal(loaded.predict([image, tokens[:, :-1]], verbose=0), after)

    steps = step_models(loaded)
    h, c, *context = steps.init(image)
    full = keras.ops.convert_to_numpy(keras.ops.log_softmax(loaded([image, tokens[:, :3]]), axis=-1))
    assert steps.has_attention == (kind == "attention")
    for t in range(3):
        log_p, h, c, *alpha = steps.step([keras.ops.convert_to_tensor(tokens[:, t : t + 1]), h, c, *context])
        np.testing.assert_allclose(keras.ops.convert_to_numpy(log_p), full[:, t], atol=1e-5)
        if steps.has_attention:  # one weight per grid cell, a distribution per image
            alpha = keras.ops.convert_to_numpy(alpha[0])
            assert alpha.shape == (6, 2 * 3) and (alpha >= 0).all()
            np.testing.assert_allclose(alpha.sum(axis=1), 1.0, atol=1e-5)


def test_masked_loss_ignores_padding():
    y_true = np.array([[5, 3, 0, 0]], dtype="int32")
    logits = np.zeros((1, 4, 8), dtype="float32")
    logits[0, 2:, 0] = -50.0  # garbage at padded positions must not change the loss
    assert float(masked_loss(y_true, logits)) == pytest.approx(np.log(8), rel=1e-5)


def test_unknown_decoder_and_pooled_attention_are_refused():
    with pytest.raises(ValueError, match="unknown decoder"):
        build_decoder(DecoderSpec("transformer", 10, (4,), 4, 4, 0.0))
    with pytest.raises(ValueError, match="grid"):
        decoder_input_shape("attention", (1280,))
