"""The feature file: row-chunked HDF5 written in blocks, and FeatureReader's per-batch reads."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from captioner.core.errors import CaptionerError
from captioner.vision.feature_store import (
    FeatureReader,
    PooledRows,
    load_features,
    pool_grid,
    row_chunks,
    save_features,
    write_features,
)


def grid(n: int) -> np.ndarray:
    rng = np.random.default_rng(n)
    return rng.standard_normal((n, 7, 7, 1280)).astype(np.float16)


@pytest.fixture
def grid_file(tmp_path):
    path = tmp_path / "features.h5"
    features = grid(10)
    save_features(path, [f"im{i}.jpg" for i in range(10)], features, {"encoder": "efficientnet_lite0"})
    return path, features


def test_chunks_are_whole_rows_of_about_128_kib():
    assert row_chunks((7, 7, 1280), np.float16) == (1, 7, 7, 1280)
    assert row_chunks((1280,), np.float32) == (25, 1280)
    assert row_chunks((14, 14, 512), np.float16) == (1, 14, 14, 512)


def test_grid_file_is_row_chunked_and_float16(grid_file):
    path, _ = grid_file
    with h5py.File(path) as f:
        assert f["features"].chunks == (1, 7, 7, 1280) and f["features"].dtype == np.float16


def test_reader_gives_rows_in_the_asked_order(grid_file):
    path, features = grid_file
    with FeatureReader(path) as reader:
        assert reader.names == [f"im{i}.jpg" for i in range(10)] and len(reader) == 10
        assert reader.shape == (10, 7, 7, 1280) and reader.feature_shape == (7, 7, 1280)
        assert reader.dtype == np.float16 and reader.attrs == {"encoder": "efficientnet_lite0"}
        for indices in ([7, 2, 9, 2], [0], np.array([9, 8, 7, 6, 5, 4, 3, 2, 1, 0]), []):
            rows = reader.rows(indices)
            assert rows.dtype == np.float16 and rows.shape == (len(indices), 7, 7, 1280)
            assert rows.tobytes() == features[np.asarray(indices, dtype=int)].tobytes()
        assert reader.positions(["im3.jpg", "im0.jpg"]).tolist() == [3, 0]


def test_reader_and_pooled_view_stand_in_for_arrays(grid_file):
    path, features = grid_file
    with FeatureReader(path) as reader:
        assert reader[[4, 1]].tobytes() == features[[4, 1]].tobytes()
        pooled = PooledRows(reader)
        assert pooled.shape == (10, 1280) and len(pooled) == 10
        np.testing.assert_array_equal(pooled[[4, 1]], pool_grid(features[[4, 1]]))


def test_reader_refuses_unknown_names_and_rows(grid_file):
    path, _ = grid_file
    with FeatureReader(path) as reader:
        with pytest.raises(CaptionerError, match="no features for 1 images .*nope.jpg"):
            reader.positions(["im1.jpg", "nope.jpg"])
        with pytest.raises(IndexError):
            reader.rows([10])
        with pytest.raises(IndexError):
            reader.rows([-1])


def test_reader_reopens_in_a_forked_child(grid_file, tmp_path):
    path, features = grid_file
    reader = FeatureReader(path)
    assert reader.rows([1]).tobytes() == features[[1]].tobytes()
    out = tmp_path / "child.npy"
    pid = os.fork()
    if pid == 0:
        try:
            np.save(out, reader.rows([4, 1]))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert np.load(out).tobytes() == features[[4, 1]].tobytes()
    assert reader.rows([2]).tobytes() == features[[2]].tobytes()
    reader.close()


def test_blocks_write_the_same_file_as_one_array(tmp_path):
    features = grid(5)
    names = [f"n{i}" for i in range(5)]
    save_features(tmp_path / "one.h5", names, features)
    write_features(tmp_path / "blocks.h5", names, (7, 7, 1280), np.float16, [features[:2], features[2:4], features[4:]])
    assert (tmp_path / "one.h5").read_bytes() == (tmp_path / "blocks.h5").read_bytes()
    with pytest.raises(ValueError, match="5 names but 4 feature rows"):
        write_features(tmp_path / "short.h5", names, (7, 7, 1280), np.float16, [features[:4]])
    assert not (tmp_path / "short.h5").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocks.h5", "one.h5"]


def test_malformed_or_missing_file_is_one_line_error(tmp_path):
    with pytest.raises(CaptionerError, match="feature file not found"):
        FeatureReader(tmp_path / "none.h5")
    (tmp_path / "bad.h5").write_text("not hdf5")
    with pytest.raises(CaptionerError, match="not a captioner feature file"):
        FeatureReader(tmp_path / "bad.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(CaptionerError, match="needs datasets 'names' and 'features'"):
        load_features(tmp_path / "other.h5")
