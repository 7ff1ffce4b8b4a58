"""Fused encoders (`a+b`): one model whose output is each member's own features, resized and concatenated."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import yaml
from skimage import data as skdata

from captioner.core.errors import CaptionerError
from captioner.vision.encoders import build_encoder, find_spec, get_spec, weights_id
from captioner.vision.resize import AntialiasResize

ROOT = Path(__file__).resolve().parents[1]
LITE0_LITE2 = "efficientnet_lite0+efficientnet_lite2"
LITE0_LITE1 = "efficientnet_lite0+efficientnet_lite1"


@pytest.fixture(autouse=True)
def weights_cache(tmp_path_factory, monkeypatch) -> Path:
    """Converted weights go to one folder for this module's tests, never the user's cache."""
    cache = tmp_path_factory.getbasetemp() / "fused-weights-cache"
    monkeypatch.setenv("CAPTIONER_CACHE", str(cache))
    return cache


def resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """TensorFlow's own antialiased bilinear resize (the reference the fused model's layer must match)."""
    return tf.image.resize(x, size, antialias=True).numpy()


def cat(size: int) -> np.ndarray:
    """The CC0 `chelsea` cat photo as a (1, size, size, 3) float32 0-255 batch."""
    return resize(skdata.chelsea()[None].astype("float32"), (size, size))


@pytest.mark.parametrize("shape", [(260, 260, 224, 224), (240, 240, 224, 224), (9, 9, 7, 7), (8, 8, 7, 7),
                                   (7, 7, 9, 9), (5, 7, 3, 11)])
def test_resize_layer_matches_tensorflow_antialias(shape):
    in_h, in_w, out_h, out_w = shape
    x = np.random.default_rng(0).uniform(0, 255, (2, in_h, in_w, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(AntialiasResize(out_h, out_w)(x)), resize(x, (out_h, out_w)),
                               atol=1e-2, rtol=1e-5)


def test_spec_of_a_fusion():
    spec = get_spec(LITE0_LITE2)
    assert spec.members == ("efficientnet_lite0", "efficientnet_lite2")
    assert (spec.input_size, spec.grid_shape, spec.pooled_dim) == (260, (7, 7, 2560), 2560)
    assert get_spec("efficientnet_lite2+efficientnet_lite0").grid_shape == (9, 9, 2560)  # the first member's grid
    assert get_spec("efficientnet_lite1").grid_shape == (8, 8, 1280)
    assert find_spec("efficientnet_lite0+efficientnet_lite9") is None and find_spec(LITE0_LITE2) == spec
    ident = weights_id(LITE0_LITE2, "imagenet")
    assert "sha256:57934424" in ident and "sha256:9656183e" in ident


def test_fused_grid_is_the_members_grids_resized_and_concatenated():
    image = cat(260)
    fused = build_encoder(LITE0_LITE2, "imagenet", "grid").predict_on_batch(image)
    lite0 = build_encoder("efficientnet_lite0", "imagenet", "grid").predict_on_batch(resize(image, (224, 224)))
    lite2 = build_encoder("efficientnet_lite2", "imagenet", "grid").predict_on_batch(image)
    expected = np.concatenate([lite0, resize(lite2, (7, 7))], axis=-1)
    assert fused.shape == (1, 7, 7, 2560)
    np.testing.assert_allclose(fused, expected, atol=1e-3)


def test_fused_pooled_is_the_members_vectors_concatenated():
    image = cat(240)
    fused = build_encoder(LITE0_LITE1, "imagenet", "pooled").predict_on_batch(image)
    lite0 = build_encoder("efficientnet_lite0", "imagenet", "pooled").predict_on_batch(resize(image, (224, 224)))
    lite1 = build_encoder("efficientnet_lite1", "imagenet", "pooled").predict_on_batch(image)
    np.testing.assert_allclose(fused, np.concatenate([lite0, lite1], axis=-1), atol=1e-3)


@pytest.mark.parametrize("name, weights, message", [
    ("efficientnet_lite0+efficientnet_lite9", "none", "unknown encoder 'efficientnet_lite9' in "),
    ("efficientnet_lite0+", "none", "unknown encoder '' in "),
    ("efficientnet_lite0+efficientnet_lite0", "none", "names an encoder twice"),
    (LITE0_LITE2, __file__, "takes imagenet or none"),
])
def test_bad_fusions_are_one_line_errors(name, weights, message):
    with pytest.raises(CaptionerError, match=message) as info:
        build_encoder(name, weights, "grid")
    assert "\n" not in str(info.value)


def test_extraction_stage_refuses_an_unknown_member_in_one_line(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["features"]["encoder"] = "efficientnet_lite0+resnet5O"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "Images").mkdir()
    run = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "extract_features.py"), "--params", str(tmp_path / "params.yaml"),
         "--images", str(tmp_path / "Images"), "--out", str(tmp_path / "features")],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.returncode == 1 and len(errors) == 1, run.stderr
    assert errors[0].startswith(f"error: {tmp_path / 'params.yaml'}:")  # the file and line that set it
    assert "features.encoder: unknown encoder 'resnet5O' in 'efficientnet_lite0+resnet5O'" in errors[0]
    assert not (tmp_path / "features").exists()


def test_fused_bundle_round_trip_on_the_sample(tmp_path):
    """Extract sample images with a fused encoder, save a bundle (LiteRT too), load it: same features, same captions."""
    import keras

    from captioner import Captioner
    from captioner.data.datasets.sample import generate_sample
    from captioner.data.text import Vocabulary
    from captioner.model.bundle import make_config, read_config, save_bundle
    from captioner.model.decoders import DecoderSpec, build_decoder
    from captioner.vision.feature_store import load_features
    from captioner.vision.features import run_extraction

    generate_sample(tmp_path / "raw", 10, 0)
    images = sorted((tmp_path / "raw" / "Images").iterdir())[:6]
    folder = tmp_path / "images"
    folder.mkdir()
    for path in images:
        (folder / path.name).write_bytes(path.read_bytes())
    params = {"encoder": LITE0_LITE1, "weights": "imagenet", "output": "grid", "batch_size": 4, "precision": "float32"}
    meta = run_extraction(folder, tmp_path / "features", params)
    assert meta["feature_shape"] == [7, 7, 2560] and meta["input_size"] == 240
    names, stored, _ = load_features(tmp_path / "features" / "features.h5")

    keras.utils.set_random_seed(0)
    vocab = Vocabulary.build(["a red circle on grass", "a blue square on a white table"], min_count=1,
                             max_length_percentile=100)
    model = build_decoder(DecoderSpec("attention", len(vocab), (7, 7, 2560), 8, 16, 0.0))
    encoder_config = {k: meta[k] for k in ("weights_id", "input_size", "preprocessing", "output")}
    config = make_config(
        {"name": LITE0_LITE1, "weights": "imagenet", **encoder_config}, (7, 7, 2560),
        {"kind": "attention", "embedding_dim": 8, "units": 16, "dropout": 0.0, "vocab_size": len(vocab)},
        {"beam_size": 2, "max_length": vocab.max_length, "length_alpha": 1.0},
    )
    bundle = tmp_path / "bundle"
    save_bundle(bundle, model, vocab, config, build_encoder(LITE0_LITE1, "imagenet", "grid"))
    assert read_config(bundle)["encoder"]["name"] == LITE0_LITE1

    paths = [folder / name for name in names]
    lite, tf_runtime = Captioner.load(bundle, runtime="litert"), Captioner.load(bundle, runtime="keras")
    on_keras, on_lite = tf_runtime.encode(paths).astype("float32"), lite.encode(paths).astype("float32")
    np.testing.assert_allclose(on_keras, stored.astype("float32"), atol=2e-2)  # float16 grids, Pillow vs tf.data
    np.testing.assert_allclose(on_lite, on_keras, atol=5e-3)  # LiteRT's builtin ops vs Keras, one float16 step
    assert [c.caption for c in lite.caption(paths)] == [c.caption for c in tf_runtime.caption(paths)]


def test_bundle_naming_a_fusion_must_have_its_input_size(tmp_path):
    from captioner.model.bundle import _check_encoder

    config = {"encoder": {"name": LITE0_LITE2, "input_size": 224, "output": "grid"}, "feature_shape": [7, 7, 2560]}
    with pytest.raises(CaptionerError, match="takes 260x260 images"):
        _check_encoder(tmp_path / "config.json", config)
    config["encoder"]["input_size"] = 260
    config["feature_shape"] = [9, 9, 2560]
    with pytest.raises(CaptionerError, match=r"features are \[7, 7, 2560\]"):
        _check_encoder(tmp_path / "config.json", config)
