"""The fine-tuned encoder tail: stage6 features, the tail inside the decoder, its optimizer, and the bundle round trip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from skimage import data as skdata

from captioner.core.errors import CaptionerError
from captioner.model.decoders import DecoderSpec, build_decoder, step_models
from captioner.model.tail import TailAdam, TailSchedule, start_tail, tail_paths
from captioner.vision.efficientnet_lite import TAIL_MODEL
from captioner.core.params import SETTINGS
from captioner.vision.encoders import TAIL_OUTPUTS, build_encoder, output_shape
from helpers_bundle import make_photo
from helpers_model import make_dataset, small_params

LITE0 = "efficientnet_lite0"
IMAGENET = {"encoder": LITE0, "weights": "imagenet"}


def cat_batch() -> np.ndarray:
    """The CC0 `chelsea` cat photo as a (1, 224, 224, 3) float32 0-255 batch."""
    return tf.image.resize(skdata.chelsea()[None].astype("float32"), (224, 224), antialias=True).numpy()


def tail_spec(**changes) -> DecoderSpec:
    """A small attention decoder on Lite0 stage6 maps."""
    return DecoderSpec(**{"kind": "attention", "vocab_size": 30, "feature_shape": (7, 7, 192), "embedding_dim": 8,
                          "units": 16, "dropout": 0.0, "heads": 2, "tail": LITE0, **changes})


def test_stage6_shapes_and_encoders_without_a_tail():
    assert output_shape(LITE0, "stage6") == (7, 7, 192)
    assert output_shape("efficientnet_lite2", "stage6") == (9, 9, 208)
    assert output_shape(LITE0, "stage5") == (14, 14, 112)
    assert SETTINGS["features.output"].choices == ("grid", "pooled", *TAIL_OUTPUTS)  # params.py's copy of the names
    assert output_shape("efficientnet_lite2", "stage5") == (17, 17, 120)  # 260 px: 130, 65, 33, 17, then 9
    assert output_shape(LITE0, "grid") == (7, 7, 1280)
    with pytest.raises(CaptionerError, match="stage6 needs an EfficientNet-Lite encoder"):
        build_encoder("vgg16", "imagenet", "stage6")
    with pytest.raises(ValueError, match="only the attention decoder"):
        build_decoder(tail_spec(kind="merge", feature_shape=(192,)))


def test_stage6_with_inject_or_merge_is_a_one_line_params_error(tmp_path):
    from captioner.core.params import load_params

    path = tmp_path / "params.yaml"
    path.write_text("features:\n  output: stage6\ntrain:\n  decoder: merge\n")
    with pytest.raises(CaptionerError, match=r"params.yaml:4: 'train.decoder': features.output stage6 .* attention"):
        load_params(path)


@pytest.mark.parametrize("output", ["stage6", "stage5"])
def test_tail_at_imagenet_weights_gives_the_grid_the_decoder_saw_before(output):
    """The numerical contract: stage6 (or stage5) maps through the untrained tail are the `grid` output, and the
    decoder's image side (init: state and context) is that of a grid decoder with the same weights."""
    image = cat_batch()
    maps = build_encoder(LITE0, "imagenet", output).predict_on_batch(image)
    grid = build_encoder(LITE0, "imagenet", "grid").predict_on_batch(image)
    model = build_decoder(tail_spec(feature_shape=output_shape(LITE0, output)))
    start_tail(model, IMAGENET, "test")
    np.testing.assert_allclose(model.get_layer(TAIL_MODEL).predict_on_batch(maps), grid, rtol=1e-5, atol=1e-5)
    bf16 = build_encoder(LITE0, "imagenet", output, "bfloat16").predict_on_batch(image)  # features.precision
    assert bf16.dtype == np.float32 and bf16.shape == maps.shape
    cosine = (bf16 * maps).sum() / np.sqrt((bf16 * bf16).sum() * (maps * maps).sum())
    assert cosine > 0.99
    stored = maps.astype(np.float16).astype(np.float32)  # as the feature file keeps it
    np.testing.assert_allclose(model.get_layer(TAIL_MODEL).predict_on_batch(stored), grid, atol=5e-3)

    plain = build_decoder(tail_spec(tail=None, feature_shape=(7, 7, 1280)))
    for layer in plain.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    with_tail, without = step_models(model).init.predict_on_batch(maps), step_models(plain).init.predict_on_batch(grid)
    for a, b in zip(with_tail, without):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_tail_adam_moves_the_tail_at_its_own_rate_from_its_epoch():
    """Adam's first step moves every weight by about its learning rate (m / sqrt(v) = +-1), whatever the gradient's
    scale: the tail's weights move by learning_rate x factor, from `from_epoch` on, and not at all before."""
    keras.utils.set_random_seed(0)
    model = build_decoder(tail_spec())
    start_tail(model, {"encoder": LITE0, "weights": "none"}, "test")
    lr, factor = 1e-3, 0.1
    optimizer = TailAdam(tail_paths(model), learning_rate=lr, epsilon=1e-12)
    model.compile(optimizer=optimizer, loss=lambda y, p: keras.ops.mean(p * p))
    x = [np.random.default_rng(0).normal(size=(2, 7, 7, 192)).astype("float32"), np.ones((2, 3), dtype="int32")]
    tail_before = [w.copy() for w in model.get_layer(TAIL_MODEL).get_weights()]
    other_before = model.get_layer("logits").get_weights()[0].copy()
    data = tf.data.Dataset.from_tensors((tuple(x), np.zeros((128, 30), dtype="float32")))  # one step per epoch
    fit = dict(x=data, verbose=0, shuffle=False, callbacks=[TailSchedule(2, factor)])
    model.fit(epochs=1, **fit)
    assert all(np.array_equal(a, b) for a, b in zip(tail_before, model.get_layer(TAIL_MODEL).get_weights()))
    assert np.abs(model.get_layer("logits").get_weights()[0] - other_before).max() == pytest.approx(lr, rel=1e-3)
    model.fit(epochs=2, initial_epoch=1, **fit)
    moved = [np.abs(a - b).max() for a, b in zip(tail_before, model.get_layer(TAIL_MODEL).get_weights())]
    assert max(moved) == pytest.approx(lr * factor, rel=0.05)  # one step at lr x factor (momentum adds none yet)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A tiny run on Lite0 stage6 features of real photos: train (tail from epoch 2), self-critical, bundle + LiteRT."""
    from captioner.model.finetune import run_finetune
    from captioner.model.training import run_train
    from captioner.vision.features import run_extraction

    root = tmp_path_factory.mktemp("tail")
    made = make_dataset(root, n_images=24, split_sizes=(12, 6, 6))
    for i, name in enumerate(made["names"]):
        make_photo(root / "data/raw/Images" / name, seed=i)
    run_extraction(root / "data/raw/Images", root / "data/features",
                   {"encoder": LITE0, "weights": "imagenet", "output": "stage6", "batch_size": 8,
                    "precision": "float32"})
    params = small_params("attention", scst={"epochs": 1, "litert": True}, epochs=3, patience=5,
                          captions_per_image=5, batch_size=20, tail_learning_rate=0.003, tail_from_epoch=2)
    out = {name: root / name for name in ("xe", "xe2", "captioner")}
    args = (root / "data/features", root / "data/processed")
    run_train(params, *args, out["xe"], root / "train.json", None, verbose=0)
    run_train(params, *args, out["xe2"], root / "train2.json", None, verbose=0)
    run_finetune(params, *args, out["xe"], out["captioner"], root / "finetune.json", None)
    return root, made, out


