"""Small cases with one-line answers: a decoder.keras that is no model, a full disk in download, control characters
in names, a random split that leaves train empty, TensorFlow's GPU probe lines on a machine without a GPU."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from captioner.core.errors import CaptionerError, printable
from captioner.core.native_logs import has_gpu_device
from captioner.core.params import load_params
from captioner.core.stage import run_main
from captioner.data.datasets import prepare_raw

from conftest import ROOT
from test_bundle import VOCAB, write_bundle_files
from test_custom_split import data_params, make_own_folder


def test_random_bytes_decoder_is_not_a_valid_keras_file(tmp_path):
    pytest.importorskip("keras")
    from captioner.model.bundle import load_bundle

    write_bundle_files(tmp_path / "b", VOCAB, os.urandom(4096))
    with pytest.raises(CaptionerError) as err:
        load_bundle(tmp_path / "b")
    assert str(err.value) == (f"{tmp_path}/b/decoder.keras: cannot load the decoder (not a valid Keras model file: "
                              "not a .keras zip archive)")


def test_download_on_a_full_disk_names_the_file(tmp_path, monkeypatch):
    from PIL import Image

    def full(image, target, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    data = {**data_params(tmp_path), "source": "sample", "sample_images": 10}
    with pytest.raises(CaptionerError, match=rf"^{tmp_path}/\.raw\.tmp-scratch-\w+: cannot write: No space left on "
                                             rf"device \(free some space beside {tmp_path}/raw and re-run\)$"):
        prepare_raw(data, tmp_path / "raw")
    assert not any(tmp_path.iterdir())


def test_control_characters_are_escaped_in_messages(tmp_path, capsys):
    assert printable("a\x00b\nc\x1b[31m é\udcff") == "a\\x00b\\nc\\x1b[31m é\\udcff"

    def fail() -> None:
        raise CaptionerError("data.path: folder not found: my\x00photos\n")

    with pytest.raises(SystemExit):
        run_main(fail)
    assert capsys.readouterr().err == "error: data.path: folder not found: my\\x00photos\\n\n"
    data = data_params(tmp_path / "a\x00b")
    data["source"] = "folder"
    with pytest.raises(SystemExit):
        run_main(lambda: prepare_raw(data, tmp_path / "raw"))
    assert capsys.readouterr().err == f"error: data.path: folder not found: {tmp_path}/a\\x00b\n"


def test_predict_escapes_control_characters_in_file_names(tmp_path):
    pytest.importorskip("keras")
    write_bundle_files(tmp_path / "b", VOCAB)
    run = subprocess.run([sys.executable, "-m", "captioner.cli", "predict", str(tmp_path / "x\x01\x1b.jpg"),
                          "--model", str(tmp_path / "b")], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 1
    assert run.stderr == f"error: {tmp_path}/x\\x01\\x1b.jpg: file not found\n"


def test_a_random_split_that_leaves_train_empty_fails_in_download(tmp_path):
    make_own_folder(tmp_path / "src", n=2)
    params = tmp_path / "mine.yaml"
    params.write_text(f"data:\n  source: folder\n  path: {tmp_path / 'src'}\n  split: random\n"
                      "  val_fraction: 0.3\n  test_fraction: 0.4\n")
    data = load_params(params)["data"]
    with pytest.raises(CaptionerError) as err:
        prepare_raw(data, tmp_path / "raw")
    assert str(err.value) == (f"{params}:6: data.split random on 2 captioned images gives val 1, test 1 and train "
                              "none; lower data.test_fraction (now 0.4) so train keeps an image")
    assert not (tmp_path / "raw").exists()


@pytest.mark.skipif(has_gpu_device(), reason="with a GPU the probe lines are kept")
def test_tensorflow_starts_without_its_gpu_probe_lines_but_keeps_other_lines():
    pytest.importorskip("tensorflow")
    code = ("import os; from captioner.core.native_logs import start_tensorflow, without_gpu_probe_lines\n"
            "start_tensorflow()\n"
            "with without_gpu_probe_lines():\n"
            "    os.write(2, b'E0000 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)\\n')\n"
            "    os.write(2, b'E0000 real.cc:1] a real error\\n')\n"
            "print('ok')\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0 and run.stdout == "ok\n"
    assert "cuInit" not in run.stderr and "Could not find cuda drivers" not in run.stderr
    assert run.stderr.endswith("E0000 real.cc:1] a real error\n")
