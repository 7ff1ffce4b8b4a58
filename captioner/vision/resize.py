"""Antialiased bilinear resizing as two fixed matrix products, so it converts to LiteRT builtin ops.

`tf.image.resize(..., antialias=True)` (TensorFlow's ScaleAndTranslate op) has no LiteRT builtin; this
layer applies the same per-axis weights (`photos.resize_matrix`: a triangle filter widened by the downscale
factor, half-pixel centres, weights summing to 1) as `(out_h, in_h)` and `(out_w, in_w)` constant matrices.
Upsampling is plain bilinear. The fused encoders use it for both the image (largest member's size -> a
smaller member's) and the feature grids (-> the first member's grid).
"""

from __future__ import annotations

import keras
import numpy as np

from captioner.vision.photos import resize_matrix

_PACKAGE = "captioner"


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
        self._rows = resize_matrix(self.height, int(input_shape[1]))
        self._cols = resize_matrix(self.width, int(input_shape[2]))

    def call(self, x):
        """Rows, then columns: each a product with a constant matrix on the last axis (builtin ops in LiteRT)."""
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
