"""Your own captioned images: a seeded random split (data.split: random), and one-line errors when nothing matches."""

import csv
import json
import zipfile
from pathlib import Path

import pytest
import yaml
from test_data_stages import run_stage
from conftest import copy_project, make_kaggle_folder, save_image

from captioner.data.datasets import prepare_raw
from captioner.data.datasets.splitting import random_split
from captioner.core.errors import CaptionerError


def data_params(path, **overrides):
    params = {"source": "folder", "path": str(path), "kaggle_dataset": "adityajn105/flickr8k", "sample_images": 30,
              "sample_seed": 0, "split": "random", "val_fraction": 0.1, "test_fraction": 0.2, "split_seed": 0}
    params.update(overrides)
    return params


def make_own_folder(folder: Path, n: int = 20, captions_name: str = "captions.csv") -> list[str]:
    """Images/ + an `image,caption` file with names no official split knows (holiday photos)."""
    (folder / "Images").mkdir(parents=True)
    names = [f"holiday_{i:03d}.{'png' if i % 5 == 0 else 'jpg'}" for i in range(n)]
    with (folder / captions_name).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        for i, name in enumerate(names):
            save_image(folder / "Images" / name, 200 + i)
            writer.writerows([name, f"my photo {i} , take {k}"] for k in range(3))
    return names


def read_splits(out: Path) -> dict:
    return json.loads((out / "splits.json").read_text())


def test_random_split_sizes_are_exact_disjoint_and_complete():
    names = [f"img{i}.jpg" for i in range(101)]
    splits = random_split(names, 0.1, 0.2, seed=3)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [71, 10, 20]
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == sorted(names)
    assert all(splits[s] == sorted(splits[s]) for s in splits)


def test_random_split_depends_on_seed_not_on_input_order():
    names = [f"img{i}.jpg" for i in range(50)]
    assert random_split(names, 0.2, 0.2, 7) == random_split(list(reversed(names)), 0.2, 0.2, 7)
    assert random_split(names, 0.2, 0.2, 7) != random_split(names, 0.2, 0.2, 8)


def test_adding_images_moves_few_others():
    names = [f"img{i}.jpg" for i in range(200)]
    before = random_split(names, 0.1, 0.1, 0)
    after = random_split(names + ["new1.jpg", "new2.jpg"], 0.1, 0.1, 0)
    moved = [n for n in names if not any(n in after[s] for s in before if n in before[s])]
    assert len(moved) <= 4


def test_own_folder_with_random_split(tmp_path):
    names = make_own_folder(tmp_path / "src")
    prepare_raw(data_params(tmp_path / "src"), tmp_path / "a")
    prepare_raw(data_params(tmp_path / "src"), tmp_path / "b")
    splits = read_splits(tmp_path / "a")
    assert splits == read_splits(tmp_path / "b")
    assert {s: len(v) for s, v in splits.items()} == {"train": 14, "val": 2, "test": 4}
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == sorted(names)
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["split"] == "random" and report["images"] == 20 and report["captions"] == 60
    assert report["captions_file"] == "captions.csv"
    prepare_raw(data_params(tmp_path / "src", split_seed=1), tmp_path / "c")
    assert read_splits(tmp_path / "c") != splits


def test_own_archive_with_random_split(tmp_path):
    make_own_folder(tmp_path / "mine", captions_name="captions.txt")
    with zipfile.ZipFile(tmp_path / "mine.zip", "w") as zf:
        for f in sorted((tmp_path / "mine").rglob("*")):
            zf.write(f, f.relative_to(tmp_path))
    prepare_raw(data_params(tmp_path / "mine.zip", source="archive"), tmp_path / "raw")
    assert sum(map(len, read_splits(tmp_path / "raw").values())) == 20


def test_own_folder_with_official_split_is_one_line_error(tmp_path):
    make_own_folder(tmp_path / "src")
    with pytest.raises(CaptionerError, match=r"src: none of the 20 captioned images \(e.g. holiday_000.png\) is in "
                                             r"the official Flickr8k split .* set data.split: random"):
        prepare_raw(data_params(tmp_path / "src", split="official"), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_flickr8k_with_random_split_warns(tmp_path, capsys):
    make_kaggle_folder(tmp_path / "src")
    prepare_raw(data_params(tmp_path / "src", val_fraction=0.25, test_fraction=0.25), tmp_path / "raw")
    assert {s: len(v) for s, v in read_splits(tmp_path / "raw").items()} == {"train": 4, "val": 2, "test": 2}
    assert "warning: data.split random on images of the official Flickr8k split" in capsys.readouterr().err


def test_captions_naming_other_files_is_one_line_error(tmp_path):
    make_own_folder(tmp_path / "src")
    for p in (tmp_path / "src" / "Images").iterdir():
        p.rename(p.with_name("other_" + p.name))
    with pytest.raises(CaptionerError, match=r"captions.csv: none of its 20 image names \(e.g. holiday_000.png\) "
                                             r"matches one of the 20 image files in Images/ \(e.g. other_"):
        prepare_raw(data_params(tmp_path / "src"), tmp_path / "raw")


def test_all_images_unreadable_is_one_line_error(tmp_path):
    make_own_folder(tmp_path / "src", n=3)
    for p in (tmp_path / "src" / "Images").iterdir():
        p.write_text("not pixels")
    with pytest.raises(CaptionerError, match=r"no usable images: none of the matched images is a readable image"):
        prepare_raw(data_params(tmp_path / "src", val_fraction=0.0, test_fraction=0.0), tmp_path / "raw")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"split": "stratified"}, "data.split 'stratified' is unknown"),
        ({"val_fraction": 0.6, "test_fraction": 0.4}, r"val_fraction \+ data.test_fraction must be below 1"),
        ({"test_fraction": -0.1}, "data.test_fraction must be at least 0"),
    ],
)
def test_bad_split_params(tmp_path, overrides, message):
    with pytest.raises(CaptionerError, match=message):
        prepare_raw(data_params(tmp_path, **overrides), tmp_path / "raw")


def test_download_stage_fails_with_one_line_on_unmatched_folder(tmp_path):
    make_own_folder(tmp_path / "src", n=4)
    project = copy_project(tmp_path / "p")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"].update(source="folder", path=str(tmp_path / "src"))
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    result = run_stage(project, "download")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "set data.split: random" in lines[0]
    assert not (project / "data" / "raw").exists()
