"""Decoder architectures (merge, inject, attention) as Keras 3 functional models.

One set of named layers serves two graphs: the training model (image, whole input sequence) ->
logits over every position (teacher forcing, one forward pass per caption), and a pair of decoding
models rebuilt from the same layers: `init` (image -> LSTM state + per-image context, run once) and
`step` (previous token + state + context -> log-probabilities + new state, run once per word), so beam
search never recomputes a prefix. Only the training model is saved (.keras, loads with safe_mode).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import keras
import numpy as np
from keras import layers, ops

from captioner.errors import CaptionerError
from captioner.feature_store import pool_grid

DECODERS = ("merge", "inject", "attention")
_PACKAGE = "captioner"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class JoinVector(layers.Layer):
    """Broadcast a per-image vector (B, D) over a sequence (B, T, E): add it (D == E) or concatenate it."""

    def __init__(self, mode: str = "add", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("add", "concat"):
            raise ValueError(f"JoinVector mode must be add or concat, got {mode!r}")
        self.mode = mode

    def call(self, inputs):
        seq, vec = inputs
        vec = ops.expand_dims(vec, 1)
        if self.mode == "add":
            return seq + vec
        vec = ops.broadcast_to(vec, (ops.shape(seq)[0], ops.shape(seq)[1], ops.shape(vec)[-1]))
        return ops.concatenate([seq, vec], axis=-1)

    def compute_output_shape(self, input_shapes):
        seq, vec = input_shapes
        if self.mode == "add":
            return seq
        return (*seq[:-1], seq[-1] + vec[-1])

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ZeroState(layers.Layer):
    """A (B, units) zero tensor shaped after its input's batch: the merge decoder's initial LSTM state."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def call(self, inputs):
        return ops.zeros((ops.shape(inputs)[0], self.units), dtype=self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SpatialAttention(layers.Layer):
    """Soft attention over grid cells: per query h_t, alpha = softmax(w . tanh(K + W h_t)), context = alpha V.

    Inputs: queries (B, T, U), keys (B, L, A) (projected once per image), values (B, L, D).
    Returns the context (B, T, D); the query is the LSTM output at step t (Lu et al. 2017's spatial
    attention), so training attends at every position in one batched pass.
    """

    def __init__(self, attention_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.attention_dim = attention_dim

    def build(self, input_shapes):
        query_shape = input_shapes[0]
        self.query_kernel = self.add_weight(
            name="query_kernel", shape=(query_shape[-1], self.attention_dim), initializer="glorot_uniform"
        )
        self.score_kernel = self.add_weight(
            name="score_kernel", shape=(self.attention_dim,), initializer="glorot_uniform"
        )

    def attention_weights(self, queries, keys):
        """alpha (B, T, L): how much each query attends to each grid cell (rows sum to 1)."""
        q = ops.matmul(queries, self.query_kernel)  # (B, T, A)
        hidden = ops.tanh(ops.expand_dims(q, 2) + ops.expand_dims(keys, 1))  # (B, T, L, A)
        scores = ops.tensordot(hidden, self.score_kernel, axes=[[3], [0]])  # (B, T, L)
        return ops.softmax(scores, axis=-1)

    def call(self, inputs):
        queries, keys, values = inputs
        return ops.matmul(self.attention_weights(queries, keys), values)  # (B, T, D)

    def compute_output_shape(self, input_shapes):
        queries, _, values = input_shapes
        return (*queries[:-1], values[-1])

    def get_config(self):
        return {**super().get_config(), "attention_dim": self.attention_dim}


class AttentionProbe(layers.Layer):
    """The attention weights (N, L) of a SpatialAttention layer for one query (N, U); decoding graphs only, never saved."""

    def __init__(self, attend: SpatialAttention, **kwargs):
        super().__init__(**kwargs)
        self.attend = attend

    def call(self, inputs):
        query, keys = inputs
        return self.attend.attention_weights(ops.expand_dims(query, 1), keys)[:, 0]

    def compute_output_shape(self, input_shapes):
        query, keys = input_shapes
        return (query[0], keys[1])


@dataclass(frozen=True)
class DecoderSpec:
    """What a decoder was built with; recorded in the bundle and used to rebuild the decoding graphs."""

    kind: str
    vocab_size: int
    feature_shape: tuple[int, ...]
    embedding_dim: int
    units: int
    dropout: float


def decoder_input_shape(kind: str, feature_shape: Sequence[int]) -> tuple[int, ...]:
    """The image input a decoder takes: a vector for merge/inject (grids get pooled), the grid for attention."""
    feature_shape = tuple(int(d) for d in feature_shape)
    if kind == "attention":
        if len(feature_shape) != 3:
            raise ValueError(f"the attention decoder needs grid features (h, w, C), got shape {feature_shape}")
        return feature_shape
    return feature_shape[-1:]


def prepare_features(features: np.ndarray, decoder: str, source: str) -> np.ndarray:
    """Features in the form a decoder takes: grids pooled for merge/inject; attention refuses pooled vectors."""
    if decoder == "attention":
        if features.ndim != 4:
            raise CaptionerError(
                f"{source}: train.decoder attention needs grid features but these are pooled vectors "
                f"of shape {features.shape[1:]} (set features.output: grid)"
            )
        return features
    return pool_grid(features)


def _make_layers(spec: DecoderSpec) -> dict[str, layers.Layer]:
    """Create every named layer of a decoder once, so the training and decoding graphs share weights."""
    u, e, v, p = spec.units, spec.embedding_dim, spec.vocab_size, spec.dropout
    made: dict[str, layers.Layer] = {
        "embedding": layers.Embedding(v, e, name="embedding"),
        "embedding_dropout": layers.Dropout(p, name="embedding_dropout"),
        "image_dropout": layers.Dropout(p, name="image_dropout"),
        "lstm": layers.LSTM(u, return_sequences=True, return_state=True, name="lstm"),
        "output_dropout": layers.Dropout(p, name="output_dropout"),
        "logits": layers.Dense(v, name="logits"),
    }
    if spec.kind == "merge":
        made["image_proj"] = layers.Dense(u, activation="relu", name="image_proj")
        made["zero_state"] = ZeroState(u, name="zero_state")
        made["merge"] = JoinVector("add", name="merge")
        made["hidden"] = layers.Dense(u, activation="relu", name="hidden")
    elif spec.kind == "inject":
        made["init_h"] = layers.Dense(u, activation="tanh", name="init_h")
        made["init_c"] = layers.Dense(u, activation="tanh", name="init_c")
    elif spec.kind == "attention":
        h, w, _ = spec.feature_shape
        made["flatten_grid"] = layers.Reshape((h * w, spec.feature_shape[-1]), name="flatten_grid")
        made["grid_values"] = layers.Dense(u, activation="relu", name="grid_values")
        made["grid_keys"] = layers.Dense(u, use_bias=False, name="grid_keys")
        made["grid_mean"] = layers.GlobalAveragePooling1D(name="grid_mean")
        made["global_proj"] = layers.Dense(e, activation="relu", name="global_proj")
        made["init_h"] = layers.Dense(u, activation="tanh", name="init_h")
        made["init_c"] = layers.Dense(u, activation="tanh", name="init_c")
        made["word_image"] = JoinVector("concat", name="word_image")
        made["attend"] = SpatialAttention(u, name="attend")
        made["merge"] = layers.Add(name="merge")
        made["hidden"] = layers.Dense(u, activation="relu", name="hidden")
    else:
        raise ValueError(f"unknown decoder {spec.kind!r} (known: {', '.join(DECODERS)})")
    return made


def _encode(kind: str, lay: dict, image):
    """Image input -> (h0, c0, context tensors the step needs)."""
    if kind == "merge":
        proj = lay["image_proj"](lay["image_dropout"](image))
        zero = lay["zero_state"](image)
        return zero, zero, [proj]
    if kind == "inject":
        img = lay["image_dropout"](image)
        return lay["init_h"](img), lay["init_c"](img), []
    cells = lay["flatten_grid"](image)
    mean = lay["grid_mean"](cells)
    values = lay["grid_values"](lay["image_dropout"](cells))
    keys = lay["grid_keys"](values)
    global_vec = lay["global_proj"](lay["image_dropout"](mean))
    return lay["init_h"](mean), lay["init_c"](mean), [values, keys, global_vec]


def _decode(kind: str, lay: dict, tokens, h0, c0, context):
    """Token ids (B, T) + state + context -> (logits (B, T, V), h, c); T is the whole caption or 1."""
    words = lay["embedding_dropout"](lay["embedding"](tokens))
    if kind == "attention":
        words = lay["word_image"]([words, context[2]])
    seq, h, c = lay["lstm"](words, initial_state=[h0, c0])
    if kind == "merge":
        out = lay["hidden"](lay["merge"]([seq, context[0]]))
    elif kind == "inject":
        out = seq
    else:
        attended = lay["attend"]([seq, context[1], context[0]])
        out = lay["hidden"](lay["merge"]([seq, attended]))
    return lay["logits"](lay["output_dropout"](out)), h, c


def build_decoder(spec: DecoderSpec) -> keras.Model:
    """The training model: inputs (image features, input token ids (B, T)) -> next-token logits (B, T, V)."""
    if spec.kind not in DECODERS:
        raise ValueError(f"unknown decoder {spec.kind!r} (known: {', '.join(DECODERS)})")
    lay = _make_layers(spec)
    image = keras.Input(decoder_input_shape(spec.kind, spec.feature_shape), name="image")
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    h0, c0, context = _encode(spec.kind, lay, image)
    logits, _, _ = _decode(spec.kind, lay, tokens, h0, c0, context)
    return keras.Model([image, tokens], logits, name=f"captioner_{spec.kind}")


def decoder_kind(model: keras.Model) -> str:
    """The decoder kind a training model was built as (from its name)."""
    kind = model.name.removeprefix("captioner_")
    if kind not in DECODERS:
        raise ValueError(f"model {model.name!r} is not a captioner decoder")
    return kind


@dataclass
class StepModels:
    """Decoding graphs sharing the training model's weights: `init` runs once per image, `step` once per word."""

    kind: str
    init: keras.Model
    step: keras.Model
    vocab_size: int
    has_attention: bool = False  # `step` has a 4th output: alpha (N, L) over the h*w grid cells


def step_models(model: keras.Model) -> StepModels:
    """Rebuild `init` (image -> [h, c, *context]) and `step` ([token (N,1), h, c, *context] -> [log p (N,V), h, c]).

    For the attention decoder `step` also outputs alpha (N, L), the attention over the grid cells that
    chose this word (the LSTM output of a one-token step is its new h, the query of the attention).
    """
    kind = decoder_kind(model)
    lay = {layer.name: layer for layer in model.layers}
    image = keras.Input(model.inputs[0].shape[1:], name="image")
    h0, c0, context = _encode(kind, lay, image)
    init = keras.Model(image, [h0, c0, *context], name=f"{kind}_init")

    token = keras.Input((1,), dtype="int32", name="token")
    h_in = keras.Input(h0.shape[1:], name="h")
    c_in = keras.Input(c0.shape[1:], name="c")
    ctx_in = [keras.Input(t.shape[1:], name=f"context_{i}") for i, t in enumerate(context)]
    logits, h, c = _decode(kind, lay, token, h_in, c_in, ctx_in)
    log_probs = layers.Activation("log_softmax")(layers.Reshape((logits.shape[-1],))(logits))
    outputs = [log_probs, h, c]
    if kind == "attention":
        outputs.append(AttentionProbe(lay["attend"], name="attention_probe")([h, ctx_in[1]]))
    step = keras.Model([token, h_in, c_in, *ctx_in], outputs, name=f"{kind}_step")
    return StepModels(kind=kind, init=init, step=step, vocab_size=int(logits.shape[-1]),
                      has_attention=kind == "attention")


def masked_loss(y_true, y_pred):
    """Mean cross-entropy over real target tokens only (pad id 0 is ignored), from logits."""
    y_true = ops.cast(y_true, "int32")
    mask = ops.cast(ops.not_equal(y_true, 0), "float32")
    ce = keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)
    return ops.sum(ce * mask) / ops.maximum(ops.sum(mask), 1.0)


def load_decoder(path) -> keras.Model:
    """Load a saved training model (.keras) safely (no Lambda, no pickle) and uncompiled."""
    return keras.saving.load_model(path, safe_mode=True, compile=False)
