"""The download, clean_text and tokenize stage scripts: outputs, and one-line errors with nothing half-written."""

import json
import os
import shlex
import subprocess
import sys

import numpy as np
import yaml
from conftest import copy_project


def run_stage(project, stage):
    """Run a stage's command as dvc.yaml gives it (with this interpreter)."""
    cmd = shlex.split(yaml.safe_load((project / "dvc.yaml").read_text())["stages"][stage]["cmd"])
    return subprocess.run([sys.executable, *cmd[1:]], cwd=project, capture_output=True, text=True)


def set_params(project, **sections):
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in sections.items():
        params[section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params))


def test_data_stages_on_sample(tmp_path):
    project = copy_project(tmp_path / "p")
    set_params(project, data={"sample_images": 40})
    old_umask = os.umask(0o022)
    try:
        for stage in ("download", "clean_text", "tokenize"):
            result = run_stage(project, stage)
            assert result.returncode == 0, result.stderr
    finally:
        os.umask(old_umask)
    for path, mode in (("data/raw", 0o755), ("data/raw/Images", 0o755), ("data/raw/splits.json", 0o644),
                       ("data/raw/report.json", 0o644), ("data/processed/vocab.json", 0o644),
                       ("data/processed/sequences.npz", 0o644)):
        assert (project / path).stat().st_mode & 0o777 == mode, path
    captions = json.loads((project / "data/processed/captions.json").read_text())
    vocab = json.loads((project / "data/processed/vocab.json").read_text())
    seqs = np.load(project / "data/processed/sequences.npz")
    assert len(captions) == 40 and all(len(c) == 5 for c in captions.values())
    assert vocab["tokens"][:4] == ["<pad>", "<unk>", "<start>", "<end>"]
    assert seqs["train_tokens"].shape[1] == vocab["max_length"]
    assert len(seqs["train_tokens"]) + len(seqs["val_tokens"]) + len(seqs["test_tokens"]) == 200
    assert (seqs["train_tokens"][:, 0] == 2).all()


def test_unknown_param_is_one_line_error(tmp_path):
    project = copy_project(tmp_path / "p")
    text = (project / "params.yaml").read_text().replace("sample_images:", "sample_imgs:")
    (project / "params.yaml").write_text(text)
    result = run_stage(project, "download")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: params.yaml:9: unknown key 'data.sample_imgs' (known: source, path, kaggle_dataset, sample_images, "
        "sample_seed, split, val_fraction, test_fraction, split_seed)"
    ]
    assert not (project / "data").exists() or not any((project / "data").iterdir())


def test_out_of_range_setting_stops_before_any_work(tmp_path):
    project = copy_project(tmp_path / "p")
    set_params(project, train={"batch_size": 0})
    line = (project / "params.yaml").read_text().splitlines().index("  batch_size: 0") + 1
    result = run_stage(project, "download")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: params.yaml:{line}: 'train.batch_size' must be an integer >= 1 <= 65536, got 0"
    ]
    assert not (project / "data").exists()


def test_missing_folder_leaves_previous_output_intact(tmp_path):
    project = copy_project(tmp_path / "p")
    set_params(project, data={"sample_images": 12})
    assert run_stage(project, "download").returncode == 0
    before = (project / "data/raw/captions.csv").read_bytes()
    set_params(project, data={"source": "folder", "path": "nowhere"})
    result = run_stage(project, "download")
    assert result.returncode == 1
    assert result.stderr.strip() == "error: data.path: folder not found: nowhere"
    assert (project / "data/raw/captions.csv").read_bytes() == before
    assert sorted(p.name for p in (project / "data").iterdir()) == ["raw"]


def test_clean_text_reports_malformed_captions(tmp_path):
    project = copy_project(tmp_path / "p")
    (project / "data/raw").mkdir(parents=True)
    (project / "data/raw/captions.csv").write_text("picture,words\nx.jpg,hello\n")
    result = run_stage(project, "clean_text")
    assert result.returncode == 1
    assert "captions.csv:1: header must have columns 'image' and 'caption'" in result.stderr
    assert not (project / "data/processed").exists() or not any((project / "data/processed").iterdir())


def write_captions_csv(project, rows=200):
    (project / "data/raw").mkdir(parents=True, exist_ok=True)
    lines = ["image,caption"] + [f"img{i % 40}.jpg,a red circle number {i} above a blue square" for i in range(rows)]
    (project / "data/raw/captions.csv").write_text("\n".join(lines) + "\n")


def test_next_run_removes_what_a_killed_run_left(tmp_path):
    project = copy_project(tmp_path / "p")
    write_captions_csv(project)
    crash = ("import os\nfrom captioner.core.atomic import atomic_path\n"
             "with atomic_path('data/processed/captions.json') as tmp:\n"
             "    tmp.write_bytes(b'x' * 4096)\n    os._exit(9)\n")
    assert subprocess.run([sys.executable, "-c", crash], cwd=project).returncode == 9
    leftovers = list((project / "data/processed").glob(".captions.json.tmp-*"))
    assert len(leftovers) == 1 and leftovers[0].stat().st_size == 4096
    result = run_stage(project, "clean_text")
    assert result.returncode == 0, result.stderr
    assert "removed 1 temporary file(s) left by an interrupted run" in result.stderr
    assert sorted(p.name for p in (project / "data/processed").iterdir()) == ["captions.json"]


def test_full_disk_ends_the_stage_with_one_line(tmp_path):
    import resource
    import signal

    project = copy_project(tmp_path / "p")
    write_captions_csv(project)

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))

    cmd = shlex.split(yaml.safe_load((project / "dvc.yaml").read_text())["stages"]["clean_text"]["cmd"])
    result = subprocess.run([sys.executable, *cmd[1:]], cwd=project, capture_output=True, text=True,
                            preexec_fn=limit_file_size)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: data/processed/captions.json: cannot write: File too large (free some space and re-run)"
    ]
    assert list((project / "data/processed").iterdir()) == []
