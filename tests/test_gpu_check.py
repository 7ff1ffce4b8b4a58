"""benchmarks/gpu_check.py in its reduced mode (what runs without a GPU): every step runs and reports."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("keras")
pytest.importorskip("dvc")

ROOT = Path(__file__).resolve().parents[1]


def test_reduced_gpu_check_runs_every_step_and_writes_its_report(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu_check.py"), "--reduced", "--json", str(out)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (run.stdout[-2000:], run.stderr[-2000:])
    report = json.loads(out.read_text())
    assert report["mode"] == "reduced"
    assert report["environment"]["tensorflow"] and report["environment"]["precision_auto"] in ("float32", "bfloat16")
    if not report["environment"]["gpus"]:
        assert "no GPU visible to TensorFlow" in run.stdout
    repro = report["sample_repro"]
    assert repro["epochs_run"] >= 1 and repro["litert_export"] and repro["train_captions_per_second"] > 0
    assert report["predict"]["caption"].split()
    assert all(report["train_captions_per_second"][p] > 0 for p in ("float32", "bfloat16"))
    assert report["extraction"]["images_per_second"] > 0
    devices = report["several_devices"]
    assert "skipped" in devices or all(v > 0 for v in devices["captions_per_second"].values())
