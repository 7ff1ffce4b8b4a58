"""Photos into encoder input without TensorFlow: Pillow decodes, NumPy resizes exactly as extraction does.

The LiteRT runtime (`captioner predict`, `captioner serve`, the Python API) must not import TensorFlow,
so it decodes here: the header check (EXIF orientation, decompression-bomb guard), decoding with
Pillow (JPEG with libjpeg's accurate integer DCT, the method `images.py` asks TensorFlow for, so the pixels
are the same), turning upright, and TensorFlow's antialiased bilinear squash (`tf.image.resize(...,
antialias=True)`: a triangle filter widened by the downscale factor, half-pixel centres) as two small
matrix products. Tests hold both paths to the same numbers.
"""

from __future__ import annotations

import io
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from captioner.core.errors import CaptionerError

UPRIGHT = 1


class ImageRejected(CaptionerError):
    """An image refused before decoding (over the pixel limit)."""


def pixel_limit() -> int | None:
    """The most pixels an image may hold: Pillow's decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`)."""
    return Image.MAX_IMAGE_PIXELS


def read_header(source: Path | bytes, max_pixels: int | None = None) -> int:
    """EXIF orientation (1-8; 1 when absent or unknown) from the image header; ImageRejected above `max_pixels`.

    `max_pixels` can lower Pillow's limit (None: Pillow's, which also applies above it). A file Pillow cannot
    identify gives 1: TensorFlow may still decode it, and if not, `describe_bytes` explains.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
                _check_pixels(image.size, max_pixels)  # before the EXIF block, whose reading may fail
                orientation = image.getexif().get(ExifTags.Base.Orientation, UPRIGHT)
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"too many pixels (decompression bomb guard): {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError):
        return UPRIGHT
    return orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else UPRIGHT


def _check_pixels(size: tuple[int, int], max_pixels: int | None) -> None:
    """ImageRejected when a (width, height) holds more pixels than `max_pixels` (None: Pillow's limit)."""
    limit = pixel_limit() if max_pixels is None else max_pixels
    width, height = size
    if limit is not None and width * height > limit:
        raise ImageRejected(
            f"too many pixels (decompression bomb guard): {width}x{height} = {width * height} pixels, limit {limit}"
        )


def to_rgb_array(image) -> np.ndarray:
    """A PIL image (turned upright by its EXIF tag) or an (h, w) / (h, w, 3|4) array -> (h, w, 3) array 0-255."""
    if isinstance(image, Image.Image):
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or 0 in array.shape:
        raise CaptionerError(f"an image array must be (h, w), (h, w, 3) or (h, w, 4), got shape {array.shape}")
    return array[:, :, :3]


def decode_photo(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """Encoded image bytes -> upright (h, w, 3) uint8 RGB (the first frame of an animation); CaptionerError if none.

    The header is read once: the pixel guard checks its size before any pixel is decoded.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                _check_pixels(image.size, max_pixels)
                return to_rgb_array(image)
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"too many pixels (decompression bomb guard): {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CaptionerError(describe_bytes(data)) from exc


def describe_bytes(data: bytes) -> str:
    """One-line reason why Pillow cannot use `data` as an image ("" when Pillow decodes it)."""
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
    return ""


@lru_cache(maxsize=64)
def _filter(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray]:
    """TensorFlow's antialiased triangle filter along one axis: per output pixel, the input taps it reads
    (out, span) and their weights (out, span), which sum to 1 (taps beyond the image get weight 0)."""
    inverse = in_size / out_size
    width = max(inverse, 1.0)  # downscaling widens the kernel: that is the antialiasing
    centres = (np.arange(out_size) + 0.5) * inverse
    first = np.ceil(centres - width - 0.5).astype(np.int64)
    span = int(np.ceil(2 * width)) + 1
    taps = first[:, None] + np.arange(span)[None, :]
    weights = np.maximum(0.0, 1.0 - np.abs(taps + 0.5 - centres[:, None]) / width)
    weights[(taps < 0) | (taps >= in_size)] = 0.0
    weights /= weights.sum(axis=1, keepdims=True)
    return np.clip(taps, 0, in_size - 1), weights.astype(np.float32)


def resize_matrix(out_size: int, in_size: int) -> np.ndarray:
    """The same filter as a dense (out_size, in_size) float32 matrix, for models that resize inside the graph."""
    taps, weights = _filter(out_size, in_size)
    matrix = np.zeros((out_size, in_size), dtype=np.float32)
    np.add.at(matrix, (np.arange(out_size)[:, None], taps), weights)
    return matrix


def resize_photo(image: np.ndarray, size: int) -> np.ndarray:
    """Squash an (h, w, 3) image to (size, size, 3) float32 0-255 as `tf.image.resize(bilinear, antialias=True)`.

    Rows first, then columns, each output pixel summing only its filter's taps, so a 12-megapixel photo
    costs a few hundred million multiply-adds, not a dense matrix product.
    """
    taps, weights = _filter(size, image.shape[0])
    rows = np.zeros((size, image.shape[1], image.shape[2]), dtype=np.float32)
    for k in range(taps.shape[1]):
        rows += weights[:, k, None, None] * image[taps[:, k]]
    taps, weights = _filter(size, image.shape[1])
    out = np.zeros((size, size, image.shape[2]), dtype=np.float32)
    for k in range(taps.shape[1]):
        out += weights[None, :, k, None] * rows[:, taps[:, k]]
    return out


def photo_input(data: bytes, size: int, max_pixels: int | None = None) -> np.ndarray:
    """Encoded bytes -> the encoder's (size, size, 3) float32 input, 0-255, upright."""
    return resize_photo(decode_photo(data, max_pixels), size)


# The server's decoding: bounded memory for large uploads (a separate path; extraction and predict use the above).
REDUCE_ABOVE = 16_000_000  # pixels: up to here (a 12-16 MP camera photo) `photo_input_reduced` equals `photo_input`
SOURCE_PER_OUTPUT = 4  # a reduced image keeps at least this many source pixels per output pixel along each axis


def photo_input_reduced(data: bytes, size: int, max_pixels: int | None = None,
                        reduce_above: int = REDUCE_ABOVE) -> np.ndarray:
    """`photo_input` whose memory stays bounded for large images (the server's path).

    Up to `reduce_above` pixels the result is exactly `photo_input`'s. Above it, a JPEG decodes at 1/2, 1/4
    or 1/8 scale (libjpeg's DCT scaling, Pillow's `draft`; never below `SOURCE_PER_OUTPUT` x `size` per axis)
    and other formats are box-reduced by whole factors to that size right after decoding, so a 49-megapixel
    image costs one decoded copy (a JPEG not even that) instead of four, and the antialiased squash then
    sees a smaller image; the numbers differ slightly from `photo_input`'s. ImageRejected above `max_pixels`.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                _check_pixels(image.size, max_pixels)
                if image.width * image.height <= reduce_above:
                    return resize_photo(to_rgb_array(image), size)
                keep = SOURCE_PER_OUTPUT * size
                if image.format == "JPEG":
                    image.draft(None, (keep, keep))
                rgb = image if image.mode == "RGB" else image.convert("RGB")
                factors = (max(1, rgb.width // keep), max(1, rgb.height // keep))
                small = rgb.reduce(factors) if factors != (1, 1) else rgb
                return resize_photo(to_rgb_array(small), size)
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"too many pixels (decompression bomb guard): {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CaptionerError(describe_bytes(data)) from exc
