"""Flipped views (`features.flip`): mirrored captions, the mirrored features in the feature file, and training
that shows every train image once per epoch in one of its two views."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from PIL import Image

from captioner.core.errors import CaptionerError
from captioner.data.text import UNK_ID, Vocabulary, mirror_caption, mirror_ids
from captioner.vision.feature_store import FLIPPED, FeatureReader, load_features, write_features

CAPTIONS = [
    "a red circle to the left of a blue square",
    "a blue square to the right of a red circle",
    "from left to right a circle a square and a triangle",
    "the man left the building on his right",
    "leftover food and a rightful owner on the left",
    "a dog runs",
]


def test_mirrored_captions_swap_left_and_right_and_nothing_else():
    for caption in CAPTIONS:
        words, mirrored = caption.split(), mirror_caption(caption).split()
        assert len(mirrored) == len(words)
        for word, other in zip(words, mirrored):
            assert other == {"left": "right", "right": "left"}.get(word, word)
    assert mirror_caption(CAPTIONS[2]) == "from right to left a circle a square and a triangle"
    assert mirror_caption(CAPTIONS[4]) == "leftover food and a rightful owner on the right"
    assert mirror_caption(mirror_caption(CAPTIONS[0])) == CAPTIONS[0]

    vocab = Vocabulary.build(CAPTIONS, min_count=1, max_length_percentile=100)
    table = mirror_ids(vocab)
    ids = vocab.encode(CAPTIONS)
    np.testing.assert_array_equal(table[ids], vocab.encode([mirror_caption(c) for c in CAPTIONS]))
    left, right = vocab.index["left"], vocab.index["right"]
    assert set(np.flatnonzero(table != np.arange(len(vocab)))) == {left, right}
    assert table[left] == right and table[right] == left
    changed = table[ids] != ids
    np.testing.assert_array_equal(changed, np.isin(ids, [left, right]))


def test_a_word_whose_mirror_word_is_unknown_becomes_unk():
    vocab = Vocabulary.build(["a dog on the left", "a cat on the left"], min_count=1, max_length_percentile=100)
    table = mirror_ids(vocab)
    assert "right" not in vocab.index and table[vocab.index["left"]] == UNK_ID
    assert set(np.flatnonzero(table != np.arange(len(vocab)))) == {vocab.index["left"]}
    np.testing.assert_array_equal(table[vocab.encode(["a dog on the left"])],
                                  vocab.encode([mirror_caption("a dog on the left")]))


def views_file(tmp_path, n: int = 6):
    """A feature file with both views: original rows +i, mirrored rows -i (row i of image i)."""
    path = tmp_path / "features.h5"
    rows = np.repeat(np.arange(1, n + 1, dtype=np.float32)[:, None], 4, axis=1)
    write_features(path, [f"im{i}.jpg" for i in range(n)], (4,), np.float32, [rows[:4], rows[4:]], {},
                   {FLIPPED: [-rows]})
    return path, rows


def test_the_feature_file_holds_the_flipped_view_in_the_same_row_order(tmp_path):
    path, rows = views_file(tmp_path)
    with FeatureReader(path) as plain, FeatureReader(path, FLIPPED) as flipped:
        assert plain.has_flipped and flipped.names == plain.names and flipped.shape == plain.shape
        np.testing.assert_array_equal(plain[[5, 0, 2]], rows[[5, 0, 2]])
        np.testing.assert_array_equal(flipped[[5, 0, 2]], -rows[[5, 0, 2]])
    names, loaded, _ = load_features(path)
    np.testing.assert_array_equal(loaded, rows)
    bare = tmp_path / "bare.h5"
    write_features(bare, ["a.jpg"], (4,), np.float32, [rows[:1]])
    assert not FeatureReader(bare).has_flipped
    with pytest.raises(CaptionerError, match=r"bare.h5: no 'flipped' dataset \(extract with features.flip: true\)$"):
        FeatureReader(bare, FLIPPED)
    with pytest.raises(ValueError, match="6 names but 5 flipped rows"):
        write_features(tmp_path / "short.h5", names, (4,), np.float32, [rows], {}, {FLIPPED: [rows[:5]]})
    with h5py.File(path, "a") as f:  # a mirrored view that does not match the images' rows
        del f[FLIPPED]
        f.create_dataset(FLIPPED, data=rows[:, :3])
    with pytest.raises(CaptionerError, match=r"features.h5: 'flipped' rows of shape \(6, 3\) but 'features' of "
                                             r"\(6, 4\)$"):
        FeatureReader(path)


def test_a_nan_in_the_flipped_view_is_refused_naming_it(tmp_path):
    path, rows = views_file(tmp_path)
    bad = -rows
    bad[3, 1] = np.nan
    write_features(path, [f"im{i}.jpg" for i in range(6)], (4,), np.float32, [rows], {}, {FLIPPED: [bad]})
    FeatureReader(path)  # the view as it is stays readable
    with pytest.raises(CaptionerError, match=r"features.h5 \('flipped'\): 1 feature rows hold NaN or infinite "
                                             r"values: row 3 \(im3.jpg\)"):
        FeatureReader(path, FLIPPED)


def grouped_batches(mirror, seed: int = 3, epochs: int = 2, k: int = 2):
    """Batches of `make_dataset` over 8 images x 3 captions (image i: features +(i+1), mirrored -(i+1))."""
    from captioner.model.training import CaptionSet, make_dataset

    vocab = Vocabulary.build(CAPTIONS, min_count=1, max_length_percentile=100)
    image_rows = np.repeat(np.arange(8), 3)
    tokens = vocab.encode([CAPTIONS[(i + j) % 3] for i in range(8) for j in range(3)])
    features = np.arange(1, 9, dtype=np.float32)[:, None]
    views = None if mirror is None else mirror(-features, vocab)
    ds = make_dataset(features, CaptionSet(image_rows, tokens), 4 * k, seed, k, mirror=views)
    return vocab, tokens, [[(x.numpy(), t.numpy(), y.numpy()) for (x, t), y in ds] for _ in range(epochs)]


def test_training_shows_each_image_once_per_epoch_in_one_view_its_captions_following():
    from captioner.model.views import Mirror

    vocab, tokens, epochs = grouped_batches(Mirror.of)
    _, _, plain = grouped_batches(None)
    table = mirror_ids(vocab)
    views_seen = []
    for epoch, plain_epoch in zip(epochs, plain):
        shown = np.concatenate([images[:, 0] for images, _, _ in epoch])
        assert sorted(np.abs(shown).tolist()) == list(range(1, 9))  # every image once, in one view
        views_seen += (shown < 0).tolist()
        for (images, inputs, targets), (plain_images, plain_inputs, plain_targets) in zip(epoch, plain_epoch):
            np.testing.assert_array_equal(np.abs(images), plain_images)  # the same batches as without flip
            mirrored = np.repeat(images[:, 0] < 0, 2)
            np.testing.assert_array_equal(targets[mirrored], table[plain_targets[mirrored]])
            np.testing.assert_array_equal(inputs[mirrored], table[plain_inputs[mirrored]])
            np.testing.assert_array_equal(targets[~mirrored], plain_targets[~mirrored])
    assert 0 < sum(views_seen) < len(views_seen)  # both views come up
    again = grouped_batches(Mirror.of)[2]
    for epoch, repeated in zip(epochs, again):
        for batch, same in zip(epoch, repeated):
            for a, b in zip(batch, same):
                np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def weights_cache(tmp_path_factory):
    """Converted weights go to a folder of this module's tests, never the user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CAPTIONER_CACHE", str(tmp_path_factory.getbasetemp() / "weights-cache"))
    yield
    mp.undo()


