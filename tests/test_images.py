"""Image decoding: EXIF orientation applied everywhere an image is decoded; decompression bombs refused, not fatal."""

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

tf = pytest.importorskip("tensorflow")

from captioner.core.errors import CaptionerError  # noqa: E402
from captioner.vision.images import decode_bytes, describe_failure, image_batches, orient  # noqa: E402
from captioner.vision.photos import ImageRejected, read_header, to_rgb_array  # noqa: E402

ORIENTATION = 0x0112


def asymmetric(height: int = 4, width: int = 6) -> np.ndarray:
    """An image whose every transpose or flip looks different."""
    return np.arange(height * width * 3, dtype=np.uint8).reshape(height, width, 3)


def upright_photo() -> np.ndarray:
    """80x120 (h x w): red top half, blue bottom half, green left third: easy to tell its way up after JPEG."""
    photo = np.zeros((80, 120, 3), dtype=np.uint8)
    photo[:40, :, 0] = 255
    photo[40:, :, 2] = 255
    photo[:, :40] = (0, 255, 0)
    return photo


def sideways_jpeg(path, orientation: int = 6) -> None:
    """The upright photo stored as a camera does: pixels turned, with the EXIF tag that turns them back."""
    stored = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}[orientation]
    image = Image.fromarray(upright_photo()).transpose(stored)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    image.save(path, quality=95, exif=exif.tobytes())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_matches_pillow_exif_transpose(orientation):
    pixels = asymmetric()
    image = Image.fromarray(pixels)
    image.getexif()[ORIENTATION] = orientation
    expected = np.asarray(ImageOps.exif_transpose(image))
    np.testing.assert_array_equal(orient(tf.constant(pixels), tf.constant(orientation)).numpy(), expected)


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_rotated_jpeg_decodes_upright(tmp_path, orientation):
    path = tmp_path / "phone.jpg"
    sideways_jpeg(path, orientation)
    assert read_header(path) == orientation
    (index, batch), = list(image_batches([path], 60, 4))
    decoded = batch.numpy()[0]
    from_bytes = decode_bytes(path.read_bytes(), 60).numpy()
    for image in (decoded, from_bytes):
        assert image[5, 50, 0] > 200 and image[5, 50, 2] < 60  # top right: red
        assert image[55, 50, 2] > 200 and image[55, 50, 0] < 60  # bottom right: blue
        assert image[30, 5, 1] > 200  # left: green
    np.testing.assert_allclose(decoded, from_bytes, atol=1e-3)
    with Image.open(path) as pil:  # the API's PIL route turns it the same way
        np.testing.assert_array_equal(to_rgb_array(pil).shape, (80, 120, 3))


def test_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    good, bomb = tmp_path / "good.png", tmp_path / "bomb.png"
    Image.fromarray(asymmetric(20, 20)).save(good)
    Image.fromarray(np.zeros((60, 60, 3), dtype=np.uint8)).save(bomb)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 20x20 passes, 60x60 trips the guard
    with pytest.raises(ImageRejected, match="decompression bomb"):
        read_header(bomb)
    assert "decompression bomb" in describe_failure(bomb)
    indices = [int(i) for ids, _ in image_batches([bomb, good], 16, 4) for i in ids.numpy()]
    assert indices == [1]
    with pytest.raises(CaptionerError, match="decompression bomb"):
        decode_bytes(bomb.read_bytes(), 16)
    with pytest.raises(ImageRejected, match="400 pixels, limit 100"):  # the server sets a lower limit
        read_header(good.read_bytes(), max_pixels=100)


def test_non_images_give_one_line_reasons():
    with pytest.raises(CaptionerError, match="not an image"):
        decode_bytes(b"hello, not pixels", 16)
    buffer = io.BytesIO()
    Image.fromarray(asymmetric(30, 30)).save(buffer, format="JPEG")
    with pytest.raises(CaptionerError, match="truncated|corrupt|cannot decode"):
        decode_bytes(buffer.getvalue()[:200], 16)
    with pytest.raises(CaptionerError, match="shape"):
        to_rgb_array(np.zeros((4, 4, 2)))
