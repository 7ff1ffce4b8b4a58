"""Encoder registry, EfficientNet-Lite port and the torch-free `.pth` reader."""

from __future__ import annotations

import collections
import io
import pickle
import struct
import urllib.error
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from skimage import data as skdata

from captioner.vision import efficientnet_lite
from captioner.vision.encoders import ENCODERS, build_encoder, get_spec, weights_id
from captioner.core.errors import CaptionerError
from captioner.vision.pth_reader import LEGACY_MAGIC, read_state_dict

CAT_CLASSES = set(range(281, 286))  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(autouse=True)
def weights_cache(tmp_path, monkeypatch) -> Path:
    """Converted weights go to a per-test folder, never the user's cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("CAPTIONER_CACHE", str(cache))
    return cache


def cat_batch(size: int) -> np.ndarray:
    """The CC0 `chelsea` cat photo as a (1, size, size, 3) float32 0-255 batch."""
    image = tf.image.resize(skdata.chelsea()[None].astype("float32"), (size, size), antialias=True)
    return image.numpy()


# --- EfficientNet-Lite port ---------------------------------------------------------------------


def test_lite0_classifier_sees_a_cat(weights_cache):
    probs = efficientnet_lite.build_classifier("efficientnet_lite0").predict_on_batch(cat_batch(224))[0]
    top5 = set(np.argsort(-probs)[:5].tolist())
    assert top5 & CAT_CLASSES, f"top-5 {sorted(top5)} has no cat class"
    assert probs.argmax() in CAT_CLASSES
    cached = list(weights_cache.glob("efficientnet_lite0-*.weights.h5"))
    assert len(cached) == 1
    again = efficientnet_lite.build_classifier("efficientnet_lite0").predict_on_batch(cat_batch(224))[0]
    np.testing.assert_allclose(again, probs, atol=1e-6)


@pytest.mark.parametrize("name, size", [("efficientnet_lite1", 240), ("efficientnet_lite2", 260)])
def test_larger_lites_see_a_cat(name, size):
    probs = efficientnet_lite.build_classifier(name).predict_on_batch(cat_batch(size))[0]
    assert probs.argmax() in CAT_CLASSES, f"top-5 {np.argsort(-probs)[:5].tolist()}"
    spec = get_spec(name)
    grid = build_encoder(name, "imagenet", "grid").predict_on_batch(cat_batch(size))
    assert spec.input_size == size and grid.shape == (1, *spec.grid_shape)


def test_lite0_pooled_is_mean_of_grid():
    image = cat_batch(224)
    pooled = build_encoder("efficientnet_lite0", "imagenet", "pooled").predict_on_batch(image)
    grid = build_encoder("efficientnet_lite0", "imagenet", "grid").predict_on_batch(image)
    assert pooled.shape == (1, 1280) and grid.shape == (1, 7, 7, 1280)
    np.testing.assert_allclose(pooled, grid.mean(axis=(1, 2)), rtol=1e-4, atol=1e-4)


def test_lite2_shapes_without_weights():
    spec = get_spec("efficientnet_lite2")
    grid = build_encoder("efficientnet_lite2", "none", "grid").predict_on_batch(np.zeros((1, 260, 260, 3), "float32"))
    assert spec.input_size == 260 and grid.shape == (1, *spec.grid_shape) == (1, 9, 9, 1280)


def test_corrupt_weights_cache_is_rebuilt(weights_cache):
    efficientnet_lite.build_classifier("efficientnet_lite0")
    (cached,) = weights_cache.glob("*.weights.h5")
    cached.write_bytes(b"garbage")
    model = efficientnet_lite.build_classifier("efficientnet_lite0")
    assert model.predict_on_batch(cat_batch(224))[0].argmax() in CAT_CLASSES


def test_weights_id_hashes_the_weights_source():
    ident = weights_id("efficientnet_lite0", "imagenet")
    assert ident.startswith("imagenet (efficientnet-lite0-") and "sha256:57934424" in ident
    assert weights_id("vgg16", "none").startswith("none")


# --- the restricted .pth reader -----------------------------------------------------------------


def _rebuild_tensor_v2(*args):
    """Placeholder pickled under torch's name (the pickle bytes are renamed after dumping)."""


