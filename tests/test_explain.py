"""Attention figures: one per image for `predict --explain`, and heatmap rows in the evaluate stage's samples.png."""

import numpy as np
import pytest
from PIL import Image

from captioner.serving.api import Beam, Caption
from captioner.evaluation import sample_figure
from captioner.serving.explain import explanation_figure, explanation_paths, load_photo, save_figure


def caption(words, grid=(3, 3), attention=True):
    rng = np.random.default_rng(len(words))
    maps = rng.random((len(words), *grid)).astype(np.float32) if attention else None
    return Caption(" ".join(words), -2.5, -2.5 / (len(words) + 1), list(words), [Beam("another caption", -3.0, -1.0)], maps)


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "Images"
    folder.mkdir()
    for i in range(4):
        pixels = np.full((60, 90, 3), 40 * i, dtype=np.uint8)
        pixels[10:30, 10:40] = (250, 30, 30)
        Image.fromarray(pixels).save(folder / f"img{i}.jpg")
    return folder


def png_size(path):
    with Image.open(path) as image:
        return image.size


def test_samples_figure_adds_attention_rows(images, tmp_path):
    rows = [(f"img{i}.jpg", "a red box", ["a red box on gray"]) for i in range(4)]
    results = {name: caption(["a", "red", "box"]) for name, _, _ in rows}
    sample_figure(tmp_path / "plain.png", images, rows, 4)
    sample_figure(tmp_path / "explained.png", images, rows, 4, results)
    (plain_w, plain_h), (w, h) = png_size(tmp_path / "plain.png"), png_size(tmp_path / "explained.png")
    assert w == plain_w and h > plain_h * 1.5  # three rows of heatmaps below the grid
    without = {name: caption(["a", "red", "box"], attention=False) for name, _, _ in rows}
    sample_figure(tmp_path / "merge.png", images, rows, 4, without)
    assert png_size(tmp_path / "merge.png") == (plain_w, plain_h)
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary file


def test_explanation_figure_has_a_panel_per_word(images, tmp_path):
    photo = load_photo(images / "img1.jpg")
    assert photo.shape == (60, 90, 3)
    save_figure(explanation_figure(photo, caption(["a", "red", "box"]), "img1.jpg"), tmp_path / "three.png")
    save_figure(explanation_figure(photo, caption(list("abcdefg")), "img1.jpg"), tmp_path / "seven.png")
    save_figure(explanation_figure(photo, caption(["a"], attention=False)), tmp_path / "none.png")
    three, seven, none = (png_size(tmp_path / f"{n}.png") for n in ("three", "seven", "none"))
    assert three[0] > none[0] and seven[1] > three[1]  # 4 panels in a row; 8 panels need a second row


def test_explanation_paths_never_collide(tmp_path):
    paths = explanation_paths([tmp_path / "a/x.jpg", tmp_path / "b/x.png", tmp_path / "y.jpg"], tmp_path / "out")
    assert [p.name for p in paths] == ["x.png", "x-2.png", "y.png"]
