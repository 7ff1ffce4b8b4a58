"""`captioner predict`: captions JPEG/PNG of odd sizes, one-line errors for bad inputs, non-zero exit."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("keras")

from captioner.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A tiny untrained bundle on a random-weight efficientnet_lite0 encoder (no downloads)."""
    from captioner.model.bundle import make_config, save_bundle
    from captioner.model.decoders import DecoderSpec, build_decoder
    from captioner.data.text import Vocabulary

    vocab = Vocabulary.build(["a red circle", "a blue square on grass"], min_count=1, max_length_percentile=100)
    model = build_decoder(DecoderSpec("merge", len(vocab), (1280,), 8, 16, 0.0))
    config = make_config(
        {"name": "efficientnet_lite0", "weights": "none", "input_size": 224, "output": "pooled"},
        (1280,),
        {"kind": "merge", "embedding_dim": 8, "units": 16, "dropout": 0.0, "vocab_size": len(vocab)},
        {"beam_size": 2, "max_length": vocab.max_length, "length_alpha": 1.0},
    )
    path = tmp_path_factory.mktemp("bundle") / "captioner"
    save_bundle(path, model, vocab, config)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (37, 91, 3), dtype=np.uint8)).save(folder / "wide.png")
    Image.fromarray(rng.integers(0, 255, (301, 123, 3), dtype=np.uint8)).save(folder / "tall.jpg", quality=90)
    Image.fromarray(rng.integers(0, 255, (50, 50), dtype=np.uint8)).save(folder / "gray.jpeg")
    (folder / "notes.jpg").write_text("not an image\n")
    return folder


def test_predict_captions_good_images_and_reports_bad_ones(bundle, images, tmp_path):
    missing = tmp_path / "missing.jpg"
    cmd = [sys.executable, "-m", "captioner.cli", "predict", str(images / "wide.png"), str(images / "tall.jpg"),
           str(missing), str(images / "notes.jpg"), "--model", str(bundle)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    lines = result.stdout.splitlines()  # not strip(): an empty caption ends its line in a tab
    assert [line.split("\t")[0] for line in lines] == [str(images / "wide.png"), str(images / "tall.jpg")]
    assert all(len(line.split("\t")) == 2 for line in lines)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert any(str(missing) in e and "not found" in e for e in errors)
    assert any(str(images / "notes.jpg") in e for e in errors)


def test_predict_folder_as_json(bundle, images, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(images), "--model", str(bundle), "--json", "--beam-size", "1"])
    assert exit_.value.code == 1  # notes.jpg is in the folder
    out = json.loads(capsys.readouterr().out)
    assert sorted(r["image"].rsplit("/", 1)[-1] for r in out) == ["gray.jpeg", "tall.jpg", "wide.png"]
    assert all(isinstance(r["caption"], str) for r in out)


def test_predict_all_good_exits_zero(bundle, images, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(images / "wide.png"), "--model", str(bundle)])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(str(images / "wide.png") + "\t")


def test_mismatched_bundle_is_one_line_error(bundle, images, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    vocab = json.loads((bad / "vocab.json").read_text())
    vocab["tokens"] = vocab["tokens"][:-1]
    (bad / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(images / "wide.png"), "--model", str(bad)])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "vocab.json" in err[0]


def test_missing_bundle_is_one_line_error(images, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(images / "wide.png"), "--model", str(tmp_path / "nope")])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model bundle not found" in err[0]


@pytest.fixture(scope="module")
def attention_bundle(tmp_path_factory):
    from helpers_bundle import make_bundle

    return make_bundle(tmp_path_factory.mktemp("attention") / "captioner", litert=True)


def test_litert_and_keras_runtimes_print_the_same_captions(attention_bundle, images):
    photos = [str(images / "wide.png"), str(images / "tall.jpg"), str(images / "gray.jpeg")]
    outputs = {}
    for runtime in ("auto", "keras"):
        cmd = [sys.executable, "-m", "captioner.cli", "predict", *photos, "--model", str(attention_bundle),
               "--runtime", runtime, "--json"]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        outputs[runtime] = json.loads(result.stdout)
    assert [r["caption"] for r in outputs["auto"]] == [r["caption"] for r in outputs["keras"]]
    assert all(abs(a["log_prob"] - b["log_prob"]) < 1e-3 for a, b in zip(outputs["auto"], outputs["keras"]))


def test_explain_writes_one_figure_per_image(attention_bundle, images, tmp_path, capsys):
    from helpers_bundle import make_photo

    other = tmp_path / "elsewhere"
    other.mkdir()
    make_photo(other / "wide.png", 3)  # same stem as images/wide.png: its figure must not overwrite that one
    out = tmp_path / "explained"
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(images / "wide.png"), str(images / "tall.jpg"), str(other / "wide.png"),
              "--model", str(attention_bundle), "--explain", str(out)])
    assert exit_.value.code == 0
    assert sorted(p.name for p in out.iterdir()) == ["tall.png", "wide-2.png", "wide.png"]
    with Image.open(out / "tall.png") as figure:
        width, height = figure.size
        pixels = np.asarray(figure.convert("RGB"))
    assert width > 400 and height > 200 and pixels.std() > 10  # photo and heatmaps drawn, not a blank page
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_explain_into_a_file_is_a_one_line_error(bundle, images, tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(images / "wide.png"), "--model", str(bundle), "--explain", str(target)])
    assert exit_.value.code == 1
    assert "not a folder" in capsys.readouterr().err


def test_serve_refuses_a_bad_port_before_loading(bundle, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--model", str(bundle), "--port", "70000"])
    assert exit_.value.code == 1
    assert capsys.readouterr().err.strip() == "error: --port must be 1-65535, got 70000"
