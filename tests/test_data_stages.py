"""The download, clean_text and tokenize stage scripts: outputs, and one-line errors with nothing half-written."""

import json
import subprocess
import sys

import numpy as np
import yaml
from conftest import copy_project


def run_stage(project, script):
    return subprocess.run([sys.executable, f"stages/{script}.py"], cwd=project, capture_output=True, text=True)


def set_params(project, **sections):
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in sections.items():
        params[section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params))


def test_data_stages_on_sample(tmp_path):
    project = copy_project(tmp_path / "p")
    set_params(project, data={"sample_images": 40})
    for script in ("download", "clean_text", "tokenize_text"):
        result = run_stage(project, script)
        assert result.returncode == 0, result.stderr
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
        "error: params.yaml: unknown key 'data.sample_imgs' (known: source, path, kaggle_dataset, sample_images, "
        "sample_seed, split, val_fraction, test_fraction, split_seed)"
    ]
    assert not (project / "data").exists() or not any((project / "data").iterdir())


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
