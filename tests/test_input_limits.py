"""Every value a check accepts works: bundle input sizes at their bounds, images over Pillow's limits skipped in every
stage and in `captioner predict`, symbolic links that leave an image folder refused."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from captioner.core.errors import CaptionerError
from captioner.data.datasets import prepare_raw
from captioner.model.bundle import MAX_INPUT_SIZE, read_config
from captioner.vision.encoders import ENCODERS

from conftest import save_image
from test_bundle import VOCAB, edit, write_bundle_files
from test_custom_split import data_params, make_own_folder


def header_only_png(path: Path, width: int, height: int) -> Path:
    """A 69-byte PNG whose header declares width x height pixels (its pixel data is a few zero bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def encoder_bundle(folder: Path, name: str, input_size: int) -> Path:
    """Bundle files (config checked without TensorFlow) naming registry encoder `name`, pooled output."""
    write_bundle_files(folder, VOCAB)
    config = folder / "config.json"
    for key, value in {"encoder.name": name, "encoder.input_size": input_size, "encoder.output": "pooled",
                       "feature_shape": [ENCODERS[name].pooled_dim]}.items():
        edit(config, key, value)
    return folder


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_each_encoder_accepts_exactly_its_own_input_size(tmp_path, name):
    size = ENCODERS[name].input_size
    assert read_config(encoder_bundle(tmp_path / "ok", name, size))["encoder"]["input_size"] == size
    for wrong in (size - 1, size + 1):
        message = (rf"'encoder.input_size' is {wrong} but {name} takes {size}x{size}" if wrong <= MAX_INPUT_SIZE
                   else rf"'encoder.input_size' must be an integer >= 1 <= {MAX_INPUT_SIZE}, got {wrong}")
        with pytest.raises(CaptionerError, match=message):
            read_config(encoder_bundle(tmp_path / str(wrong), name, wrong))


def test_input_size_range_ends_at_the_largest_encoder(tmp_path):
    assert MAX_INPUT_SIZE == max(spec.input_size for spec in ENCODERS.values())
    for size in (MAX_INPUT_SIZE + 1, 8192):
        with pytest.raises(CaptionerError, match=rf"'encoder.input_size' must be an integer >= 1 <= {MAX_INPUT_SIZE}"):
            read_config(encoder_bundle(tmp_path / str(size), "efficientnet_lite0", size))


def test_feature_shape_must_be_the_encoders(tmp_path):
    folder = encoder_bundle(tmp_path / "b", "efficientnet_lite0", 224)
    edit(folder / "config.json", "feature_shape", [1281])
    with pytest.raises(CaptionerError, match=r"'feature_shape' \[1281\] but efficientnet_lite0 pooled features are "
                                             r"\[1280\]"):
        read_config(folder)


@pytest.fixture(scope="module")
def lite0_bundle(tmp_path_factory):
    """A tiny merge decoder on a random-weight efficientnet_lite0 (input 224, no downloads)."""
    pytest.importorskip("keras")
    from captioner.data.text import Vocabulary
    from captioner.model.bundle import make_config, save_bundle
    from captioner.model.decoders import DecoderSpec, build_decoder

    vocab = Vocabulary.build(["a red circle", "a blue square"], min_count=1, max_length_percentile=100)
    config = make_config(
        {"name": "efficientnet_lite0", "weights": "none", "input_size": 224, "output": "pooled"}, (1280,),
        {"kind": "merge", "embedding_dim": 8, "units": 16, "dropout": 0.0, "vocab_size": len(vocab)},
        {"beam_size": 1, "max_length": vocab.max_length, "length_alpha": 1.0},
    )
    path = tmp_path_factory.mktemp("bundle") / "captioner"
    save_bundle(path, build_decoder(DecoderSpec("merge", len(vocab), (1280,), 8, 16, 0.0)), vocab, config)
    return path


def predict(argv: list[str], capsys) -> tuple[int, str, str]:
    from captioner.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["predict", *argv])
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


