"""Image decoding shared by feature extraction, `captioner predict`, the Python API and the server.

A tf.data pipeline reads, decodes (JPEG, PNG, GIF, BMP, WebP; grayscale and RGBA become RGB), turns
the image upright by its EXIF orientation (phone photos are stored sideways with a rotation tag) and
resizes (bilinear squash, antialiased, like `load_img(target_size=...)` with bilinear interpolation)
in parallel and prefetches batches; JPEGs are decoded with the accurate integer DCT, so `photos.py` gets
the same pixels from Pillow without TensorFlow. Before decoding, each file's header is read with Pillow for the
orientation and the pixel count: an image over Pillow's decompression-bomb limit is never decoded.
Files that fail are dropped so one bad file never stops the stream; the batches carry each image's
index, and `describe_failure` tells why the missing ones failed.
"""

from __future__ import annotations

import re
from pathlib import Path

import tensorflow as tf

from captioner.vision import photos
from captioner.core.errors import CaptionerError
from captioner.vision.photos import UPRIGHT, ImageRejected, read_header


def orient(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """Turn an (h, w, c) image upright by its EXIF orientation 1-8 (as PIL's `ImageOps.exif_transpose`)."""
    branches = [
        lambda: image,  # 1: upright
        lambda: tf.image.flip_left_right(image),  # 2: mirrored
        lambda: tf.image.rot90(image, 2),  # 3: upside down
        lambda: tf.image.flip_up_down(image),  # 4: mirrored upside down
        lambda: tf.transpose(image, (1, 0, 2)),  # 5: transpose
        lambda: tf.image.rot90(image, 3),  # 6: stored rotated 90 degrees counter-clockwise
        lambda: tf.image.rot90(tf.transpose(image, (1, 0, 2)), 2),  # 7: transverse
        lambda: tf.image.rot90(image, 1),  # 8: stored rotated 90 degrees clockwise
    ]
    index = tf.clip_by_value(tf.cast(orientation, tf.int32) - 1, 0, 7)
    return tf.switch_case(index, branches)


def decode_resize(path: tf.Tensor, size: int, orientation: tf.Tensor | int = UPRIGHT) -> tf.Tensor:
    """Read one image file into an upright (size, size, 3) float32 RGB tensor with values 0-255."""
    return _decode_resize(tf.io.read_file(path), size, orientation)


def decode_bytes(data: bytes, size: int, max_pixels: int | None = None) -> tf.Tensor:
    """Encoded image bytes -> upright (size, size, 3) float32 0-255; CaptionerError saying why if they are no image."""
    orientation = read_header(data, max_pixels)
    try:
        return _decode_resize(tf.constant(data), size, orientation)
    except (tf.errors.OpError, ValueError) as exc:
        raise CaptionerError(describe_bytes(data)) from exc


def _decode_resize(data: tf.Tensor, size: int, orientation: tf.Tensor | int) -> tf.Tensor:
    """Encoded bytes -> decoded, turned upright, resized."""
    image = tf.cast(decode_pixels(data), tf.float32)
    return resize(orient(image, tf.convert_to_tensor(orientation, tf.int32)), size)


def decode_pixels(data: tf.Tensor) -> tf.Tensor:
    """Encoded bytes -> (h, w, 3) uint8 RGB; JPEGs with the accurate integer DCT (TensorFlow's default is the
    fast one), so the pixels equal Pillow's and `photos.py` reproduces them without TensorFlow."""
    return tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False),
    )


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
    """Squash an (h, w, 3) image to (size, size, 3) float32 0-255 (bilinear, antialiased)."""
    return tf.image.resize(image, (size, size), method="bilinear", antialias=True)


def image_batches(paths: list[Path], size: int, batch_size: int) -> tf.data.Dataset:
    """Batches of (indices into `paths`, images (n, size, size, 3) float32 0-255), undecodable files left out."""
    kept, orientations = [], []
    for i, path in enumerate(paths):
        try:
            orientations.append(read_header(path))
        except ImageRejected:
            continue
        kept.append(i)
    indices = tf.constant(kept, dtype=tf.int64, shape=(len(kept),))
    files = tf.constant([str(paths[i]) for i in kept], dtype=tf.string, shape=(len(kept),))
    turns = tf.constant(orientations, dtype=tf.int32, shape=(len(kept),))
    return (
        tf.data.Dataset.from_tensor_slices((indices, files, turns))
        .map(lambda i, p, o: (i, decode_resize(p, size, o)),
             num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .ignore_errors()
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )


def _tf_reason(exc: tf.errors.OpError) -> str:
    """TensorFlow's error message without the op wrapper noise."""
    message = re.sub(r"\{\{[^}]*\}\}", "", exc.message)
    return re.sub(r"\[Op:.*$", "", message).strip()


def describe_bytes(data: bytes) -> str:
    """One-line reason why `data` cannot be used as an image (PIL's diagnosis first, TensorFlow's otherwise)."""
    reason = photos.describe_bytes(data)
    if reason:
        return reason
    try:
        _decode_resize(tf.constant(data), 8, UPRIGHT)
    except tf.errors.OpError as exc:
        return f"cannot decode: {_tf_reason(exc)}"
    return "could not be decoded"


def describe_failure(path: Path) -> str:
    """One-line reason why the file at `path` cannot be used as an image."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"unreadable file ({exc.strerror or exc})"
    return describe_bytes(data)
