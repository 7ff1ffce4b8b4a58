"""The server's bounded-memory decoding (`photos.photo_input_reduced`): exact for ordinary photos, close for large
ones (JPEG at reduced DCT scale, other formats box-reduced), upright, and the same refusals as `photo_input`."""

import io

import numpy as np
import pytest
from PIL import Image

from captioner.core.errors import CaptionerError
from captioner.vision.photos import ImageRejected, photo_input, photo_input_reduced

SIZE = 64


def encoded(fmt: str, size=(1200, 900), orientation: int = 1) -> bytes:
    """A smooth photo-like image (random colours, bilinearly enlarged) as JPEG or PNG with an EXIF orientation."""
    small = np.random.default_rng(3).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize(size, Image.BILINEAR)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, exif=exif.tobytes(), quality=92)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_an_ordinary_photo_gives_exactly_photo_inputs_numbers(fmt):
    data = encoded(fmt, (500, 375))
    assert np.array_equal(photo_input_reduced(data, 224), photo_input(data, 224))


@pytest.mark.parametrize("fmt, orientation", [("JPEG", 1), ("JPEG", 6), ("PNG", 1), ("PNG", 8)])
def test_a_large_image_is_reduced_and_stays_close_and_upright(fmt, orientation):
    data = encoded(fmt, orientation=orientation)
    exact = photo_input(data, SIZE)
    reduced = photo_input_reduced(data, SIZE, reduce_above=100_000)  # 1.08 MP counts as large here
    assert reduced.shape == exact.shape == (SIZE, SIZE, 3) and reduced.dtype == np.float32
    difference = np.abs(reduced - exact)
    assert 0 < difference.mean() < 0.5 and difference.max() < 4.0  # of 0-255: reduced, yet close
    turned = photo_input(encoded(fmt, orientation=1), SIZE)
    if orientation != 1:  # the EXIF turn is applied after reducing: far from the unturned pixels
        assert np.abs(reduced - turned).mean() > 10


def test_limits_and_bad_bytes_are_refused_as_by_photo_input():
    with pytest.raises(ImageRejected, match="too many pixels"):
        photo_input_reduced(encoded("PNG"), SIZE, max_pixels=1_000_000)
    with pytest.raises(CaptionerError, match="not an image"):
        photo_input_reduced(b"just some text\n", SIZE)
