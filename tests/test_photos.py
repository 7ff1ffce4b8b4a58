"""Decoding without TensorFlow (Pillow + NumPy) gives the pixels extraction's TensorFlow pipeline gives."""

import io

import numpy as np
import pytest
from PIL import Image

from captioner.core.errors import CaptionerError
from captioner.vision.photos import ImageRejected, decode_photo, photo_input, resize_photo

tf = pytest.importorskip("tensorflow")

from captioner.vision.images import decode_bytes  # noqa: E402

ORIENTATION = 0x0112


def photo_bytes(size=(150, 100), fmt="JPEG", mode="RGB", orientation=None, seed=0) -> bytes:
    """A noisy photo-like image (smooth gradient plus noise) encoded as `fmt`."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = np.linspace(0, 255, w)[None, :, None] * np.linspace(0.2, 1, h)[:, None, None]
    pixels = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    kwargs = {"quality": 85} if fmt == "JPEG" else {}
    if orientation is not None:
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        kwargs["exif"] = exif.tobytes()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "data",
    [
        photo_bytes(),
        photo_bytes(orientation=6),  # a phone photo stored sideways
        photo_bytes((640, 480), orientation=3),
        photo_bytes(fmt="PNG", mode="RGBA"),
        photo_bytes(fmt="PNG", mode="L"),
        photo_bytes((31, 700), fmt="JPEG", mode="L"),
    ],
    ids=["jpeg", "jpeg-rotated", "jpeg-large", "png-rgba", "png-gray", "jpeg-gray-thin"],
)
def test_pillow_path_matches_tensorflow_path(data):
    expected = decode_bytes(data, 224).numpy()
    got = photo_input(data, 224)
    assert got.shape == (224, 224, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=0.02)  # the same pixels; float rounding of the filter only


@pytest.mark.parametrize("shape", [(375, 500), (224, 224), (100, 80), (3, 900), (1200, 1600)])
def test_resize_matches_tensorflow_antialiased_bilinear(shape):
    image = np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    expected = tf.image.resize(image.astype(np.float32), (224, 224), method="bilinear", antialias=True).numpy()
    np.testing.assert_allclose(resize_photo(image, 224), expected, atol=0.01)


def test_decode_turns_phone_photos_upright():
    upright = decode_photo(photo_bytes((150, 100)))
    sideways = decode_photo(photo_bytes((150, 100), orientation=6))
    assert upright.shape == (100, 150, 3) and sideways.shape == (150, 100, 3)


def test_bad_bytes_are_one_line_errors(monkeypatch):
    with pytest.raises(CaptionerError, match="empty file"):
        decode_photo(b"")
    with pytest.raises(CaptionerError, match="not an image"):
        decode_photo(b"hello, not pixels")
    with pytest.raises(CaptionerError, match="corrupt|truncated"):
        decode_photo(photo_bytes()[:300])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageRejected, match="decompression bomb"):
        decode_photo(photo_bytes((100, 100), fmt="PNG"))