class FloatStorage:
    """Placeholder pickled under torch's name."""


class _StorageRef:
    def __init__(self, key: str, numel: int) -> None:
        self.key, self.numel = key, numel


class _TensorRef:
    def __init__(self, storage: _StorageRef, offset: int, size: tuple, stride: tuple) -> None:
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return _rebuild_tensor_v2, self.args


class _TorchLikePickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            return ("storage", FloatStorage, obj.key, "cpu", obj.numel)
        return None


def torch_like_pickle(obj) -> bytes:
    """Pickle `obj` (protocol 2) as torch would, with the placeholders renamed to torch's names."""
    buffer = io.BytesIO()
    _TorchLikePickler(buffer, protocol=2).dump(obj)
    here = __name__.encode()
    return (
        buffer.getvalue()
        .replace(here + b"\n_rebuild_tensor_v2\n", b"torch._utils\n_rebuild_tensor_v2\n")
        .replace(here + b"\nFloatStorage\n", b"torch\nFloatStorage\n")
    )


def sample_state():
    """A state dict sharing one storage: a 2x3 tensor, its transpose (strided) and an offset 1-d slice."""
    values = np.arange(8, dtype="<f4")
    storage = _StorageRef("0", values.size)
    state = collections.OrderedDict(
        a=_TensorRef(storage, 0, (2, 3), (3, 1)),
        a_t=_TensorRef(storage, 0, (3, 2), (1, 3)),
        tail=_TensorRef(storage, 6, (2,), (1,)),
    )
    return state, values


def write_legacy(path: Path, obj, storages: dict[str, np.ndarray]) -> None:
    parts = [pickle.dumps(LEGACY_MAGIC, protocol=2), pickle.dumps(1001, protocol=2),
             pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2),
             torch_like_pickle(obj), pickle.dumps(list(storages), protocol=2)]
    for values in storages.values():
        parts += [struct.pack("<q", values.size), values.tobytes()]
    path.write_bytes(b"".join(parts))


def write_zip(path: Path, obj, storages: dict[str, np.ndarray]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", torch_like_pickle(obj))
        for key, values in storages.items():
            archive.writestr(f"archive/data/{key}", values.tobytes())


@pytest.mark.parametrize("writer", [write_legacy, write_zip])
def test_reader_rebuilds_strided_tensors(tmp_path, writer):
    state, values = sample_state()
    path = tmp_path / "state.pth"
    writer(path, state, {"0": values})
    loaded = read_state_dict(path)
    np.testing.assert_array_equal(loaded["a"], values[:6].reshape(2, 3))
    np.testing.assert_array_equal(loaded["a_t"], values[:6].reshape(2, 3).T)
    np.testing.assert_array_equal(loaded["tail"], values[6:])
    assert loaded["a"].dtype == np.float32


def test_reader_reads_the_packaged_lite0_file():
    state = read_state_dict(efficientnet_lite.package_weights_path("efficientnet_lite0"))
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)


class _Exploit:
    def __init__(self, func, arg) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("where", ["header", "state", "zip"])
@pytest.mark.parametrize("func", ["os.system", "builtins.eval"])
def test_reader_refuses_malicious_pickles(tmp_path, where, func):
    marker = tmp_path / "pwned"
    module, name = func.split(".")
    code = f"touch {marker}" if name == "system" else f"open({str(marker)!r}, 'w')"
    payload = _Exploit(getattr(__import__(module), name), code)
    path = tmp_path / "evil.pth"
    if where == "header":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    elif where == "state":
        write_legacy(path, collections.OrderedDict(w=payload), {})
    else:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", pickle.dumps({"w": payload}, protocol=2))
    with pytest.raises(CaptionerError, match="refusing to load"):
        read_state_dict(path)
    assert not marker.exists()


