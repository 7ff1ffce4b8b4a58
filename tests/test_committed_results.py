"""The DVC promise on the embedded sample: a clean copy of the committed project, with the pinned versions,
reproduces the committed results exactly, and leaves `dvc status` and `git status` clean.

CI runs it on a clean clone. It fails when code, params or versions change what the pipeline computes
without the committed `dvc.lock` and `metrics/` being regenerated (`dvc repro`, then commit both).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

pytest.importorskip("dvc")

MEMBERS = yaml.safe_load((ROOT / "params.yaml").read_text())["members"]
METRICS = ("metrics/eval.json",
           *(f"metrics/members/{seed}/{stage}.json" for seed in MEMBERS for stage in ("train", "finetune")))


def run(cwd: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(cwd)}  # the copy's code, whatever else is installed
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result.stdout


def tracked_copy(dest: Path) -> Path:
    """The project's tracked files, as a clean clone has them, in a new git repo with one commit."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in filter(None, files.split("\0")):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((ROOT / name).read_bytes())
    for command in (["init", "-q"], ["add", "-A"], ["-c", "user.name=ci", "-c", "user.email=ci@localhost",
                                                     "commit", "-qm", "clean copy"]):
        run(dest, "git", *command)
    return dest


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the project's git checkout")
def test_a_clean_copy_reproduces_the_committed_sample_results(tmp_path):
    repo = tracked_copy(tmp_path / "repo")
    committed = {name: (repo / name).read_text() for name in METRICS}
    run(repo, sys.executable, "-m", "dvc", "repro")
    for name in METRICS:
        assert (repo / name).read_text() == committed[name], name
    assert "up to date" in run(repo, sys.executable, "-m", "dvc", "status")
    assert run(repo, "git", "status", "--porcelain", "--untracked-files=no") == ""
