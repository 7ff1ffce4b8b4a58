"""NaN and infinity are refused where they enter: feature files, training losses, bundles, metrics files."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from helpers_model import make_dataset, small_params

from captioner.core.atomic import write_json
from captioner.core.errors import CaptionerError
from captioner.vision import feature_store
from captioner.vision.feature_store import FeatureReader, load_features, prepare_features

ROOT = Path(__file__).resolve().parents[1]
ROW_BYTES = 2 * 2 * 24 * 2  # a row of make_dataset's float16 2x2x24 grid


def flip(path: Path, start_row: int = 10, size: int = 4096) -> None:
    """Write `size` bytes of 0xFF into the features of `path` from `start_row` on, as a failing disk might."""
    with h5py.File(path, "r") as f:
        offset = f["features"].id.get_chunk_info(0).byte_offset
    with path.open("r+b") as f:
        f.seek(offset + start_row * ROW_BYTES)
        f.write(b"\xff" * size)


@pytest.fixture
def flipped(tmp_path) -> Path:
    """A tiny pipeline whose features.h5 has 4 KB of 0xFF (2048 float16 NaN) from row 10 on."""
    make_dataset(tmp_path, grid=True)
    flip(tmp_path / "data/features/features.h5")
    return tmp_path


def test_flipped_bytes_in_a_feature_file_are_refused_naming_rows_and_images(flipped):
    path = flipped / "data/features/features.h5"
    for read in (load_features, FeatureReader):
        with pytest.raises(CaptionerError) as err:
            read(path)
        message = str(err.value)
        assert "\n" not in message and message.startswith(f"{path}: 22 feature rows hold NaN or infinite values")
        assert "row 10 (img0010.jpg), row 11 (img0011.jpg), row 12 (img0012.jpg) and 19 more" in message


def test_the_reader_checks_block_by_block_and_names_rows_of_later_blocks(tmp_path, monkeypatch):
    make_dataset(tmp_path, grid=True)
    path = tmp_path / "data/features/features.h5"
    flip(path, start_row=70, size=ROW_BYTES)  # only row 70, in the last of nine blocks of 8 rows
    monkeypatch.setattr(feature_store, "CHECK_BYTES", 8 * ROW_BYTES)
    reads = []
    real_getitem = h5py.Dataset.__getitem__
    monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda self, key: reads.append(key) or real_getitem(self, key))
    with pytest.raises(CaptionerError, match=r"1 feature rows hold NaN or infinite values: row 70 \(img0070.jpg\) \("):
        FeatureReader(path)
    blocks = [key for key in reads if isinstance(key, slice)]
    assert blocks == [slice(start, start + 8) for start in range(0, 72, 8)]  # 8 rows at a time, all 72 rows


def test_finite_rows_finds_nan_and_infinity_in_float16_and_float32():
    from captioner.vision.feature_store import finite_rows

    for dtype in (np.float16, np.float32):
        block = np.ones((5, 2, 3), dtype=dtype)
        block[1, 0, 2], block[3, 1, 1], block[4, 0, 0] = np.nan, np.inf, -np.inf
        np.testing.assert_array_equal(finite_rows(block), [True, False, True, False, False])
    assert finite_rows(np.full((2, 4), 65504, dtype=np.float16)).all()  # the largest float16 is finite
    assert finite_rows(np.empty((0, 7, 7, 8), dtype=np.float16)).shape == (0,)


def test_prepare_features_refuses_an_array_with_infinity():
    features = np.ones((4, 8), dtype=np.float32)
    features[2, 5] = np.inf
    with pytest.raises(CaptionerError, match=r"^photos: 1 feature rows hold NaN or infinite values: row 2 \("):
        prepare_features(features, "merge", "photos")
    assert prepare_features(np.ones((2, 8), dtype=np.float16), "merge", "photos").dtype == np.float32


def test_train_stage_on_a_flipped_feature_file_fails_in_one_line_and_writes_nothing(flipped):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(epochs=1, embedding_dim=8, units=16)
    (flipped / "params.yaml").write_text(yaml.safe_dump(params))
    template = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]["do"]["cmd"]
    args = shlex.split(template.replace("${item}", "42"))[2:]
    cmd = [sys.executable, str(ROOT / "stages/train.py"), *args]  # the paths exactly as `dvc repro` passes them
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(cmd, cwd=flipped, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr
    native = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl|To enable the following instructions)")
    lines = [line for line in result.stderr.strip().splitlines() if not native.match(line)]  # TensorFlow's start-up
    assert len(lines) == 1 and lines[0].startswith("error: data/features/features.h5: 22 feature rows hold NaN")
    assert not (flipped / "models").exists() and not (flipped / "metrics").exists()  # no NaN model, no bare NaN


def test_a_nan_loss_stops_training_in_one_line_and_writes_no_model(tmp_path, monkeypatch):
    from captioner.model import training

    make_dataset(tmp_path, grid=True)
    real_load = training.load_train_data

    def poisoned(*args):  # numbers that got past every file check: one train image's grid is NaN
        data = real_load(*args)
        data.features = np.asarray(data.features[np.arange(len(data.image_names))], dtype=np.float32)
        data.features[data.train.image_rows[0]] = np.nan
        return data

    monkeypatch.setattr(training, "load_train_data", poisoned)
    with pytest.raises(CaptionerError) as err:
        training.run_train(small_params("attention", epochs=2), tmp_path / "data/features", tmp_path / "data/processed",
                           tmp_path / "models/captioner", tmp_path / "metrics/train.json", None, verbose=0)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("training stopped: the train loss at epoch 1, batch ")
    assert str(err.value).endswith(" is nan (no model written; a lower learning rate may help)")
    assert not (tmp_path / "models").exists() and not (tmp_path / "metrics").exists()


def _self_critical(tmp_path: Path, poison: bool, val: bool = True) -> dict:
    """Self-critical training of an untrained tiny merge decoder; `poison` makes one train image's feature NaN."""
    from captioner.core.jsonfile import read_json
    from captioner.model.decoders import build_decoder
    from captioner.model.scst import image_set, self_critical
    from captioner.model.training import TimeCap, decoder_spec, load_train_data

    make_dataset(tmp_path)
    data = load_train_data(tmp_path / "data/features", tmp_path / "data/processed", "merge")
    features = np.asarray(data.features[np.arange(len(data.image_names))], dtype=np.float32)
    if poison:
        features[data.train.image_rows[0]] = np.nan
    train = small_params()["train"]
    model = build_decoder(decoder_spec(train, len(data.vocab), data.feature_shape))
    captions = read_json(tmp_path / "data/processed/captions.json", "captions", "clean_text")
    references = [captions[name] for name in data.image_names]
    val_rows = data.val.image_rows if val else data.val.image_rows[:0]
    params = {"samples": 2, "batch_images": 16, "epochs": 1, "learning_rate": 0.01}  # the `scst` section
    return self_critical(model, features, data.vocab, image_set(data.train.image_rows, references),
                         image_set(val_rows, references), params, 1, TimeCap(5), log=lambda line: None)