def tail_weights(bundle: Path) -> list[np.ndarray]:
    """The tail's weights in a bundle's decoder."""
    from captioner.model.bundle import load_bundle

    return load_bundle(bundle).model.get_layer(TAIL_MODEL).get_weights()


def test_bundle_records_and_trains_the_tail_deterministically(pipeline):
    root, _, out = pipeline
    config = json.loads((out["xe"] / "config.json").read_text())
    assert config["encoder"]["output"] == "stage6" and config["decoder"]["tail"] == LITE0
    assert config["feature_shape"] == [7, 7, 192]
    assert (out["xe"] / "decoder.keras").read_bytes() == (out["xe2"] / "decoder.keras").read_bytes()
    imagenet = build_decoder(tail_spec())
    start_tail(imagenet, IMAGENET, "test")
    trained = tail_weights(out["xe"])
    assert any(not np.allclose(a, b) for a, b in zip(trained, imagenet.get_layer(TAIL_MODEL).get_weights()))
    # self-critical training leaves the tail as cross-entropy left it
    assert all(np.array_equal(a, b) for a, b in zip(trained, tail_weights(out["captioner"])))


def test_bundle_encoder_gives_the_stored_features_and_litert_agrees(pipeline):
    from captioner import Captioner
    from captioner.vision.feature_store import load_features

    root, made, out = pipeline
    names, stored, _ = load_features(root / "data/features/features.h5")
    photos = [root / "data/raw/Images" / name for name in made["splits"]["test"]]
    keras_captioner = Captioner.load(out["captioner"], runtime="keras")
    lite = Captioner.load(out["captioner"], runtime="litert")
    rows = [names.index(p.name) for p in photos]
    encoded = keras_captioner.encode(photos)
    assert encoded.shape == (len(photos), 7, 7, 192) and encoded.dtype == stored.dtype
    one_step = dict(rtol=1e-3, atol=1e-2)  # float16 keeps 11 bits: values of 8-16 differ in steps of 0.0078
    np.testing.assert_allclose(encoded.astype(np.float32), stored[rows].astype(np.float32), **one_step)
    np.testing.assert_allclose(lite.encode(photos).astype(np.float32), encoded.astype(np.float32), **one_step)
    by_keras, by_lite = keras_captioner.caption(photos), lite.caption(photos)
    assert [r.caption for r in by_lite] == [r.caption for r in by_keras]
    for a, b in zip(by_lite, by_keras):
        assert a.log_prob == pytest.approx(b.log_prob, abs=1e-3)
        assert a.attention.shape == (len(a.words), 7, 7)
    stored_captions = keras_captioner.caption_features(stored[rows])
    assert [r.caption for r in stored_captions] == [r.caption for r in by_keras]


