"""Antialiased bilinear resizing as two fixed matrix products, so it converts to LiteRT builtin ops.

`tf.image.resize(..., antialias=True)` (TensorFlow's ScaleAndTranslate op) has no LiteRT builtin; this
layer computes the same per-axis weights (a triangle filter widened by the downscale factor, half-pixel
centres, weights normalized to sum 1) in NumPy and applies them as `(out_h, in_h)` and `(out_w, in_w)`
matrices. Upsampling (factor below 1) is plain bilinear. The fused encoders use it for both the image
(largest member's size -> a smaller member's) and the feature grids (-> the first member's grid).
"""

from __future__ import annotations

import math

import keras
import numpy as np

_PACKAGE = "captioner"


def resize_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float32 weights of TensorFlow's antialiased bilinear resize along one axis."""
    scale = out_size / in_size
    kernel_scale = max(1.0 / scale, 1.0)
    weights = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        sample = (i + 0.5) / scale
        start = max(math.ceil(sample - kernel_scale - 0.5), 0)
        end = min(math.floor(sample + kernel_scale - 0.5), in_size - 1) + 1
        source = np.arange(start, end)
        row = np.maximum(0.0, 1.0 - np.abs((source + 0.5 - sample) / kernel_scale))
        weights[i, start:end] = row / row.sum()
    return weights.astype(np.float32)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AntialiasResize(keras.layers.Layer):
    """Resize (n, h, w, c) to (n, height, width, c) like `tf.image.resize(bilinear, antialias=True)`."""

    def __init__(self, height: int, width: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.height, self.width = int(height), int(width)
        self._rows: np.ndarray | None = None
        self._cols: np.ndarray | None = None

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        """Compute the two weight matrices for the input's fixed spatial size."""
        self._rows = resize_weights(int(input_shape[1]), self.height)
        self._cols = resize_weights(int(input_shape[2]), self.width)

    def call(self, x):
        """Rows, then columns: each a product with a constant matrix on the last axis (LiteRT: FULLY_CONNECTED)."""
        rows = keras.ops.cast(self._rows.T, x.dtype)
        cols = keras.ops.cast(self._cols.T, x.dtype)
        x = keras.ops.matmul(keras.ops.transpose(x, (0, 2, 3, 1)), rows)  # (n, w, c, height)
        x = keras.ops.matmul(keras.ops.transpose(x, (0, 3, 2, 1)), cols)  # (n, height, c, width)
        return keras.ops.transpose(x, (0, 1, 3, 2))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        """(n, height, width, channels)."""
        return (input_shape[0], self.height, self.width, input_shape[3])

    def get_config(self) -> dict:
        """The target size (the weights follow from it and the input shape)."""
        return {**super().get_config(), "height": self.height, "width": self.width}
