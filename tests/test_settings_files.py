"""Settings files: alias bombs and oversized values are refused unexpanded, duplicate keys are errors, messages quote
values short and name the params file that was actually read."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from captioner.core.errors import CaptionerError
from captioner.core.params import MAX_ALIASES, MAX_NODES, load_params, where
from captioner.core.schema import QUOTE_CHARS, integer, check, quote

from conftest import ROOT


def _bomb(levels: int = 9) -> str:
    """A flow list whose anchors nest `levels` deep, each level nine aliases of the one before: 9**levels strings."""
    items = ["&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    items += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "[" + ", ".join(items) + "]"


@pytest.mark.parametrize("text", [f"members: {_bomb()}\n", f"data:\n  path: {_bomb()}\n"], ids=["members", "data.path"])
def test_alias_bomb_is_refused_before_it_is_expanded(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    start = time.perf_counter()
    with pytest.raises(CaptionerError, match=rf"params.yaml:\d+: more than {MAX_NODES} values once YAML aliases"):
        load_params(path)
    assert time.perf_counter() - start < 2


def test_alias_uses_are_bounded(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("members: &n [1]\nx: [" + ", ".join(["*n"] * (MAX_ALIASES + 1)) + "]\n")
    with pytest.raises(CaptionerError, match=rf"params.yaml:2: more than {MAX_ALIASES} YAML aliases"):
        load_params(path)


def test_a_few_aliases_and_merge_keys_still_work(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  sample_seed: &s 7\n  split_seed: *s\nmembers: [*s, 3]\n")
    params = load_params(path)
    assert params["members"] == [7, 3] and params["data"]["sample_seed"] == params["data"]["split_seed"] == 7
    path.write_text("members: [3]\ntrain: &t\n  epochs: 2\nevaluate:\n  <<: {beam_size: 2}\n  split: val\n")
    assert load_params(path)["evaluate"] == {"split": "val", "beam_size": 2, "figure_images": 8}


def test_an_alias_that_holds_itself_is_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  path: &p [a, *p]\n")
    with pytest.raises(CaptionerError, match=r"params.yaml:2: a YAML alias refers to a value that holds it"):
        load_params(path)


@pytest.mark.parametrize("text, message", [
    ("[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
    ("members: [" + "9" * 5000 + "]\n", "not a params file: Exceeds the limit"),
], ids=["deep", "long-integer"])
def test_pathological_yaml_is_one_line(tmp_path, text, message):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(CaptionerError, match=message) as err:
        load_params(path)
    assert "\n" not in str(err.value)


def test_an_oversized_file_is_refused_unread(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("# " + "x" * (1 << 20) + "\nmembers: [1]\n")
    with pytest.raises(CaptionerError, match=r"params.yaml: \d+ bytes; a params file holds at most"):
        load_params(path)


@pytest.mark.parametrize("text, message", [
    ("data:\n  source: folder\n  path: x\ntrain:\n  epochs: 1\ndata:\n  source: sample\n",
     r"params.yaml:6: duplicate key 'data' \(first at line 1\)"),
    ("train:\n  epochs: 1\n  units: 4\n  epochs: 2\n", r"params.yaml:4: duplicate key 'epochs' \(first at line 2\)"),
    ("members: [1]\nmembers: [1]\n", r"params.yaml:2: duplicate key 'members'"),
])
def test_duplicate_keys_are_refused(tmp_path, text, message):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(CaptionerError, match=message):
        load_params(path)


def test_a_stage_script_run_directly_refuses_duplicate_keys(tmp_path):
    params = tmp_path / "mine.yaml"
    params.write_text("data:\n  sample_images: 10\nmembers: [1]\ndata:\n  sample_seed: 3\n")
    run = subprocess.run([sys.executable, str(ROOT / "stages/download.py"), "--params", str(params),
                          "--out", str(tmp_path / "raw")], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 1
    assert run.stderr.strip() == f"error: {params}:4: duplicate key 'data' (first at line 1); keep one"
    assert not (tmp_path / "raw").exists()


def test_quoted_values_are_cut_short():
    assert quote("x" * 5000) == repr("x" * QUOTE_CHARS) + "..."
    assert len(quote(list(range(100_000)))) <= QUOTE_CHARS + 3
    assert quote([[[[1]]]]) == "[[[...]]]"
    with pytest.raises(CaptionerError) as err:
        check("f.yaml:1", "seed", "y" * 100_000, integer(1, 0, 10))
    assert len(str(err.value)) < 200


def test_unknown_keys_are_quoted_short(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(f"train:\n  {'k' * 1000}: 1\n")
    with pytest.raises(CaptionerError, match=r"params.yaml:2: unknown key 'train.kkk+'\.\.\. \(known") as err:
        load_params(path)
    assert len(str(err.value)) < 1000


def test_messages_name_the_params_file_that_was_read(tmp_path):
    path = tmp_path / "other.yaml"
    path.write_text("members: [1]\ndata:\n  val_fraction: 0.5\n  test_fraction: 0.5\n")
    with pytest.raises(CaptionerError, match=r"other.yaml:4: 'data.test_fraction': data.val_fraction \+ "):
        load_params(path)
    path.write_text("members: [1]\nevaluate:\n  split: val\n")
    load_params(path)
    assert where("evaluate.split") == f"{path}:3"
    assert where("data.split") == str(path)
