"""extract_features survives a SIGKILL: the rerun resumes from the finished pieces and writes the same file."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from conftest import save_image

from captioner.vision.feature_store import load_features
from captioner.vision.resume_store import ResumeStore, piece_key

ROOT = Path(__file__).resolve().parents[1]

# Runs the real stage script with pieces of 2 batches; with KILL_AT=k it SIGKILLs itself half-way through
# writing the k-th piece, the way an out-of-memory killer or a closed laptop would stop it.
WRAPPER = """
import os, runpy, signal, sys
import numpy as np
import captioner.vision.features

captioner.vision.features.PIECE_BATCHES = 2
kill_at, saves, real_savez = int(os.environ["KILL_AT"]), [], np.savez

def savez(f, **arrays):
    saves.append(1)
    if len(saves) == kill_at:
        f.write(b"PK half a piece")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    real_savez(f, **arrays)

np.savez = savez
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def make_project(folder: Path) -> Path:
    """params.yaml (grid features of the unmirrored images only, batches of 2) and data/raw/Images with 12 images
    and one broken file. Resuming with both views: tests/test_flipped_views.py."""
    images = folder / "data" / "raw" / "Images"
    images.mkdir(parents=True)
    for i in range(12):
        save_image(images / f"img_{i:02d}.jpg", 300 + i, size=(64, 48))
    (images / "img_05b.jpg").write_text("not an image")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["features"].update(output="grid", batch_size=2, flip=False)
    params["assemble"]["flip"] = False  # reading both views needs the mirrored features
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    return folder


def run_stage(project: Path, wrapper: Path, kill_at: int, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KILL_AT": str(kill_at), "CAPTIONER_CACHE": str(cache),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    args = shlex.split(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["extract_features"]["cmd"])[2:]
    return subprocess.run([sys.executable, str(wrapper), str(ROOT / "stages" / "extract_features.py"), *args],
                          cwd=project, env=env, capture_output=True, text=True, timeout=600)


def test_killed_extraction_resumes_and_matches_an_uninterrupted_run(tmp_path, tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "weights-cache"
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(WRAPPER)
    interrupted, uninterrupted = make_project(tmp_path / "a"), make_project(tmp_path / "b")
    resume = interrupted / "data" / "features.resume"

    killed = run_stage(interrupted, wrapper, kill_at=3, cache=cache)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (interrupted / "data" / "features").exists()
    left = sorted(p.name for p in resume.iterdir())
    assert len([n for n in left if n.endswith(".npz")]) == 2 and len([n for n in left if ".tmp" in n]) == 1

    resumed = run_stage(interrupted, wrapper, kill_at=0, cache=cache)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed: 8 of 13 images were already encoded" in resumed.stderr
    assert not resume.exists()

    whole = run_stage(uninterrupted, wrapper, kill_at=0, cache=cache)
    assert whole.returncode == 0, whole.stderr
    assert "resumed:" not in whole.stderr

    a, b = interrupted / "data" / "features", uninterrupted / "data" / "features"
    names_a, features_a, attrs_a = load_features(a / "features.h5")
    names_b, features_b, attrs_b = load_features(b / "features.h5")
    assert names_a == names_b == [f"img_{i:02d}.jpg" for i in range(12)]
    assert features_a.shape == (12, 7, 7, 1280) and features_a.dtype == np.float16
    assert features_a.tobytes() == features_b.tobytes() and attrs_a == attrs_b
    assert (a / "features.h5").read_bytes() == (b / "features.h5").read_bytes()
    meta = json.loads((a / "meta.json").read_text())
    assert meta == json.loads((b / "meta.json").read_text())
    assert meta["num_images"] == 12 and list(meta["skipped"]) == ["img_05b.jpg"]


def test_piece_key_follows_image_content_not_file_identity(tmp_path):
    settings = {"encoder": "efficientnet_lite0", "batch_size": 2}
    for name in ("a.jpg", "b.jpg"):
        save_image(tmp_path / name, 1)
    paths = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    key = piece_key(settings, paths)
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in paths:
        shutil.copy(p, copy / p.name)
    assert piece_key(settings, [copy / "a.jpg", copy / "b.jpg"]) == key
    save_image(copy / "b.jpg", 2)
    assert piece_key(settings, [copy / "a.jpg", copy / "b.jpg"]) != key
    assert piece_key({**settings, "batch_size": 4}, paths) != key


def test_resume_store_round_trip_without_pickle(tmp_path):
    store = ResumeStore(tmp_path / "features.resume")
    features = np.arange(2 * 3 * 4, dtype=np.float16).reshape(2, 3, 4)
    assert not store.has("k")
    store.save("k", ["x.jpg", "y.jpg"], features, {"z.jpg": "empty file"})
    assert store.has("k")
    assert store.names_and_skipped("k") == (["x.jpg", "y.jpg"], {"z.jpg": "empty file"})
    assert store.features("k").tobytes() == features.tobytes()
    store.remove()
    assert not (tmp_path / "features.resume").exists()
