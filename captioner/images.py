"""Image decoding shared by feature extraction, `captioner predict`, the Python API and the server.

A tf.data pipeline reads, decodes (JPEG, PNG, GIF, BMP, WebP; grayscale and RGBA become RGB), turns
the image upright by its EXIF orientation (phone photos are stored sideways with a rotation tag) and
resizes (bilinear squash, antialiased, like `load_img(target_size=...)` with bilinear interpolation)
in parallel and prefetches batches. Before decoding, each file's header is read with Pillow for the
orientation and the pixel count: an image over Pillow's decompression-bomb limit is never decoded.
Files that fail are dropped so one bad file never stops the stream; the batches carry each image's
index, and `describe_failure` tells why the missing ones failed.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import ExifTags, Image, UnidentifiedImageError

from captioner.errors import CaptionerError

UPRIGHT = 1


class ImageRejected(CaptionerError):
    """An image refused before decoding (over the pixel limit)."""


def pixel_limit() -> int | None:
    """The most pixels an image may hold: Pillow's decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`)."""
    return Image.MAX_IMAGE_PIXELS


def read_header(source: Path | bytes, max_pixels: int | None = None) -> int:
    """EXIF orientation (1-8; 1 when absent or unknown) from the image header; ImageRejected above `max_pixels`.

    `max_pixels` can lower Pillow's limit (None: Pillow's, which also applies above it). A file Pillow cannot identify gives 1: TensorFlow may still
    decode it, and if not, `describe_failure` explains.
    """
    limit = pixel_limit() if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
                width, height = image.size
                orientation = image.getexif().get(ExifTags.Base.Orientation, UPRIGHT)
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"too many pixels (decompression bomb guard): {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError):
        return UPRIGHT
    if limit is not None and width * height > limit:
        raise ImageRejected(
            f"too many pixels (decompression bomb guard): {width}x{height} = {width * height} pixels, limit {limit}"
        )
    return orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else UPRIGHT


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
    image = tf.cast(tf.io.decode_image(data, channels=3, expand_animations=False), tf.float32)
    return resize(orient(image, tf.convert_to_tensor(orientation, tf.int32)), size)


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


def to_rgb_array(image) -> np.ndarray:
    """A PIL image (turned upright by its EXIF tag) or an (h, w) / (h, w, 3|4) array -> (h, w, 3) array 0-255."""
    from PIL import ImageOps

    if isinstance(image, Image.Image):
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or 0 in array.shape:
        raise CaptionerError(f"an image array must be (h, w), (h, w, 3) or (h, w, 4), got shape {array.shape}")
    return array[:, :, :3]


def _tf_reason(exc: tf.errors.OpError) -> str:
    """TensorFlow's error message without the op wrapper noise."""
    message = re.sub(r"\{\{[^}]*\}\}", "", exc.message)
    return re.sub(r"\[Op:.*$", "", message).strip()


def describe_bytes(data: bytes) -> str:
    """One-line reason why `data` cannot be used as an image (PIL's diagnosis first, TensorFlow's otherwise)."""
    if not data:
        return "empty file"
    try:
        read_header(data)
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except ImageRejected as exc:
        return str(exc)
    except UnidentifiedImageError:
        return "not an image (unrecognized file format)"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"corrupt image: {exc}"
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