def test_a_nan_gradient_stops_self_critical_training_in_one_line(tmp_path):
    # the NaN image's samples may all be empty, so the loss stays finite while the gradient is NaN
    with pytest.raises(CaptionerError, match=r"^training stopped: the self-critical loss or gradient at epoch 1 "
                                             r"is nan \(no model written"):
        _self_critical(tmp_path, poison=True)


def test_self_critical_without_a_val_split_writes_strict_json(tmp_path):
    summary = _self_critical(tmp_path, poison=False, val=False)
    assert summary["start_val_cider"] is None and summary["val_cider"] == [None]
    write_json(tmp_path / "finetune.json", summary)
    assert json.loads((tmp_path / "finetune.json").read_text())["val_bleu4"] == [None]
    from captioner.model.finite import rounded

    assert rounded(0.123456, 4) == 0.1235


def test_metrics_files_are_strict_json(tmp_path):
    target = tmp_path / "metrics" / "train.json"
    with pytest.raises(CaptionerError) as err:
        write_json(target, {"epochs_run": 3, "train_loss": [2.5, float("nan")], "scst": {"reward": float("inf")}})
    assert str(err.value) == f"{target}: refusing to write train_loss[1] = nan (JSON has no NaN or infinity)"
    assert not target.exists() and not list(tmp_path.rglob("*.tmp-*"))
    with pytest.raises(CaptionerError, match=r"refusing to write scst.reward = -inf"):
        write_json(target, {"scst": {"reward": float("-inf")}})
    write_json(target, {"loss": 2.5, "best": None})
    assert json.loads(target.read_text()) == {"loss": 2.5, "best": None}


@pytest.fixture(scope="module")
def nan_bundle(tmp_path_factory) -> Path:
    """A tiny merge bundle (random-weight encoder, no downloads) whose decoder has one NaN bias."""
    from captioner.data.text import Vocabulary
    from captioner.model.bundle import make_config, save_bundle
    from captioner.model.decoders import DecoderSpec, build_decoder

    vocab = Vocabulary.build(["a red circle", "a blue square on grass"], min_count=1, max_length_percentile=100)
    model = build_decoder(DecoderSpec("merge", len(vocab), (1280,), 8, 16, 0.0))
    logits = model.get_layer("logits")
    kernel, bias = logits.get_weights()
    bias[4] = np.nan
    logits.set_weights([kernel, bias])
    config = make_config(
        {"name": "efficientnet_lite0", "weights": "none", "input_size": 224, "output": "pooled"},
        (1280,),
        {"kind": "merge", "embedding_dim": 8, "units": 16, "dropout": 0.0, "vocab_size": len(vocab)},
        {"beam_size": 2, "max_length": vocab.max_length, "length_alpha": 1.0},
    )
    path = tmp_path_factory.mktemp("nan-bundle") / "captioner"
    save_bundle(path, model, vocab, config)
    return path


def test_predict_with_a_nan_bundle_is_one_line_and_exit_1(nan_bundle, tmp_path, capsys):
    from conftest import save_image

    from captioner.cli import main

    save_image(tmp_path / "photo.jpg", 0)
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(tmp_path / "photo.jpg"), "--model", str(nan_bundle)])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {nan_bundle / 'decoder.keras'}: weights ")
    assert "hold 1 NaN or infinite values" in err[0]


def test_litert_runtime_refuses_a_nan_bundle_too(nan_bundle):
    from captioner.serving.api import Captioner

    with pytest.raises(CaptionerError, match="hold 1 NaN or infinite values"):
        Captioner.load(nan_bundle, runtime="litert")


def test_evaluate_with_a_nan_bundle_fails_and_writes_no_scores(nan_bundle, tmp_path):
    from captioner.evaluation import run_evaluate

    make_dataset(tmp_path)
    with pytest.raises(CaptionerError, match="NaN or infinite values"):
        run_evaluate(small_params(), nan_bundle, tmp_path / "data/features", tmp_path / "data/processed",
                     tmp_path / "data/raw", tmp_path / "metrics", progress=False)
    assert not (tmp_path / "metrics").exists()