def test_extraction_with_flip_stores_the_mirrored_images_and_leaves_the_rest_as_it_was(tmp_path, weights_cache):
    from skimage import data as skdata

    from captioner.vision.features import run_extraction

    images = tmp_path / "Images"
    images.mkdir()
    cat = np.asarray(Image.fromarray(skdata.chelsea()).resize((224, 224)))
    Image.fromarray(cat).save(images / "im0.png")
    Image.fromarray(np.ascontiguousarray(cat[:, ::-1])).save(images / "im0_mirrored.png")
    Image.fromarray(skdata.astronaut()).save(images / "im1.png")
    Image.fromarray(skdata.coffee()).save(images / "im2.png")
    params = {"encoder": "efficientnet_lite0", "weights": "imagenet", "output": "grid", "batch_size": 2,
              "precision": "float32"}
    off = run_extraction(images, tmp_path / "off", params)
    on = run_extraction(images, tmp_path / "on", {**params, "flip": True})
    assert "flip" not in off and on == {**off, "flip": True}
    assert json.loads((tmp_path / "on/meta.json").read_text())["flip"] is True
    with FeatureReader(tmp_path / "off/features.h5") as plain:
        assert not plain.has_flipped
        original = plain[np.arange(4)]
    with FeatureReader(tmp_path / "on/features.h5") as both, FeatureReader(tmp_path / "on/features.h5",
                                                                             FLIPPED) as flipped:
        assert both.names == ["im0.png", "im0_mirrored.png", "im1.png", "im2.png"]
        np.testing.assert_array_equal(both[np.arange(4)], original)  # the unmirrored view is unchanged
        mirrored = flipped[np.arange(4)]
    assert mirrored.dtype == np.float16 and mirrored.shape == (4, 7, 7, 1280)
    scale = float(np.abs(original).max())
    np.testing.assert_allclose(mirrored[0], original[1], atol=2e-3 * scale)  # im0 mirrored = the mirrored file
    np.testing.assert_allclose(mirrored[1], original[0], atol=2e-3 * scale)
    assert np.abs(mirrored[2].astype(np.float32) - original[2]).max() > 0.05 * scale
    assert not (tmp_path / "on.resume").exists()


