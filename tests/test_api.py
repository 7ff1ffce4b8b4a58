"""The Python API: one Captioner for paths, PIL images, arrays and bytes; beams, scores and attention maps."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("keras")

from helpers_bundle import make_bundle, make_photo  # noqa: E402

from captioner.errors import CaptionerError  # noqa: E402


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("api") / "captioner")


@pytest.fixture(scope="module")
def captioner(bundle_dir):
    from captioner import Captioner

    return Captioner.load(bundle_dir)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    return [make_photo(folder / "one.jpg", 0), make_photo(folder / "two.png", 1)]


def test_every_kind_of_input_gives_the_same_caption(captioner, photos):
    path = photos[1]  # PNG: lossless, so Pillow and TensorFlow decode the same pixels
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


def test_eager_and_compiled_captioners_agree(bundle_dir, captioner, photos):
    from captioner import Captioner

    eager = Captioner.load(bundle_dir, compiled=False)
    assert [r.caption for r in eager.caption(photos)] == [r.caption for r in captioner.caption(photos)]
    done, failed = eager.caption_files([photos[0], photos[0].with_name("missing.jpg")], beam_size=2)
    assert list(done) == [0] and list(failed) == [1]


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
            "from captioner import Captioner; assert Captioner.__module__ == 'captioner.api'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
