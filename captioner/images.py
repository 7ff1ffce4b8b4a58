"""Image decoding shared by feature extraction and `captioner predict`.

A tf.data pipeline reads, decodes (JPEG, PNG, GIF, BMP, WebP; grayscale and RGBA become RGB) and
resizes (bilinear squash, antialiased, like `load_img(target_size=...)` with bilinear interpolation)
in parallel and prefetches batches. Files that fail to decode are dropped by `ignore_errors` so one
bad file never stops the stream; the batches carry each image's index, and `describe_failure` tells
why the missing ones failed (only those few files are opened a second time).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import tensorflow as tf
from PIL import Image, UnidentifiedImageError


def decode_resize(path: tf.Tensor, size: int) -> tf.Tensor:
    """Read one image file into a (size, size, 3) float32 RGB tensor with values 0-255."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    return tf.image.resize(image, (size, size), method="bilinear", antialias=True)


def image_batches(paths: list[Path], size: int, batch_size: int) -> tf.data.Dataset:
    """Batches of (indices into `paths`, images (n, size, size, 3) float32 0-255), undecodable files left out."""
    indices = tf.range(len(paths), dtype=tf.int64)
    files = tf.constant([str(p) for p in paths], dtype=tf.string)
    return (
        tf.data.Dataset.from_tensor_slices((indices, files))
        .map(lambda i, p: (i, decode_resize(p, size)), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .ignore_errors()
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )


def _tf_reason(exc: tf.errors.OpError) -> str:
    """TensorFlow's error message without the op wrapper noise."""
    message = re.sub(r"\{\{[^}]*\}\}", "", exc.message)
    return re.sub(r"\[Op:.*$", "", message).strip()


def describe_failure(path: Path) -> str:
    """One-line reason why `path` cannot be used as an image (PIL's diagnosis first, TensorFlow's otherwise)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"unreadable file ({exc.strerror or exc})"
    if not data:
        return "empty file"
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except UnidentifiedImageError:
        return "not an image (unrecognized file format)"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"corrupt image: {exc}"
    try:
        decode_resize(tf.constant(str(path)), 8)
    except tf.errors.OpError as exc:
        return f"cannot decode: {_tf_reason(exc)}"
    return "could not be decoded"
