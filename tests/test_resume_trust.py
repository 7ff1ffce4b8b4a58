"""The extraction resume folder is trusted no further than its checks: a tampered piece is re-encoded, never used."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import save_image

from captioner.core.errors import CaptionerError
from captioner.vision import features as extraction
from captioner.vision.features import resume_folder, run_extraction
from captioner.vision.resume_store import ResumeStore

IMAGES = [f"img_{i:02d}.jpg" for i in range(4)]
SHAPE = (3, 3, 8)


def resave(path: Path, **changes: np.ndarray) -> None:
    """Rewrite a stored piece with some arrays replaced, keeping every other array (its checksum too)."""
    with np.load(path) as piece:
        arrays = {name: piece[name] for name in piece.files}
    arrays.update(changes)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())


@pytest.fixture
def store(tmp_path) -> ResumeStore:
    """A store holding one good piece `k`: images 0, 1, 3 encoded, image 2 skipped."""
    store = ResumeStore(tmp_path / "features.resume")
    features = np.random.default_rng(0).normal(size=(3, *SHAPE)).astype(np.float16)
    store.save("k", [IMAGES[0], IMAGES[1], IMAGES[3]], features, {IMAGES[2]: "not an image"})
    return store


def test_a_piece_this_run_wrote_is_reused(store):
    assert store.problem("k", IMAGES, SHAPE, np.float16) is None
    assert store.names_and_skipped("k") == ([IMAGES[0], IMAGES[1], IMAGES[3]], {IMAGES[2]: "not an image"})


def _copies_of_one_name(store):
    features = store.features("k")
    store.save("k", [IMAGES[0]] * 3, features, {IMAGES[2]: "not an image"})


def _zeros(store):
    resave(store.path("k"), features=np.zeros((3, *SHAPE), dtype=np.float16))


def _wrong_shape(store):
    store.save("k", [IMAGES[0], IMAGES[1], IMAGES[3]], np.ones((3, 5), np.float16), {IMAGES[2]: "not an image"})


def _too_few_rows(store):
    resave(store.path("k"), features=store.features("k")[:2])


def _nan(store):
    features = store.features("k")
    features[1, 0, 0, 0] = np.nan
    store.save("k", [IMAGES[0], IMAGES[1], IMAGES[3]], features, {IMAGES[2]: "not an image"})


def _float32(store):
    features = store.features("k").astype(np.float32)
    store.save("k", [IMAGES[0], IMAGES[1], IMAGES[3]], features, {IMAGES[2]: "not an image"})


def _another_pieces_file(store):
    store.save("other", [IMAGES[0], IMAGES[1], IMAGES[3]], store.features("k") + 1, {IMAGES[2]: "not an image"})
    shutil.copy(store.path("other"), store.path("k"))


def _skipped_outsider(store):
    store.save("k", [IMAGES[0], IMAGES[1], IMAGES[3]], store.features("k"), {"elsewhere.jpg": "not an image"})


def _no_checksum(store):
    with np.load(store.path("k")) as piece:
        arrays = {name: piece[name] for name in piece.files if name != "checksum"}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    store.path("k").write_bytes(buffer.getvalue())


def _garbage(store):
    store.path("k").write_bytes(b"PK\x03\x04 half a piece")


@pytest.mark.parametrize("tamper, reason", [
    (_copies_of_one_name, "its names are not the images of this piece in order (name 1 is 'img_00.jpg', "
                          "expected 'img_01.jpg')"),
    (_zeros, "its checksum does not match its contents (changed after it was written)"),
    (_wrong_shape, "features of shape (3, 5), expected (3, 3, 3, 8)"),
    (_too_few_rows, "2 feature rows for 3 names"),
    (_nan, "1 rows hold NaN or infinite values (first: img_01.jpg)"),
    (_float32, "features of dtype float32, expected float16"),
    (_another_pieces_file, "its checksum does not match its contents (changed after it was written)"),
    (_skipped_outsider, "its skipped images are not images of this piece"),
    (_no_checksum, "it lacks checksum"),
    (_garbage, "unreadable ("),
])
def test_a_tampered_piece_is_refused_with_its_reason(store, tamper, reason):
    tamper(store)
    problem = store.problem("k", IMAGES, SHAPE, np.float16)
    assert problem is not None and problem.startswith(reason), problem
    if not problem.startswith(("features of", "its names", "its skipped", "1 rows")):  # those pass the checksum
        with pytest.raises(CaptionerError, match=f"^{store.path('k')}: damaged resume file"):
            store.features("k")


def test_extraction_discards_tampered_pieces_and_writes_what_an_uninterrupted_run_writes(tmp_path, monkeypatch,
                                                                                           capsys):
    monkeypatch.setattr(extraction, "PIECE_BATCHES", 1)  # pieces of one batch: 2 images
    images = tmp_path / "Images"
    images.mkdir()
    for i in range(8):
        save_image(images / f"img_{i:02d}.jpg", 40 + i)
    (images / "img_03b.jpg").write_text("not an image")  # sorted after img_03.jpg: the third piece, skipped
    params = {"encoder": "efficientnet_lite0", "weights": "imagenet", "output": "pooled", "batch_size": 2,
              "precision": "float32"}
    out = tmp_path / "features"
    with monkeypatch.context() as keep:  # an uninterrupted run, whose pieces stay behind as if it was killed
        keep.setattr(ResumeStore, "remove", lambda self: None)
        run_extraction(images, out, params)
    whole = (out / "features.h5").read_bytes()
    shutil.rmtree(out)
    store = ResumeStore(resume_folder(out))
    pieces = sorted(store.folder.glob("*.npz"), key=lambda p: str(np.load(p)["names"][0]))
    assert len(pieces) == 5
    keys = [p.stem for p in pieces]
    names, features = store.names_and_skipped(keys[0])[0], store.features(keys[0])
    store.save(keys[0], [names[0]] * len(names), features, {})  # well formed, but one name twice
    resave(pieces[1], features=np.zeros_like(store.features(keys[1])))  # all zeros, old checksum
    resave(pieces[2], features=store.features(keys[2])[:, :640])  # wrong feature shape
    resave(pieces[3], features=store.features(keys[3])[:1])  # too few rows
    capsys.readouterr()

    run_extraction(images, out, params)

    err = capsys.readouterr().err
    discarded = [line for line in err.splitlines() if line.startswith("warning: discarded")]
    assert len(discarded) == 4, err
    assert discarded[0].startswith(f"warning: discarded {pieces[0]} (images img_00.jpg to img_01.jpg): "
                                   "its names are not the images of this piece in order")
    assert "(images img_02.jpg to img_03.jpg): its checksum does not match" in discarded[1]
    assert "(images img_03b.jpg to img_04.jpg): features of shape (1, 640), expected (1, 1280)" in discarded[2]
    assert "(images img_05.jpg to img_06.jpg): 1 feature rows for 2 names" in discarded[3]
    assert discarded[0].endswith("; encoding them again")
    assert "resumed: 1 of 9 images were already encoded" in err
    assert (out / "features.h5").read_bytes() == whole
    assert not store.folder.exists()


def test_an_encoder_giving_nan_stops_extraction_naming_the_image(tmp_path, monkeypatch):
    images = tmp_path / "Images"
    images.mkdir()
    for i, name in enumerate(("a.jpg", "b.jpg", "c.jpg")):
        save_image(images / name, i)

    def encode(model, paths, input_size, batch_size, dtype, progress=True, flip=False):  # as damaged weights would
        features = np.ones((len(paths), 1280), dtype=dtype)
        features[1, 7] = np.nan
        return list(range(len(paths))), features, None

    monkeypatch.setattr(extraction, "build_encoder", lambda *args: None)
    monkeypatch.setattr(extraction, "encode_views", encode)
    params = {"encoder": "efficientnet_lite0", "weights": "imagenet", "output": "pooled", "batch_size": 2,
              "precision": "float32"}
    with pytest.raises(CaptionerError, match=r"1 feature rows hold NaN or infinite values: row 1 \(b.jpg\) "
                                             r"\(damaged encoder weights\?\)$"):
        run_extraction(images, tmp_path / "features", params)
    assert not (tmp_path / "features").exists() and not list(resume_folder(tmp_path / "features").glob("*.npz"))
