"""Data-parallel training on two devices (the CPU split into two logical devices): it learns, and its bundle
loads and captions on one device."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("keras")

from helpers_model import make_dataset, small_params  # noqa: E402

from captioner.core.errors import CaptionerError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# TensorFlow fixes its devices at start-up, so the two-device run gets a process of its own.
TWO_DEVICES = """
import json, sys
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from pathlib import Path
from captioner.model.training import run_train

root, params = Path(sys.argv[1]), json.loads(sys.argv[2])
summary = run_train(params, root / "data/features", root / "data/processed", root / "models/captioner",
                    root / "metrics/train.json", None, verbose=0)
print(json.dumps(summary))
"""


def test_two_logical_devices_train_data_parallel_and_the_bundle_loads_on_one(tmp_path):
    make_dataset(tmp_path, grid=True)
    params = small_params("attention", epochs=4, devices=2, captions_per_image=5, batch_size=20, patience=10)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([sys.executable, "-c", TWO_DEVICES, str(tmp_path), json.dumps(params)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["devices"] == 2 and summary["epochs_run"] == 4
    losses = summary["train_loss"]
    assert losses[-1] < 0.8 * losses[0]  # it learns

    from test_train_eval import train

    make_dataset(tmp_path / "one", grid=True)
    one = train(tmp_path / "one", {**params, "train": {**params["train"], "devices": 1}})
    assert losses[0] == pytest.approx(one["train_loss"][0], rel=0.02)  # the loss, not replicas x the loss

    from captioner.model.bundle import load_bundle
    from captioner.model.decode import CaptionDecoder
    from captioner.vision.feature_store import load_features

    bundle = load_bundle(tmp_path / "models/captioner")  # this process has one CPU device
    _, features, _ = load_features(tmp_path / "data/features/features.h5")
    captions = CaptionDecoder(bundle.model, bundle.vocab.max_length).beam(features[:4].astype("float32"), 3)
    assert all(captions) and len(captions) == 4


def test_more_devices_than_visible_is_one_line_error(tmp_path):
    from test_train_eval import train

    make_dataset(tmp_path)
    with pytest.raises(CaptionerError, match="train.devices is 64 but TensorFlow sees 0 GPU and 1 CPU devices"):
        train(tmp_path, small_params("merge", devices=64))
