"""An LSTM layer whose training loop does only the recurrent work, for fast CPU training.

Keras' LSTM differentiates through its time loop, so every word of the backward pass runs four small
matrix products (160 rows) and casts and accumulates both kernels' gradients (`benchmarks/trace_step.py`:
55% of a training step). `FusedLSTM` computes the same function (Keras' LSTM with its default settings:
gates i, f, c, o, sigmoid and tanh, the same weight shapes) but projects the inputs of all words in one
product before the loop, and backpropagates through time by hand: one product per word (the recurrent
one), then the kernels' gradients in one product each over all words. Written with TensorFlow ops
(`tf.custom_gradient`, `tf.scan`), as is the rest of the training path.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

_PACKAGE = "captioner"


def _forget_bias(units: int):
    """Keras' `unit_forget_bias` initialisation: 1 for the forget gate, 0 elsewhere."""

    def initializer(shape, dtype=None):
        return keras.ops.convert_to_tensor(np.concatenate([np.zeros(units), np.ones(units), np.zeros(2 * units)]),
                                           dtype=dtype)

    return initializer


def _gates(z, c):
    """Pre-activations (N, 4U) and cell state (N, U) -> (activated gates [i, f, g, o] (N, 4U), new c, tanh(new c))."""
    import tensorflow as tf

    zi, zf, zg, zo = tf.split(z, 4, axis=-1)
    i, f, g, o = tf.sigmoid(zi), tf.sigmoid(zf), tf.tanh(zg), tf.sigmoid(zo)
    c = f * c + i * g
    tanh_c = tf.tanh(c)
    return tf.concat([i, f, g, o], axis=-1), c, tanh_c


def _sequence(x, h0, c0, kernel, recurrent_kernel, bias):
    """The LSTM over x (N, T, D) from (h0, c0) with a hand-written backward pass: (outputs (N, T, U), h, c).

    `bias` is (4U,) or (N, 4U): a per-row bias carries the projection of inputs that stay the same at every
    word (its gradient is the per-row sum over the words).
    """
    import tensorflow as tf

    @tf.custom_gradient
    def run(x, h0, c0, kernel, recurrent_kernel, bias):
        n, t, d = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
        x_seq = tf.reshape(tf.transpose(x, (1, 0, 2)), (t * n, d))  # time-major rows
        z_in = tf.reshape(tf.matmul(x_seq, kernel), (t, n, -1)) + bias

        def forward(state, z_t):
            h, c, _, _ = state
            gates, c, tanh_c = _gates(z_t + tf.matmul(h, recurrent_kernel), c)
            return gates[..., -h.shape[-1]:] * tanh_c, c, gates, tanh_c

        empty = tf.zeros_like(z_in[0])
        hs, cs, gates, tanh_cs = tf.scan(forward, z_in, initializer=(h0, c0, empty, tf.zeros_like(c0)))
        outputs = tf.transpose(hs, (1, 0, 2))

        def grad(d_outputs, d_h, d_c):
            units = h0.shape[-1]
            d_hs = tf.transpose(d_outputs, (1, 0, 2)) if d_outputs is not None else tf.zeros_like(hs)
            d_hs = tf.tensor_scatter_nd_add(d_hs, [[t - 1]], [d_h]) if d_h is not None else d_hs
            c_prev = tf.concat([c0[None], cs[:-1]], axis=0)

            def backward(state, step):
                d_h_next, d_c_next, _ = state
                d_h_t, gates_t, tanh_c_t, c_prev_t = step
                i, f, g, o = tf.split(gates_t, 4, axis=-1)
                d_h = d_h_t + d_h_next
                d_c = d_c_next + d_h * o * (1 - tanh_c_t * tanh_c_t)
                d_z = tf.concat(
                    [d_c * g * i * (1 - i), d_c * c_prev_t * f * (1 - f), d_c * i * (1 - g * g),
                     d_h * tanh_c_t * o * (1 - o)],
                    axis=-1,
                )
                return tf.matmul(d_z, recurrent_kernel, transpose_b=True), d_c * f, d_z

            d_c_last = d_c if d_c is not None else tf.zeros_like(c0)
            d_h_steps, d_c_steps, d_z = tf.scan(
                backward, (d_hs, gates, tanh_cs, c_prev), initializer=(tf.zeros_like(h0), d_c_last, empty),
                reverse=True,
            )
            d_z_rows = tf.reshape(d_z, (t * n, 4 * units))
            h_prev = tf.reshape(tf.concat([h0[None], hs[:-1]], axis=0), (t * n, units))
            d_x = tf.transpose(tf.reshape(tf.matmul(d_z_rows, kernel, transpose_b=True), (t, n, d)), (1, 0, 2))
            return (
                d_x,
                d_h_steps[0],
                d_c_steps[0],
                tf.matmul(x_seq, d_z_rows, transpose_a=True),
                tf.matmul(h_prev, d_z_rows, transpose_a=True),
                tf.reduce_sum(d_z, axis=list(range(3 - len(bias.shape)))),
            )

        return (outputs, hs[-1], cs[-1]), grad

    return run(x, h0, c0, kernel, recurrent_kernel, bias)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FusedLSTM(layers.Layer):
    """LSTM (N, T, D) + initial state [h0, c0] -> [outputs (N, T, U), h, c]: Keras' LSTM, trained faster.

    Weights `kernel` (D + G, 4U), `recurrent_kernel` (U, 4U) and `bias` (4U), initialised as Keras' LSTM
    does. `constant` (N, G), when given, is an input that is the same at every word: the layer computes what
    an LSTM over the words concatenated with it would (the last G rows of the kernel take it), projecting it
    once per row instead of once per word. A one-word input (decoding steps, the LiteRT graph) runs as plain
    operations, with no loop.
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)

    def build(self, inputs_shape, initial_state_shape=None, constant_shape=None):
        u, width = self.units, inputs_shape[-1] + (constant_shape[-1] if constant_shape else 0)
        self.kernel = self.add_weight(name="kernel", shape=(width, 4 * u), initializer="glorot_uniform")
        self.recurrent_kernel = self.add_weight(name="recurrent_kernel", shape=(u, 4 * u), initializer="orthogonal")
        self.bias = self.add_weight(name="bias", shape=(4 * u,), initializer=_forget_bias(u))

    def call(self, inputs, initial_state, constant=None):
        import tensorflow as tf

        h0, c0 = (tf.cast(s, self.compute_dtype) for s in initial_state)
        kernel, recurrent_kernel, bias = (
            tf.cast(w, self.compute_dtype) for w in (self.kernel, self.recurrent_kernel, self.bias)
        )
        if constant is not None:
            width = inputs.shape[-1]
            bias = bias + tf.matmul(tf.cast(constant, self.compute_dtype), kernel[width:])
            kernel = kernel[:width]
        if inputs.shape[1] == 1:  # one decoding step
            z = tf.matmul(inputs[:, 0], kernel) + bias + tf.matmul(h0, recurrent_kernel)
            gates, c, tanh_c = _gates(z, c0)
            h = gates[..., -self.units:] * tanh_c
            return h[:, None], h, c
        return _sequence(inputs, h0, c0, kernel, recurrent_kernel, bias)

    def compute_output_shape(self, inputs_shape, initial_state_shape=None, constant_shape=None):
        state = (inputs_shape[0], self.units)
        return (*inputs_shape[:2], self.units), state, state

    def get_config(self):
        return {**super().get_config(), "units": self.units}
