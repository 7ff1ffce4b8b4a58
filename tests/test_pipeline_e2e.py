"""The DVC workflow end to end on a tiny embedded sample, in a temporary git repo made from the project.

One repo is built per module: `dvc repro` from scratch, then param changes, a second ensemble member,
`dvc metrics diff`, `dvc exp run`, and push / fresh clone / pull / predict. Tiny settings come in through
params.yaml only, one member among them: seed 42 (stages train@42 and finetune@42).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import copy_project

BIN = Path(sys.executable).parent
TINY = {
    "members": [42],
    "data": {"sample_images": 40},
    "features": {"batch_size": 16},
    "train": {"embedding_dim": 16, "units": 32, "epochs": 3, "batch_size": 32, "patience": 5, "max_minutes": 2,
              "learning_rate": 0.01},
    "scst": {"epochs": 1, "max_minutes": 2},
    "evaluate": {"beam_size": 2, "figure_images": 4},
}


def sh(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command in `cwd`, failing the test with its output when it fails."""
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def dvc(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh(cwd, sys.executable, "-m", "dvc", *args, check=check)


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([\w@-]+)'", output))


def status_stages(output: str) -> set[str]:
    """The stages `dvc status` names (its unindented `name:` lines)."""
    return set(re.findall(r"^([\w@-]+):$", output, re.M))


def edit_params(repo: Path, **sections: dict | list) -> None:
    """Merge each section's dict into params.yaml's; a top-level list (`members`) replaces the old one."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in sections.items():
        if isinstance(values, dict):
            params[section].update(values)
        else:
            params[section] = values
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def restore(repo: Path) -> None:
    """Back to the committed state: params, lock file and metrics from git, data from the DVC cache.

    A hard reset, not `git checkout -- .`: DVC's autostage has put the new dvc.lock in the index. Then the files
    the tests change are compared with HEAD by content: an edit that keeps a file's size (efficientnet_lite0 ->
    lite2) can pass git's stat check and survive the reset (seen once in CI). The
    checkout rewrites every output (`--relink`), not only those DVC's file-state cache thinks changed,
    and the next test starts only from a pipeline that `dvc status` calls up to date.
    """
    sh(repo, "git", "reset", "-q", "--hard", "HEAD")
    for name in sh(repo, "git", "ls-files", "params.yaml", "dvc.lock", "metrics").stdout.split():
        committed = subprocess.run(["git", "show", f"HEAD:{name}"], cwd=repo, capture_output=True, check=True).stdout
        if (repo / name).read_bytes() != committed:
            (repo / name).write_bytes(committed)
    dvc(repo, "checkout", "--force", "--relink")
    status = dvc(repo, "status").stdout
    assert "up to date" in status, f"the committed pipeline is not up to date after restoring it:\n{status}"


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A git + DVC repo of the project with tiny params, reproduced once and committed."""
    repo = copy_project(tmp_path_factory.mktemp("e2e") / "repo")
    sh(repo, "git", "init", "-q")
    sh(repo, "git", "config", "user.email", "test@example.com")
    sh(repo, "git", "config", "user.name", "captioner tests")
    edit_params(repo, **TINY)
    first = dvc(repo, "repro")
    assert ran_stages(first.stdout) == {"download", "extract_features", "clean_text", "tokenize", "train@42",
                                        "finetune@42", "assemble", "evaluate"}
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "tiny pipeline")
    return repo


def test_repro_from_scratch_then_nothing_to_do(repo):
    for path in ("data/raw/splits.json", "data/features/features.h5", "data/processed/sequences.npz",
                 "models/xe/42/decoder.keras", "models/captioner/config.json", "metrics/eval.json",
                 "metrics/members/42/train.json", "metrics/members/42/finetune.json",
                 "dvclive/members/42/finetune/plots/metrics/val_cider.tsv",
                 "metrics/predictions.csv", "metrics/samples.png"):
        assert (repo / path).is_file(), path
    scores = json.loads((repo / "metrics/eval.json").read_text())
    assert 0.0 <= scores["bleu4"] <= scores["bleu1"] <= 1.0
    again = dvc(repo, "repro")
    assert ran_stages(again.stdout) == set()
    assert "up to date" in dvc(repo, "status").stdout


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"train": {"learning_rate": 0.003}}, {"train@42", "finetune@42", "assemble", "evaluate"}),
        ({"scst": {"litert": False}}, {"finetune@42", "assemble", "evaluate"}),
        ({"text": {"min_words": 5}}, {"clean_text", "tokenize", "train@42", "finetune@42", "assemble", "evaluate"}),
        ({"features": {"encoder": "efficientnet_lite2"}},
         {"extract_features", "train@42", "finetune@42", "assemble", "evaluate"}),
        ({"assemble": {"flip": False}}, {"assemble", "evaluate"}),
        ({"evaluate": {"beam_size": 1}}, {"evaluate"}),
    ],
    ids=["train.learning_rate", "scst.litert", "text.min_words", "features.encoder", "assemble.flip",
         "evaluate.beam_size"],
)
def test_param_change_reruns_exactly_the_dependent_stages(repo, change, expected):
    edit_params(repo, **change)
    try:
        section = next(iter(change))
        status = dvc(repo, "status").stdout
        assert section in status
        assert ran_stages(dvc(repo, "repro").stdout) == expected, f"dvc status before the repro:\n{status}"
    finally:
        restore(repo)