def test_predict_works_at_the_accepted_size_and_skips_images_over_pillows_limits(lite0_bundle, tmp_path, capsys):
    good = tmp_path / "good.png"
    save_image(good, 0)
    huge = header_only_png(tmp_path / "huge.png", 30000, 30000)  # over twice the limit: Pillow raises
    big = header_only_png(tmp_path / "big.png", 10000, 10000)  # between the limit and twice it: Pillow warns
    copies = [str(save_copy(good, tmp_path / f"g{i}.png")) for i in range(4)]
    for extra in ([], copies):  # 3 images run eagerly, 7 through the compiled tf.data pipeline
        code, out, err = predict([str(good), str(huge), str(big), *extra, "--model", str(lite0_bundle)], capsys)
        assert code == 1
        assert [line.split("\t")[0] for line in out.splitlines()] == [str(good), *extra]
        errors = err.strip().splitlines()
        assert len(errors) == 2 and all("too many pixels (decompression bomb guard)" in e for e in errors), err
        assert "Traceback" not in err


def save_copy(src: Path, dest: Path) -> Path:
    dest.write_bytes(src.read_bytes())
    return dest


def test_predict_refuses_a_bundle_one_past_the_accepted_size_in_one_line(lite0_bundle, tmp_path, capsys):
    import shutil

    bundle = shutil.copytree(lite0_bundle, tmp_path / "b")
    good = tmp_path / "good.png"
    save_image(good, 0)
    for size in (225, 8192):
        edit(bundle / "config.json", "encoder.input_size", size)
        code, out, err = predict([str(good), "--model", str(bundle)], capsys)
        assert code == 1 and out == ""
        assert err.count("\n") == 1 and err.startswith(f"error: {bundle}/config.json: 'encoder.input_size'")


def test_extraction_skips_an_image_over_twice_the_limit(tmp_path):
    pytest.importorskip("tensorflow")
    from captioner.vision.images import describe_failure, image_batches

    good = tmp_path / "good.png"
    save_image(good, 0)
    paths = [header_only_png(tmp_path / "huge.png", 30000, 30000), good]
    done = [int(i) for indices, _ in image_batches(paths, 32, 4) for i in indices.numpy()]
    assert done == [1]
    assert describe_failure(paths[0]).startswith("too many pixels (decompression bomb guard)")


def test_download_drops_images_over_pillows_limits(tmp_path):
    names = make_own_folder(tmp_path / "src", n=6)
    header_only_png(tmp_path / "src/Images" / names[0], 30000, 30000)
    header_only_png(tmp_path / "src/Images" / names[1], 10000, 10000)
    dataset = prepare_raw(data_params(tmp_path / "src", val_fraction=0.0, test_fraction=0.0), tmp_path / "raw")
    report = json.loads((tmp_path / "raw/report.json").read_text())
    assert sorted(report["undecodable_images"]) == sorted(names[:2])
    assert all(r.startswith("too many pixels") for r in report["undecodable_images"].values())
    assert sorted(dataset.image_files) == sorted(names[2:])


def test_symlinks_that_leave_the_image_folder_are_refused(tmp_path, capsys):
    names = make_own_folder(tmp_path / "src", n=6)
    images = tmp_path / "src/Images"
    secret = tmp_path / "elsewhere.jpg"
    save_image(secret, 99)
    (images / names[0]).unlink()
    (images / names[0]).symlink_to(secret)
    (images / names[1]).unlink()
    (images / names[1]).symlink_to(images / names[2])  # a link that stays inside is kept
    prepare_raw(data_params(tmp_path / "src", val_fraction=0.0, test_fraction=0.0), tmp_path / "raw")
    err = capsys.readouterr().err
    assert f"warning: {images / names[0]}: symbolic link to {secret} leaves {images}; skipped" in err
    assert not (tmp_path / "raw/Images" / names[0]).exists()
    assert (tmp_path / "raw/Images" / names[1]).read_bytes() == (images / names[2]).read_bytes()
    report = json.loads((tmp_path / "raw/report.json").read_text())
    assert report["links_leaving_images"] == {names[0]: str(secret)}
    Image.open(tmp_path / "raw/Images" / names[1]).verify()
