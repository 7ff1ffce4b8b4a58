"""FusedLSTM computes Keras' LSTM exactly (outputs and every gradient), with and without a per-row constant input."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from captioner.lstm import FusedLSTM  # noqa: E402

N, T, D, G, U = 5, 6, 7, 3, 4


def tensors(seed: int = 0):
    rng = np.random.default_rng(seed)
    return [tf.constant(rng.normal(size=shape).astype("float32")) for shape in ((N, T, D), (N, G), (N, U), (N, U))]


def loss_and_grads(layer, call, watched, weights):
    """Outputs and the gradients of a loss that weighs the sequence and both final states, so each grad path counts."""
    with tf.GradientTape() as tape:
        tape.watch(watched)
        seq, h, c = call()
        loss = tf.reduce_sum(seq * weights[0]) + tf.reduce_sum(h * weights[1]) + tf.reduce_sum(c * weights[2])
    return [seq, h, c], tape.gradient(loss, watched + layer.trainable_weights)


def assert_all_close(left, right, atol):
    assert len(left) == len(right)
    for a, b in zip(left, right):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=1e-5)


def loss_weights(seed: int = 1):
    rng = np.random.default_rng(seed)
    return [tf.constant(rng.normal(size=s).astype("float32")) for s in ((N, T, U), (N, U), (N, U))]


def test_matches_keras_lstm_outputs_and_gradients():
    x, _, h0, c0 = tensors()
    reference = keras.layers.LSTM(U, return_sequences=True, return_state=True)
    reference(x, initial_state=[h0, c0])
    fused = FusedLSTM(U)
    fused(x, initial_state=[h0, c0])
    assert [w.shape for w in fused.get_weights()] == [w.shape for w in reference.get_weights()]
    fused.set_weights(reference.get_weights())
    weights = loss_weights()
    out_ref, grad_ref = loss_and_grads(reference, lambda: reference(x, initial_state=[h0, c0]), [x, h0, c0], weights)
    out, grad = loss_and_grads(fused, lambda: fused(x, initial_state=[h0, c0]), [x, h0, c0], weights)
    assert_all_close(out, out_ref, 1e-6)
    assert_all_close(grad, grad_ref, 1e-5)


def test_a_constant_input_equals_concatenating_it_to_every_word():
    x, constant, h0, c0 = tensors()
    joined = lambda: tf.concat([x, tf.repeat(constant[:, None], T, axis=1)], axis=-1)  # noqa: E731
    reference = keras.layers.LSTM(U, return_sequences=True, return_state=True)
    reference(joined(), initial_state=[h0, c0])
    fused = FusedLSTM(U)
    fused(x, initial_state=[h0, c0], constant=constant)
    fused.set_weights(reference.get_weights())
    weights = loss_weights()
    watched = [x, constant, h0, c0]
    out_ref, grad_ref = loss_and_grads(reference, lambda: reference(joined(), initial_state=[h0, c0]), watched, weights)
    out, grad = loss_and_grads(fused, lambda: fused(x, initial_state=[h0, c0], constant=constant), watched, weights)
    assert_all_close(out, out_ref, 1e-6)
    assert_all_close(grad, grad_ref, 1e-5)
    one_ref = reference(joined()[:, :1], initial_state=[h0, c0])  # a decoding step: no loop, same numbers
    assert_all_close(fused(x[:, :1], initial_state=[h0, c0], constant=constant), one_ref, 1e-6)


def test_a_compiled_step_takes_any_length_and_bfloat16_stays_close():
    x, constant, h0, c0 = tensors()
    exact = FusedLSTM(U)
    exact(x, initial_state=[h0, c0], constant=constant)
    mixed = FusedLSTM(U, dtype="mixed_bfloat16")
    mixed(x, initial_state=[h0, c0], constant=constant)
    mixed.set_weights(exact.get_weights())

    @tf.function(input_signature=[tf.TensorSpec((None, None, D))])
    def sequence_and_kernel_grad(words):
        with tf.GradientTape() as tape:
            seq, _, _ = mixed(words, initial_state=[h0, c0], constant=constant)
            loss = tf.reduce_sum(tf.cast(seq, tf.float32))
        return tf.cast(seq, tf.float32), tape.gradient(loss, mixed.kernel)

    for length in (T, 2):
        seq, grad = sequence_and_kernel_grad(x[:, :length])
        assert seq.shape == (N, length, U) and grad.shape == (D + G, 4 * U)
        expected, _, _ = exact(x[:, :length], initial_state=[h0, c0], constant=constant)
        np.testing.assert_allclose(seq.numpy(), expected.numpy(), atol=0.05)
