"""The Python API: one Captioner for paths, PIL images, arrays and bytes; beams, scores and attention maps."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("keras")

from helpers_bundle import make_bundle, make_photo  # noqa: E402

from captioner.core.errors import CaptionerError  # noqa: E402


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("api") / "captioner", litert=True)


@pytest.fixture(scope="module")
def captioner(bundle_dir):
    from captioner import Captioner

    return Captioner.load(bundle_dir)  # the bundle has captioner.tflite: the LiteRT runtime


@pytest.fixture(scope="module")
def keras_captioner(bundle_dir):
    from captioner import Captioner

    return Captioner.load(bundle_dir, runtime="keras")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    return [make_photo(folder / "one.jpg", 0), make_photo(folder / "two.png", 1)]


def test_every_kind_of_input_gives_the_same_caption(captioner, photos):
    path = photos[1]
    with Image.open(path) as image:
        pil = image.copy()
    results = captioner.caption([path, str(path), path.read_bytes(), pil, np.asarray(pil)])
    assert len({r.caption for r in results}) == 1
    assert captioner.caption(path)[0].caption == results[0].caption  # one image needs no list
    assert [r.caption for r in captioner.caption(np.stack([np.asarray(pil)] * 2))] == [results[0].caption] * 2
    np.testing.assert_allclose(results[0].attention, results[3].attention, atol=1e-3)


def test_result_holds_beams_scores_and_one_attention_map_per_word(captioner, photos):
    result = captioner.caption(photos, beam_size=3)[0]
    assert result.words and result.caption == " ".join(result.words)
    assert result.log_prob < 0 and len(result.alternatives) == 2
    assert all(b.caption != result.caption and b.log_prob < 0 for b in result.alternatives)
    assert result.attention.shape == (len(result.words), 7, 7)
    np.testing.assert_allclose(result.attention.sum(axis=(1, 2)), 1.0, atol=1e-4)
    as_json = result.to_json()
    assert as_json["caption"] == result.caption and len(as_json["attention"][0]) == 7
    assert captioner.caption(photos[0], beam_size=1)[0].alternatives == []


def test_litert_and_keras_runtimes_agree(captioner, keras_captioner, photos):
    assert captioner.describe()["runtime"] == "litert" and keras_captioner.describe()["runtime"] == "keras"
    lite, keras_ = captioner.caption(photos), keras_captioner.caption(photos)
    assert [r.caption for r in lite] == [r.caption for r in keras_]
    for a, b in zip(lite, keras_):
        assert a.log_prob == pytest.approx(b.log_prob, abs=1e-3)
        assert [x.caption for x in a.alternatives] == [x.caption for x in b.alternatives]
        np.testing.assert_allclose(a.attention, b.attention, atol=1e-4)
    np.testing.assert_allclose(captioner.encode(photos), keras_captioner.encode(photos), atol=2e-3)


def test_eager_and_compiled_captioners_agree(bundle_dir, keras_captioner, photos):
    from captioner import Captioner

    eager = Captioner.load(bundle_dir, compiled=False, runtime="keras")
    assert [r.caption for r in eager.caption(photos)] == [r.caption for r in keras_captioner.caption(photos)]
    done, failed = eager.caption_files([photos[0], photos[0].with_name("missing.jpg")], beam_size=2)
    assert list(done) == [0] and list(failed) == [1]
    files, _ = keras_captioner.caption_files(photos)  # the tf.data pipeline: same pixels as Pillow's
    assert [files[i].caption for i in range(2)] == [r.caption for r in eager.caption(photos)]


def test_litert_runtime_never_imports_tensorflow(bundle_dir, photos):
    code = (
        "import sys; sys.modules['tensorflow'] = sys.modules['keras'] = None\n"
        "from captioner import Captioner\n"
        f"c = Captioner.load({str(bundle_dir)!r})\n"
        f"done, failed = c.caption_files([__import__('pathlib').Path({str(photos[0])!r})])\n"
        "assert c.describe()['runtime'] == 'litert' and list(done) == [0] and not failed, (done, failed)\n"
        "print(done[0].caption)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()


def test_runtime_choice_errors_are_one_line(bundle_dir, tmp_path):
    import shutil

    from captioner import Captioner
    from captioner.model.litert import LITERT_FILE

    plain = make_bundle(tmp_path / "plain")
    assert Captioner.load(plain).describe()["runtime"] == "keras"  # auto: no LiteRT file, Keras
    with pytest.raises(CaptionerError, match=f"lacks {LITERT_FILE}"):
        Captioner.load(plain, runtime="litert")
    with pytest.raises(CaptionerError, match="runtime must be one of"):
        Captioner.load(bundle_dir, runtime="onnx")
    broken = tmp_path / "broken"
    shutil.copytree(bundle_dir, broken)
    (broken / LITERT_FILE).write_bytes(b"not a flatbuffer")
    with pytest.raises(CaptionerError, match="not a captioner LiteRT file"):
        Captioner.load(broken)


def test_litert_export_is_reproducible(bundle_dir):
    import keras

    from captioner.model.bundle import load_bundle
    from captioner.vision.encoders import build_encoder
    from captioner.model.litert import LITERT_FILE, litert_bytes

    bundle = load_bundle(bundle_dir)
    encoder = build_encoder("efficientnet_lite0", "imagenet", "grid")
    assert litert_bytes(encoder, bundle.model) == (bundle_dir / LITERT_FILE).read_bytes()
    assert keras.saving.serialize_keras_object(bundle.model.get_layer("lstm"))["config"]["unroll"] is False


def test_caption_files_reports_failures_by_index(captioner, photos, tmp_path):
    twin = tmp_path / "one.jpg"  # same file name as photos[0], another folder
    twin.write_bytes(photos[0].read_bytes())
    (tmp_path / "notes.jpg").write_text("not pixels")
    done, failed = captioner.caption_files([photos[0], tmp_path / "notes.jpg", twin], batch_size=2)
    assert sorted(done) == [0, 2] and done[0].caption == done[2].caption
    assert list(failed) == [1] and "not an image" in failed[1]


def test_bad_inputs_are_one_line_errors(captioner, photos, tmp_path):
    with pytest.raises(CaptionerError, match="missing.jpg"):
        captioner.caption([tmp_path / "missing.jpg"])
    with pytest.raises(CaptionerError, match="image 1: not an image"):
        captioner.caption([photos[0], b"hello"])
    with pytest.raises(CaptionerError, match="beam size"):
        captioner.caption(photos[0], beam_size=0)
    with pytest.raises(CaptionerError, match="shape"):
        captioner.caption_features(np.zeros((1, 1280), dtype=np.float32))


def test_decoder_without_attention_has_no_maps(tmp_path, photos):
    from captioner import Captioner

    merge = Captioner.load(make_bundle(tmp_path / "merge", kind="merge"), compiled=False)
    result = merge.caption(photos[0])[0]
    assert result.attention is None and result.to_json()["attention"] is None
    assert merge.describe()["attention"] is False and merge.grid_shape is None


def test_import_captioner_stays_light():
    code = ("import sys, captioner; assert 'tensorflow' not in sys.modules; "
            "from captioner import Captioner; assert Captioner.__module__ == 'captioner.serving.api'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