def test_reader_refuses_a_view_outside_its_storage(tmp_path):
    values = np.arange(4, dtype="<f4")
    path = tmp_path / "oob.pth"
    write_legacy(path, collections.OrderedDict(w=_TensorRef(_StorageRef("0", 4), 2, (1000,), (1,))), {"0": values})
    with pytest.raises(CaptionerError, match="outside its storage"):
        read_state_dict(path)


def test_reader_refuses_truncated_file(tmp_path):
    state, values = sample_state()
    path = tmp_path / "short.pth"
    write_legacy(path, state, {"0": values})
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(CaptionerError, match="truncated"):
        read_state_dict(path)


# --- registry and Keras Applications ------------------------------------------------------------


def test_unknown_names_are_one_line_errors():
    with pytest.raises(CaptionerError, match="known: efficientnet_lite0, efficientnet_lite1, efficientnet_lite2, vgg"):
        get_spec("vgg19")
    with pytest.raises(CaptionerError, match="features.output"):
        build_encoder("vgg16", "none", "spatial")
    with pytest.raises(CaptionerError, match="not imagenet, none or an existing weights file"):
        build_encoder("vgg16", "/no/such/file.h5", "pooled")


def test_vgg16_pooled_is_fc2_and_grid_is_block5_conv3():
    image = np.random.default_rng(0).uniform(0, 255, (1, 224, 224, 3)).astype("float32")
    pooled = build_encoder("vgg16", "none", "pooled")
    grid = build_encoder("vgg16", "none", "grid")
    assert pooled.predict_on_batch(image).shape == (1, 4096)
    assert grid.predict_on_batch(image).shape == (1, 14, 14, 512)
    assert pooled.layers[-1].output.shape[1:] == (4096,)
    assert get_spec("vgg16").grid_shape == (14, 14, 512)


@pytest.mark.parametrize("name", ["resnet50", "inception_v3"])
def test_keras_application_shapes_match_spec(name):
    spec = ENCODERS[name]
    image = np.zeros((1, spec.input_size, spec.input_size, 3), "float32")
    assert build_encoder(name, "none", "pooled").predict_on_batch(image).shape == (1, spec.pooled_dim)
    assert build_encoder(name, "none", "grid").predict_on_batch(image).shape == (1, *spec.grid_shape)


@pytest.mark.parametrize("name", ["vgg16", "resnet50", "inception_v3"])
def test_imagenet_offline_fails_in_one_line(tmp_path, monkeypatch, name):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("keras.src.utils.file_utils.urlretrieve", offline)
    monkeypatch.setattr("keras.src.backend.config._KERAS_DIR", str(tmp_path / "keras"))
    with pytest.raises(CaptionerError) as info:
        build_encoder(name, "imagenet", "pooled")
    message = str(info.value)
    assert "\n" not in message
    assert "efficientnet_lite0" in message and "local" in message and "URL fetch failure" in message


def test_vgg16_loads_a_local_weights_file(tmp_path):
    reference = keras.applications.VGG16(weights=None)
    path = tmp_path / "vgg16.weights.h5"
    reference.save_weights(path)
    image = np.random.default_rng(1).uniform(0, 255, (1, 224, 224, 3)).astype("float32")
    expected = keras.Model(reference.input, reference.get_layer("fc2").output).predict_on_batch(
        keras.applications.vgg16.preprocess_input(image.copy())
    )
    got = build_encoder("vgg16", str(path), "pooled").predict_on_batch(image)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert weights_id("vgg16", str(path)).startswith("file vgg16.weights.h5 sha256:")


@pytest.mark.filterwarnings("ignore:Skipping nested container:UserWarning")
def test_a_weights_file_for_another_model_is_refused(tmp_path):
    path = tmp_path / "small.weights.h5"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save_weights(path)
    with pytest.raises(CaptionerError, match="does not load into vgg16"):
        build_encoder("vgg16", str(path), "pooled")
