"""Multi-worker training through TF_CONFIG: two processes on 127.0.0.1 train the tiny sample together, only
the chief writes, the loss matches one process with the same global batch, and a killed worker stops the run
with one line naming it. Also TF_CONFIG parsing (no TensorFlow)."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from captioner.core.errors import CaptionerError
from captioner.model.distribute import read_cluster

ROOT = Path(__file__).resolve().parents[1]

# One worker: the train stage's library call, errors as one line (as stages/train.py runs it).
WORKER = """
import json, sys
from pathlib import Path
from captioner.core.stage import run_main
from captioner.model.training import run_train

root, params = Path(sys.argv[1]), json.loads(sys.argv[2])
def main():
    summary = run_train(params, root / "data/features", root / "data/processed", root / "models/captioner",
                        root / "metrics/train.json", str(root / "dvclive"), verbose=0)
    print(json.dumps(summary))
run_main(main)
"""

# The first epoch's mean loss of two workers vs one process on the same global batches (float32): they differ
# only by float summation order and by dropout masks drawn per worker (measured: 0.2%).
FIRST_EPOCH_RTOL = 0.02


def free_ports(n: int) -> list[int]:
    """n ports free on 127.0.0.1 now (bound together, so distinct)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def start_workers(roots: list[Path], params: dict) -> list[subprocess.Popen]:
    """One process per root, each with its TF_CONFIG naming the same cluster on 127.0.0.1."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(len(roots))]}
    procs = []
    for index, root in enumerate(roots):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "TF_CONFIG": tf_config}
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(root), json.dumps(params)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_two_workers_train_together_only_the_chief_writes_and_the_loss_matches_one_process(tmp_path):
    pytest.importorskip("keras")
    from helpers_model import make_dataset, small_params

    roots = [tmp_path / "chief", tmp_path / "worker"]  # each worker has its own copy of data/
    for root in roots:
        make_dataset(root, grid=True)
    before = files_under(roots[1])
    params = small_params("attention", epochs=4, captions_per_image=5, batch_size=20, patience=10)
    procs = start_workers(roots, params)
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    chief, worker = (json.loads(out.strip().splitlines()[-1]) for out, _ in outs)

    assert chief["workers"] == 2 and chief["devices"] == 2 and chief["epochs_run"] == 4
    assert worker["train_loss"] == chief["train_loss"]  # one model: the loss is the cluster's on both
    assert chief["train_loss"][-1] < 0.8 * chief["train_loss"][0]  # it learns
    written = json.loads((roots[0] / "metrics/train.json").read_text())
    assert written["workers"] == 2 and written["devices"] == 2
    assert (roots[0] / "dvclive/plots/metrics/train/loss.tsv").is_file()
    assert files_under(roots[1]) == before  # the other worker writes nothing

    from captioner.model.bundle import load_bundle
    from captioner.serving.api import Captioner
    from captioner.vision.feature_store import load_features

    _, features, _ = load_features(roots[0] / "data/features/features.h5")
    results = Captioner(load_bundle(roots[0] / "models/captioner")).caption_features(features[-2:], 3)
    assert len(results) == 2 and all(r.caption.split() for r in results)

    from test_train_eval import train

    single = train(tmp_path / "chief", params)  # one process, same global batch (rewrites the chief's outputs)
    assert single["workers"] == 1 and single["devices"] == 1
    assert chief["train_loss"][0] == pytest.approx(single["train_loss"][0], rel=FIRST_EPOCH_RTOL)


def test_the_time_cap_stops_every_worker_after_the_same_epoch(tmp_path):
    pytest.importorskip("keras")
    from helpers_model import make_dataset, small_params

    roots = [tmp_path / "chief", tmp_path / "worker"]
    for root in roots:
        make_dataset(root, grid=True)
    params = small_params("attention", epochs=50, captions_per_image=5, batch_size=20, patience=50,
                          max_minutes=0.0001)  # past before the first epoch ends (12 batches: no mid-epoch check)
    procs = start_workers(roots, params)
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    for out, _ in outs:
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["epochs_run"] == 1 and summary["stopped_by"] == "time_cap"


def test_a_killed_worker_stops_the_chief_with_one_line_naming_it(tmp_path):
    pytest.importorskip("keras")
    from helpers_model import make_dataset, small_params

    roots = [tmp_path / "chief", tmp_path / "worker"]
    for root in roots:
        make_dataset(root, grid=True)
    params = small_params("attention", epochs=1000, captions_per_image=5, batch_size=20, patience=1000)
    chief, worker = start_workers(roots, params)
    try:
        first_epoch = roots[0] / "dvclive/plots/metrics/train/loss.tsv"
        deadline = time.monotonic() + 240
        while not first_epoch.is_file() and time.monotonic() < deadline and chief.poll() is None:
            time.sleep(0.5)
        assert first_epoch.is_file(), chief.communicate()[1][-2000:]
        worker.kill()
        _, err = chief.communicate(timeout=120)
    finally:
        for p in (chief, worker):
            if p.poll() is None:
                p.kill()
    assert chief.returncode == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: multi-worker training stopped: worker 1 (127.0.0.1:"), last
    assert not (roots[0] / "models").exists() and not (roots[0] / "metrics").exists()


def test_tf_config_names_the_cluster_and_the_chief():
    cluster = {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]}
    config = lambda kind, i, c=cluster: {"TF_CONFIG": json.dumps({"cluster": c, "task": {"type": kind, "index": i}})}
    assert read_cluster({}) is None and read_cluster({"TF_CONFIG": " "}) is None
    assert read_cluster({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}})}) is None
    first, second = read_cluster(config("worker", 0)), read_cluster(config("worker", 1))
    assert first.is_chief and not second.is_chief and second.workers == 2 and second.rank == 1
    with_chief = {"chief": ["10.0.0.9:2222"], **cluster}
    chief, worker0 = read_cluster(config("chief", 0, with_chief)), read_cluster(config("worker", 0, with_chief))
    assert chief.is_chief and not worker0.is_chief and worker0.rank == 1 and worker0.workers == 3
    assert worker0.name("worker", 1) == "worker 1 (10.0.0.2:2222)"


@pytest.mark.parametrize("text, message", [
    ("{cluster", "TF_CONFIG: not valid JSON"),
    ('{"cluster": {"ps": ["a:1", "b:2"]}, "task": {"type": "ps", "index": 0}}', "cluster job 'ps' is not supported"),
    ('{"cluster": {"worker": ["a:1", "b"]}, "task": {"type": "worker", "index": 0}}', 'list of "host:port"'),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}', "task worker 2 is not in"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker"}}', 'an integer "index"'),
    ('{"cluster": {"worker": ["a:1", "b:2"]}}', "needs"),
])
def test_a_malformed_tf_config_is_one_line(text, message):
    with pytest.raises(CaptionerError, match=message) as info:
        read_cluster({"TF_CONFIG": text})
    assert "\n" not in str(info.value)
