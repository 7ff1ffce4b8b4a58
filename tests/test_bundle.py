"""The model bundle: every config.json / vocab.json value checked on load; small, reproducible decoder.keras."""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from captioner.model.bundle import load_bundle, make_config, read_config
from captioner.core.errors import CaptionerError
from captioner.data.text import Vocabulary

WORDS = [f"w{i}" for i in range(996)]


def write_bundle_files(folder: Path, vocab: Vocabulary, model_bytes: bytes = b"not a model") -> dict:
    """A bundle folder with a valid config.json and vocab.json (and the given decoder bytes); returns the config."""
    folder.mkdir(parents=True, exist_ok=True)
    config = make_config(
        {"name": "synthetic", "weights": "none", "weights_id": None, "input_size": 32, "preprocessing": None,
         "output": "pooled"},
        (24,),
        {"kind": "merge", "embedding_dim": 16, "units": 32, "dropout": 0.1, "vocab_size": len(vocab)},
        {"beam_size": 3, "max_length": vocab.max_length, "length_alpha": 1.0},
    )
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "vocab.json").write_text(json.dumps(vocab.to_json()))
    (folder / "decoder.keras").write_bytes(model_bytes)
    return config


def edit(path: Path, key: str, value) -> None:
    """Set `section.key` (or a top-level key) of a JSON file."""
    data = json.loads(path.read_text())
    section, _, name = key.rpartition(".")
    (data[section] if section else data)[name] = value
    path.write_text(json.dumps(data))


VOCAB = Vocabulary(("<pad>", "<unk>", "<start>", "<end>", "a", "dog"), 8)


@pytest.mark.parametrize(
    "file, key, value, message",
    [
        ("config.json", "decoding.max_length", 10**9, r"'decoding.max_length' must be an integer >= 3 <= 200"),
        ("vocab.json", "max_length", 10**9, r"vocab.json: 'max_length' must be an integer >= 3 <= 200"),
        ("vocab.json", "max_length", 12, r"vocab.json: max_length 12 but config.json says decoding.max_length 8"),
        ("config.json", "decoding.beam_size", 0, r"'decoding.beam_size' must be an integer >= 1"),
        ("config.json", "decoding.length_alpha", "1", r"'decoding.length_alpha' must be a number"),
        ("config.json", "decoder.kind", "transformer", r"'decoder.kind' must be one of attention, inject, merge"),
        ("config.json", "decoder.dropout", 1.5, r"'decoder.dropout' must be a number >= 0 < 1"),
        ("config.json", "decoder.units", None, r"'decoder.units' is empty"),
        ("config.json", "decoder.vocab_size", 7, r"vocab.json: 6 tokens but config.json says decoder.vocab_size 7"),
        ("config.json", "encoder.input_size", -3, r"'encoder.input_size' must be an integer >= 1"),
        ("config.json", "encoder.name", 5, r"'encoder.name' must be a string"),
        ("config.json", "encoder.output", "vector", r"'encoder.output' must be one of grid, pooled"),
        ("config.json", "feature_shape", [7, 7, 24], r"'feature_shape' \[7, 7, 24\] does not fit encoder output 'pooled'"),
        ("config.json", "feature_shape", [0], r"'feature_shape' must be an integer >= 1"),
        ("config.json", "feature_shape", "24", r"'feature_shape' must be a list"),
        ("config.json", "decoding", [], r"'decoding' must be an object"),
        ("config.json", "format", 3, r"bundle format 3, expected 1 or 2"),
        ("config.json", "format", 2, r"'members' must list 2 to 16 decoder files, got None"),
        ("vocab.json", "tokens", ["<pad>", "<unk>"], r"'tokens' must start with <pad>, <unk>, <start>, <end>"),
    ],
)
def test_every_bundle_value_is_checked_before_the_model_loads(tmp_path, file, key, value, message):
    write_bundle_files(tmp_path / "b", VOCAB)
    edit(tmp_path / "b" / file, key, value)
    with pytest.raises(CaptionerError, match=message) as err:
        load_bundle(tmp_path / "b")
    assert "\n" not in str(err.value)
    assert str(tmp_path / "b") in str(err.value)


def test_missing_key_and_non_object_files_are_one_line_errors(tmp_path):
    config = write_bundle_files(tmp_path / "b", VOCAB)
    del config["decoder"]["units"]
    (tmp_path / "b/config.json").write_text(json.dumps(config))
    with pytest.raises(CaptionerError, match=r"config.json: lacks decoder.units"):
        read_config(tmp_path / "b")
    write_bundle_files(tmp_path / "c", VOCAB)
    (tmp_path / "c/vocab.json").write_text("[1, 2]")
    with pytest.raises(CaptionerError, match=r"c/vocab.json: expected a JSON object"):
        load_bundle(tmp_path / "c")
    (tmp_path / "c/vocab.json").write_bytes(b"\xff\xfe")
    with pytest.raises(CaptionerError, match=r"c/vocab.json: not UTF-8 text"):
        load_bundle(tmp_path / "c")


def test_corrupt_decoder_is_one_line_naming_the_file(tmp_path):
    pytest.importorskip("keras")
    write_bundle_files(tmp_path / "b", VOCAB)
    with pytest.raises(CaptionerError, match=r"b/decoder.keras: cannot load the decoder") as err:
        load_bundle(tmp_path / "b")
    assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def trained_model():
    """A small merge decoder after one optimizer step (so Adam has state to leave out)."""
    keras = pytest.importorskip("keras")
    from captioner.model.decoders import DecoderSpec, build_decoder, caption_loss

    keras.utils.set_random_seed(0)
    vocab = Vocabulary(("<pad>", "<unk>", "<start>", "<end>", *WORDS), 10)
    model = build_decoder(DecoderSpec("merge", len(vocab), (24,), 32, 64, 0.1))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=caption_loss())
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, len(vocab), (16, 10)).astype(np.int32)
    model.train_on_batch([rng.normal(size=(16, 24)).astype(np.float32), tokens[:, :-1]], tokens[:, 1:])
    return model, vocab


def test_bundle_is_reproducible_small_and_loads_safely(tmp_path, trained_model):
    import h5py

    from captioner.model.bundle import save_bundle

    model, vocab = trained_model
    config = write_bundle_files(tmp_path / "ref", vocab)
    save_bundle(tmp_path / "one", model, vocab, config)
    time.sleep(1.1)  # Keras stamps the save time to the second
    save_bundle(tmp_path / "two", model, vocab, config)
    for name in ("decoder.keras", "config.json", "vocab.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    size = (tmp_path / "one/decoder.keras").stat().st_size
    assert size <= 1.2 * 4 * model.count_params()
    with zipfile.ZipFile(tmp_path / "one/decoder.keras") as zf:
        zf.extract("model.weights.h5", tmp_path)
        assert {info.date_time for info in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    with h5py.File(tmp_path / "model.weights.h5") as f:
        assert "optimizer" not in f
    bundle = load_bundle(tmp_path / "one")
    x = [np.ones((2, 24), np.float32), np.full((2, 5), 4, np.int32)]
    np.testing.assert_allclose(bundle.model.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)


def test_optional_encoder_values_may_be_left_out(tmp_path):
    config = write_bundle_files(tmp_path / "b", VOCAB)
    del config["encoder"]["weights_id"], config["encoder"]["preprocessing"]
    (tmp_path / "b/config.json").write_text(json.dumps(config))
    assert read_config(tmp_path / "b")["encoder"] == {"name": "synthetic", "weights": "none", "input_size": 32,
                                                      "output": "pooled"}