def test_a_tail_bundle_captions_on_litert_without_tensorflow(pipeline):
    """`captioner predict`'s fast start: checking a stage6 bundle must not import Keras (it pulls in TensorFlow)."""
    root, made, out = pipeline
    photo = root / "data/raw/Images" / made["splits"]["test"][0]
    code = (
        "import sys; sys.modules['tensorflow'] = sys.modules['keras'] = None\n"
        "from captioner import Captioner\n"
        f"c = Captioner.load({str(out['captioner'])!r})\n"
        f"assert c.describe()['runtime'] == 'litert'\n"
        f"print(c.caption({str(photo)!r})[0].caption)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip()


def test_a_stage6_feature_file_is_refused_for_a_decoder_without_the_tail(tmp_path):
    from captioner.vision.feature_store import FeatureReader, prepare_features, write_features

    path = tmp_path / "features.h5"
    rows = np.ones((2, 7, 7, 192), dtype=np.float16)
    write_features(path, ["a.jpg", "b.jpg"], rows.shape[1:], rows.dtype, [rows], {"output": "stage6"})
    with FeatureReader(path) as reader:
        with pytest.raises(CaptionerError, match="holds stage6 maps, which only the attention decoder takes"):
            prepare_features(reader, "merge", str(path))
        assert prepare_features(reader, "attention", str(path)) is reader


def test_bundle_with_a_tail_that_does_not_fit_the_encoder_is_a_one_line_error(pipeline, tmp_path):
    import shutil

    from captioner.model.bundle import read_config

    _, _, out = pipeline
    bundle = Path(shutil.copytree(out["xe"], tmp_path / "bundle"))
    config = json.loads((bundle / "config.json").read_text())
    del config["decoder"]["tail"]
    (bundle / "config.json").write_text(json.dumps(config))
    with pytest.raises(CaptionerError, match=r"'decoder.tail' is None but encoder output 'stage6' needs"):
        read_config(bundle)


TWO_DEVICES = """
import json, sys
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from pathlib import Path
from captioner.model.training import run_train

root, params = Path(sys.argv[1]), json.loads(sys.argv[2])
print(json.dumps(run_train(params, root / "data/features", root / "data/processed", root / "two", root / "two.json",
                           None, verbose=0)))
"""


def test_two_devices_train_the_tail(pipeline):
    """TailAdam under MirroredStrategy: the tail trains on two (logical) devices too, and the bundle loads on one."""
    import os
    import subprocess
    import sys

    root, _, out = pipeline
    params = small_params("attention", epochs=2, patience=5, devices=2, captions_per_image=5, batch_size=20,
                          tail_learning_rate=0.003, tail_from_epoch=1)  # the tail moves in every epoch early stopping may keep
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([sys.executable, "-c", TWO_DEVICES, str(root), json.dumps(params)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout.strip().splitlines()[-1])["devices"] == 2
    imagenet = build_decoder(tail_spec())
    start_tail(imagenet, IMAGENET, "test")
    moved = [np.abs(a - b).max() for a, b in zip(tail_weights(root / "two"), imagenet.get_layer(TAIL_MODEL).get_weights())]
    assert 0 < max(moved) < 0.1  # at most 2 epochs of 3 steps at 0.003: moved, and by about that much


def test_a_stage5_bundle_gives_the_extracted_maps_and_captions_alike_on_keras_and_litert(tmp_path):
    """features.output stage5: extraction stops after stage 5 (14x14x112) and the decoder runs stages 6-7 and the head
    (2.7 M weights, ImageNet at the start); the bundle's encoder gives the maps extraction stored, and LiteRT agrees."""
    from captioner import Captioner
    from captioner.vision.feature_store import load_features
    from captioner.vision.features import run_extraction
    from helpers_bundle import make_bundle

    (tmp_path / "Images").mkdir()
    photos = [make_photo(tmp_path / "Images" / f"{i}.jpg", seed=i) for i in range(3)]
    run_extraction(tmp_path / "Images", tmp_path / "features",
                   {"encoder": LITE0, "weights": "imagenet", "output": "stage5", "batch_size": 8, "precision": "float32"})
    names, stored, _ = load_features(tmp_path / "features/features.h5")
    make_bundle(tmp_path / "bundle", litert=True, output="stage5")

    by_keras, lite = (Captioner.load(tmp_path / "bundle", runtime=r) for r in ("keras", "litert"))
    encoded = by_keras.encode(photos)
    assert encoded.shape == (3, 14, 14, 112)
    one_step = dict(rtol=1e-3, atol=1e-2)  # float16 storage
    np.testing.assert_allclose(encoded.astype(np.float32), stored[[names.index(p.name) for p in photos]], **one_step)
    np.testing.assert_allclose(lite.encode(photos).astype(np.float32), encoded.astype(np.float32), **one_step)
    keras_captions, lite_captions = by_keras.caption(photos), lite.caption(photos)
    assert [c.caption for c in lite_captions] == [c.caption for c in keras_captions]
    assert all(c.words for c in keras_captions)
    for a, b in zip(lite_captions, keras_captions):
        assert a.log_prob == pytest.approx(b.log_prob, abs=1e-3)
        assert a.attention.shape == (len(a.words), 7, 7)  # attention over the tail's output grid, not the 14x14 map