def flipped_copy(root):
    """Give data/features/features.h5 under `root` a mirrored view (a stand-in: the features reversed)."""
    path = root / "data/features/features.h5"
    names, features, attrs = load_features(path)
    write_features(path, names, features.shape[1:], features.dtype, [features], attrs,
                   {FLIPPED: [features[:, :, ::-1] if features.ndim == 4 else features[:, ::-1]]})


def test_train_and_self_critical_training_use_the_mirrored_view_when_the_file_has_it(tmp_path):
    from helpers_model import make_dataset, small_params

    from captioner.model.finetune import run_finetune
    from captioner.model.training import load_train_data, run_train

    make_dataset(tmp_path)
    params = small_params("merge", scst={"epochs": 1}, epochs=2, captions_per_image=5, batch_size=20)

    def run():
        summary = run_train(params, tmp_path / "data/features", tmp_path / "data/processed", tmp_path / "models/xe",
                            tmp_path / "metrics/train.json", None, verbose=0)
        scst = run_finetune(params, tmp_path / "data/features", tmp_path / "data/processed", tmp_path / "models/xe",
                            tmp_path / "models/captioner", tmp_path / "metrics/finetune.json", None)
        return summary["train_loss"], scst["train_reward"], (tmp_path / "models/captioner/decoder.keras").read_bytes()

    assert load_train_data(tmp_path / "data/features", tmp_path / "data/processed", "merge").mirror is None
    plain = run()
    flipped_copy(tmp_path)
    data = load_train_data(tmp_path / "data/features", tmp_path / "data/processed", "merge")
    assert data.mirror is not None and data.mirror.rows.shape == data.features.shape
    first, second = run(), run()
    assert first == second  # seeded: the same views, the same model
    assert first[0] != plain[0] and first[1] != plain[1]  # the mirrored view was trained on


def test_an_interrupted_flip_extraction_resumes_both_views(tmp_path, weights_cache, monkeypatch, capsys):
    from captioner.vision import features as extraction
    from captioner.vision.resume_store import ResumeStore

    images = tmp_path / "Images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)).save(images / f"im{i}.png")
    params = {"encoder": "efficientnet_lite0", "weights": "imagenet", "output": "pooled", "batch_size": 1,
              "precision": "float32", "flip": True}
    monkeypatch.setattr(extraction, "PIECE_BATCHES", 2)  # pieces of 2 images: 3 pieces, 6 files with both views
    whole = extraction.run_extraction(images, tmp_path / "whole", params)
    expected = (tmp_path / "whole/features.h5").read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(extraction, "write_features", interrupted)
        with pytest.raises(KeyboardInterrupt):
            extraction.run_extraction(images, tmp_path / "features", params)
    store = ResumeStore(extraction.resume_folder(tmp_path / "features"))
    pieces = sorted(store.folder.glob("*.npz"))
    assert len(pieces) == 6
    settings = extraction._settings(params, whole["weights_id"], 224)
    lost = extraction.flipped_key(settings, sorted(images.iterdir())[2:4])
    store.discard(lost)  # as if killed between a piece's two views
    capsys.readouterr()
    assert extraction.run_extraction(images, tmp_path / "features", params) == whole
    assert "resumed: 3 of 5 images were already encoded" in capsys.readouterr().err
    assert (tmp_path / "features/features.h5").read_bytes() == expected and not store.folder.exists()
