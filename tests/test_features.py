"""Image decoding and the extract_features stage: bad files are skipped with reasons, outputs are atomic."""

from __future__ import annotations

import json
import os
import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from skimage import data as skdata

from captioner.core.errors import CaptionerError
from captioner.vision.feature_store import load_features
from captioner.vision.features import extract_features, run_extraction
from captioner.vision.images import decode_resize, describe_failure

ROOT = Path(__file__).resolve().parents[1]
LITE0 = {"encoder": "efficientnet_lite0", "weights": "imagenet", "output": "pooled", "batch_size": 2,
         "precision": "float32"}


@pytest.fixture(autouse=True)
def weights_cache(tmp_path_factory, monkeypatch) -> None:
    """Converted weights go to a folder shared by this module's tests, never the user's cache."""
    monkeypatch.setenv("CAPTIONER_CACHE", str(tmp_path_factory.getbasetemp() / "weights-cache"))


def make_images(folder: Path) -> dict[str, str]:
    """Good images of assorted sizes and modes, a truncated JPEG and a text file named .jpg; returns the bad ones."""
    folder.mkdir(parents=True, exist_ok=True)
    cat = Image.fromarray(skdata.chelsea())
    cat.save(folder / "a_cat.jpg", quality=90)
    cat.convert("L").resize((90, 120)).save(folder / "b_gray.jpg")
    cat.convert("RGBA").resize((64, 48)).save(folder / "c_rgba.png")
    Image.fromarray(skdata.astronaut()).resize((300, 200)).save(folder / "d_astronaut.JPG")
    full = (folder / "a_cat.jpg").read_bytes()
    (folder / "e_truncated.jpg").write_bytes(full[: len(full) // 2])
    (folder / "f_notes.jpg").write_text("these are not pixels\n")
    return {"e_truncated.jpg": "truncated", "f_notes.jpg": "not an image"}


def test_decode_resize_squashes_any_mode_to_rgb(tmp_path):
    make_images(tmp_path)
    for name in ("a_cat.jpg", "b_gray.jpg", "c_rgba.png", "d_astronaut.JPG"):
        image = decode_resize(tf.constant(str(tmp_path / name)), 50).numpy()
        assert image.shape == (50, 50, 3) and image.dtype == np.float32
        assert 0.0 <= image.min() and image.max() <= 255.0 and image.max() > 1.0
    gray = decode_resize(tf.constant(str(tmp_path / "b_gray.jpg")), 50).numpy()
    np.testing.assert_allclose(gray[..., 0], gray[..., 2])


def test_describe_failure_names_the_problem(tmp_path):
    bad = make_images(tmp_path)
    (tmp_path / "g_empty.jpg").write_bytes(b"")
    for name, reason in bad.items():
        assert reason in describe_failure(tmp_path / name)
    assert describe_failure(tmp_path / "g_empty.jpg") == "empty file"


def test_extraction_skips_bad_files_and_reports_them(tmp_path, capsys):
    bad = make_images(tmp_path / "Images")
    meta = run_extraction(tmp_path / "Images", tmp_path / "features", LITE0)
    names, features, attrs = load_features(tmp_path / "features" / "features.h5")
    assert names == ["a_cat.jpg", "b_gray.jpg", "c_rgba.png", "d_astronaut.JPG"]
    assert features.shape == (4, 1280) and features.dtype == np.float32
    assert np.isfinite(features).all() and not np.allclose(features[0], features[3])
    assert attrs["encoder"] == "efficientnet_lite0" and attrs["output"] == "pooled"
    on_disk = json.loads((tmp_path / "features" / "meta.json").read_text())
    assert on_disk == meta
    assert on_disk["num_images"] == 4 and on_disk["num_files"] == 6 and on_disk["num_skipped"] == 2
    assert on_disk["input_size"] == 224 and on_disk["feature_shape"] == [1280] and on_disk["dtype"] == "float32"
    assert "sha256:" in on_disk["weights_id"]
    assert set(on_disk["skipped"]) == set(bad)
    for name, reason in bad.items():
        assert reason in on_disk["skipped"][name]
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "skipped 2 of 6" in warnings[0] and "e_truncated.jpg" in warnings[0]


def test_features_do_not_depend_on_batching(tmp_path):
    make_images(tmp_path)
    paths = sorted(tmp_path.iterdir())
    names1, one, skipped = extract_features(paths, "efficientnet_lite0", "imagenet", "pooled", 1, progress=False)
    names3, three, _ = extract_features(paths, "efficientnet_lite0", "imagenet", "pooled", 3, progress=False)
    assert names1 == names3 and len(names1) == 4 and set(skipped) == {"e_truncated.jpg", "f_notes.jpg"}
    np.testing.assert_allclose(one, three, rtol=1e-3, atol=1e-3)


def test_grid_features_are_float16_and_pool_to_the_vector(tmp_path):
    make_images(tmp_path)
    paths = [tmp_path / "a_cat.jpg", tmp_path / "d_astronaut.JPG"]
    _, pooled, _ = extract_features(paths, "efficientnet_lite0", "imagenet", "pooled", 2, progress=False)
    _, grid, _ = extract_features(paths, "efficientnet_lite0", "imagenet", "grid", 2, progress=False)
    assert grid.shape == (2, 7, 7, 1280) and grid.dtype == np.float16
    np.testing.assert_allclose(grid.astype(np.float32).mean(axis=(1, 2)), pooled, rtol=1e-2, atol=1e-2)


def test_failed_extraction_leaves_previous_output_alone(tmp_path):
    images = tmp_path / "Images"
    images.mkdir()
    (images / "x.jpg").write_text("not an image")
    out = tmp_path / "features"
    out.mkdir()
    (out / "meta.json").write_text("{}")
    with pytest.raises(CaptionerError, match="none of the 1 files is a readable image"):
        run_extraction(images, out, LITE0)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert (out / "meta.json").read_text() == "{}"


def test_missing_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(CaptionerError, match="image folder not found"):
        run_extraction(tmp_path / "nope", tmp_path / "features", LITE0)


def test_stage_script_writes_data_features(tmp_path, monkeypatch):
    make_images(tmp_path / "data" / "raw" / "Images")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["extract_features.py", "--params", "params.yaml",
                                      "--images", "data/raw/Images", "--out", "data/features"])
    runpy.run_path(str(ROOT / "stages" / "extract_features.py"), run_name="__main__")
    meta = json.loads(Path("data/features/meta.json").read_text())
    assert meta["encoder"] == "efficientnet_lite0" and meta["num_images"] == 4
    assert sorted(os.listdir("data/features")) == ["features.h5", "meta.json"]


def test_bfloat16_extraction_stays_within_cosine_0_99_of_float32(tmp_path):
    from captioner.vision.encoders import build_encoder

    make_images(tmp_path)
    images = np.stack([decode_resize(tf.constant(str(tmp_path / n)), 224).numpy()
                       for n in ("a_cat.jpg", "b_gray.jpg", "c_rgba.png", "d_astronaut.JPG")])
    exact = build_encoder("efficientnet_lite0", "imagenet", "grid").predict_on_batch(images)
    fast = build_encoder("efficientnet_lite0", "imagenet", "grid", "bfloat16").predict_on_batch(images)
    assert fast.dtype == np.float32 and fast.shape == exact.shape == (4, 7, 7, 1280)
    a, b = exact.reshape(4, -1), fast.reshape(4, -1)
    cosine = (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.99 and not np.array_equal(a, b)


def test_extraction_drops_a_decompression_bomb_like_an_undecodable_image(tmp_path, monkeypatch):
    from PIL import Image

    folder = tmp_path / "Images"
    folder.mkdir()
    Image.fromarray(np.full((20, 20, 3), 90, dtype=np.uint8)).save(folder / "a_small.png")
    Image.fromarray(np.zeros((100, 100, 3), dtype=np.uint8)).save(folder / "b_bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    meta = run_extraction(folder, tmp_path / "features", LITE0)
    assert meta["num_images"] == 1 and list(meta["skipped"]) == ["b_bomb.png"]
    assert "decompression bomb" in meta["skipped"]["b_bomb.png"]