def test_a_self_critical_change_reverted_comes_back_from_the_run_cache(repo):
    before = {p.name: p.read_bytes() for p in (repo / "models/captioner").iterdir()}
    edit_params(repo, scst={"learning_rate": 0.003, "litert": False})
    try:
        first = dvc(repo, "repro").stdout
        assert ran_stages(first) - {"assemble", "evaluate"} == {"finetune@42"}, first  # train@42 stays as it is
        # assemble and evaluate run, or come from the run cache when an earlier test already made the same bundle
        for stage in ("assemble", "evaluate"):
            assert stage in ran_stages(first) or f"Stage '{stage}' is cached" in first, first
        assert {p.name: p.read_bytes() for p in (repo / "models/captioner").iterdir()} != before
        edit_params(repo, scst={"learning_rate": 0.0001, "litert": True})
        back = dvc(repo, "repro").stdout
        assert ran_stages(back) == set(), back  # nothing trains: both stages come back from DVC's run cache
        assert re.findall(r"Stage '([\w@]+)' is cached - skipping run", back) == ["finetune@42", "assemble",
                                                                                  "evaluate"], back
        assert {p.name: p.read_bytes() for p in (repo / "models/captioner").iterdir()} == before
        assert "up to date" in dvc(repo, "status").stdout
    finally:
        restore(repo)


def test_one_member_is_its_bundle_and_a_second_member_trains_alone(repo):
    bundle, member = repo / "models/captioner", repo / "models/members/42"
    assert sorted(p.name for p in bundle.iterdir()) == sorted(p.name for p in member.iterdir())
    for name in ("decoder.keras", "vocab.json"):
        assert (bundle / name).read_bytes() == (member / name).read_bytes(), name
    config, own = (json.loads((d / "config.json").read_text()) for d in (bundle, member))
    assert config == {**own, "decoding": {**own["decoding"], "flip": True}}  # assemble.flip: both views
    assert (bundle / "captioner.tflite").read_bytes() != (member / "captioner.tflite").read_bytes()  # init takes both
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["members"] = [42, 7]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        status = dvc(repo, "status").stdout
        # train@42 and finetune@42 are up to date: their definitions do not read the list
        assert status_stages(status) == {"train@7", "finetune@7", "assemble"}, status
        out = dvc(repo, "repro").stdout
        assert ran_stages(out) == {"train@7", "finetune@7", "assemble", "evaluate"}, out
        assert "Stage 'train@42' didn't change" in out and "Stage 'finetune@42' didn't change" in out, out
        config = json.loads((bundle / "config.json").read_text())
        assert config["format"] == 2 and config["members"] == ["decoder.keras", "decoder_2.keras"]
        for name, seed in (("decoder.keras", 42), ("decoder_2.keras", 7)):
            assert (bundle / name).read_bytes() == (repo / f"models/members/{seed}/decoder.keras").read_bytes()
        assert json.loads((repo / "metrics/eval.json").read_text())["members"] == 2
        assert "up to date" in dvc(repo, "status").stdout
    finally:
        for folder in ("models/xe/7", "models/members/7", "dvclive/members/7", "metrics/members/7"):
            shutil.rmtree(repo / folder, ignore_errors=True)  # a dropped member's outputs are no stage's any more
        restore(repo)


def test_metrics_diff_shows_bleu_before_and_after(repo):
    edit_params(repo, train={"epochs": 15})
    try:
        dvc(repo, "repro")
        diff = json.loads(dvc(repo, "metrics", "diff", "--all", "--json").stdout)
        scores = diff["metrics/eval.json"]
        assert {"bleu1", "bleu4"} <= set(scores)
        assert all({"old", "new"} <= set(scores[k]) for k in ("bleu1", "bleu4"))
        assert scores["bleu1"]["new"] != scores["bleu1"]["old"], scores
        text = dvc(repo, "metrics", "diff", "--all").stdout
        assert "bleu4" in text and "HEAD" in text
    finally:
        restore(repo)


def test_experiment_run_and_show(repo):
    dvc(repo, "exp", "run", "-S", "train.epochs=2", "-n", "two-epochs")
    try:
        rows = json.loads(dvc(repo, "exp", "show", "--json").stdout)
        exps = [e for row in rows for e in (row.get("experiments") or [])]
        names = [e.get("name") for e in exps]
        assert "two-epochs" in names, names
        revs = [r for e in exps if e.get("name") == "two-epochs" for r in e["revs"]]
        data = revs[0]["data"]
        assert data["params"]["params.yaml"]["data"]["train"]["epochs"] == 2
        assert "bleu4" in data["metrics"]["metrics/eval.json"]["data"]
    finally:
        restore(repo)


def test_push_clone_pull_predict(repo, tmp_path):
    remote = tmp_path / "remote"
    dvc(repo, "remote", "add", "-d", "-f", "shared", str(remote))
    dvc(repo, "push")
    sh(repo, "git", "add", ".dvc/config")
    sh(repo, "git", "commit", "-qm", "remote")
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    assert not (clone / "models").exists()
    dvc(clone, "pull")
    status = dvc(clone, "status")
    assert "up to date" in status.stdout, status.stdout
    image = sorted((clone / "data/raw/Images").glob("*.jpg"))[0]
    assert (clone / "models/captioner/captioner.tflite").is_file()  # finetune@42's LiteRT export, assembled
    captions = {}
    for runtime in ("litert", "keras"):
        result = sh(clone, str(BIN / "captioner"), "predict", str(image), "--model", "models/captioner", "--json",
                    "--runtime", runtime)
        captions[runtime] = json.loads(result.stdout)[0]["caption"]
    assert captions["litert"].strip() and captions["litert"] == captions["keras"]
    assert ran_stages(dvc(clone, "repro").stdout) == set()
