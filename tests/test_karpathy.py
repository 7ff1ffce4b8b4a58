"""data.source karpathy: Flickr8k-style and COCO-style split files (filepath, restval, clashing names), bad input."""

import csv
import json
from pathlib import Path, PurePosixPath

import pytest
from conftest import save_image

from captioner.data.datasets import prepare_raw
from captioner.data.datasets.karpathy import flat_names
from captioner.core.errors import CaptionerError


def data_params(path, **overrides):
    params = {"source": "karpathy", "path": path, "kaggle_dataset": "adityajn105/flickr8k", "sample_images": 30,
              "sample_seed": 0, "split": "official", "val_fraction": 0.1, "test_fraction": 0.1, "split_seed": 0}
    params.update(overrides)
    return params


def entry(filename, split, filepath=None, n=5):
    item = {"filename": filename, "split": split, "imgid": 0,
            "sentences": [{"raw": f"A photo of {filename} number {k} .", "tokens": []} for k in range(n)]}
    if filepath is not None:
        item["filepath"] = filepath
    return item


def write_split_file(path: Path, items) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": items, "dataset": "test"}))


def make_flickr8k_style(root: Path) -> None:
    """dataset_flickr8k.json (no filepath) beside Flicker8k_Dataset/ holding the images."""
    splits = ["train"] * 6 + ["val"] * 2 + ["test"] * 2
    items = [entry(f"{1000 + i}_abc.jpg", s) for i, s in enumerate(splits)]
    (root / "Flicker8k_Dataset").mkdir(parents=True)
    for i, item in enumerate(items):
        save_image(root / "Flicker8k_Dataset" / item["filename"], i)
    write_split_file(root / "dataset_flickr8k.json", items)


def make_coco_style(root: Path) -> list[dict]:
    """COCO layout: filepath val2014/train2014, restval, one file name in both folders, one image missing."""
    items = [
        entry("COCO_train2014_01.jpg", "train", "train2014"),
        entry("COCO_train2014_02.jpg", "train", "train2014"),
        entry("COCO_val2014_03.jpg", "restval", "val2014"),
        entry("COCO_val2014_04.jpg", "restval", "val2014"),
        entry("COCO_val2014_05.jpg", "val", "val2014"),
        entry("COCO_val2014_06.jpg", "test", "val2014"),
        entry("same.jpg", "train", "train2014"),
        entry("same.jpg", "test", "val2014"),
        entry("COCO_val2014_07.jpg", "val", "val2014"),
    ]
    for i, item in enumerate(items[:-1]):
        (root / "images" / item["filepath"]).mkdir(parents=True, exist_ok=True)
        save_image(root / "images" / item["filepath"] / item["filename"], 10 + i)
    write_split_file(root / "annotations" / "dataset_coco.json", items)
    return items


def read_raw(out: Path):
    splits = json.loads((out / "splits.json").read_text())
    report = json.loads((out / "report.json").read_text())
    with (out / "captions.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return splits, report, rows


def test_flickr8k_style_folder_finds_images_one_folder_down(tmp_path):
    make_flickr8k_style(tmp_path / "src")
    prepare_raw(data_params(str(tmp_path / "src")), tmp_path / "raw")
    splits, report, rows = read_raw(tmp_path / "raw")
    assert {s: len(v) for s, v in splits.items()} == {"train": 6, "val": 2, "test": 2}
    assert splits["val"] == ["1006_abc.jpg", "1007_abc.jpg"]
    assert report["layout"] == "karpathy" and report["images"] == 10 and report["captions"] == 50
    assert report["image_root"] == str(tmp_path / "src" / "Flicker8k_Dataset") and report["renamed"] == {}
    assert rows[0] == {"image": "1000_abc.jpg", "caption": "A photo of 1000_abc.jpg number 0 ."}
    copied = tmp_path / "raw" / "Images" / "1003_abc.jpg"
    assert copied.read_bytes() == (tmp_path / "src" / "Flicker8k_Dataset" / "1003_abc.jpg").read_bytes()


def test_coco_style_with_filepath_restval_and_clashing_names(tmp_path, capsys):
    make_coco_style(tmp_path)
    paths = [str(tmp_path / "annotations" / "dataset_coco.json"), str(tmp_path / "images")]
    prepare_raw(data_params(paths), tmp_path / "raw")
    splits, report, rows = read_raw(tmp_path / "raw")
    assert splits == {
        "train": ["COCO_train2014_01.jpg", "COCO_train2014_02.jpg", "COCO_val2014_03.jpg", "COCO_val2014_04.jpg",
                  "train2014__same.jpg"],
        "val": ["COCO_val2014_05.jpg"],
        "test": ["COCO_val2014_06.jpg", "val2014__same.jpg"],
    }
    assert report["restval_in_train"] == 2
    assert report["renamed"] == {"train2014__same.jpg": "train2014/same.jpg", "val2014__same.jpg": "val2014/same.jpg"}
    assert report["missing_images"] == ["COCO_val2014_07.jpg"]
    assert "not in the images folder" in capsys.readouterr().err
    images = tmp_path / "raw" / "Images"
    assert sorted(p.name for p in images.iterdir()) == sorted(n for names in splits.values() for n in names)
    assert (images / "val2014__same.jpg").read_bytes() == (tmp_path / "images/val2014/same.jpg").read_bytes()
    assert (images / "train2014__same.jpg").read_bytes() != (images / "val2014__same.jpg").read_bytes()
    assert {r["image"] for r in rows} == set(p.name for p in images.iterdir())


def test_folder_path_with_the_split_file_and_filepath_folders(tmp_path):
    make_coco_style(tmp_path)
    (tmp_path / "annotations" / "dataset_coco.json").rename(tmp_path / "images" / "dataset_coco.json")
    prepare_raw(data_params(str(tmp_path / "images")), tmp_path / "raw")
    assert read_raw(tmp_path / "raw")[1]["images"] == 8


def test_random_split_overrides_the_file_split(tmp_path, capsys):
    make_flickr8k_style(tmp_path / "src")
    prepare_raw(data_params(str(tmp_path / "src"), split="random", val_fraction=0.2, test_fraction=0.3),
                tmp_path / "raw")
    splits, report, _ = read_raw(tmp_path / "raw")
    assert {s: len(v) for s, v in splits.items()} == {"train": 5, "val": 2, "test": 3}
    assert report["split"] == "random"
    assert "will not compare with published ones" in capsys.readouterr().err


def test_flat_names_are_unique_and_stable():
    rels = [PurePosixPath(p) for p in ("a/x.jpg", "b/x.jpg", "c/y.jpg", "a__x.jpg")]
    assert flat_names(rels) == ["a__x.jpg", "b__x.jpg", "y.jpg", "a__x-2.jpg"]


@pytest.mark.parametrize(
    "items, message",
    [
        ([{"filename": "a.jpg", "split": "dev", "sentences": []}], r"images\[0\].split 'dev' is not one of"),
        ([{"filename": "a.jpg", "split": "train"}], r"images\[0\] has no 'sentences'"),
        ([{"filename": "a.jpg", "split": "train", "sentences": [{"tokens": []}]}], r"images\[0\].sentences\[0\]"),
        ([{"filename": "../a.jpg", "split": "train", "sentences": []}], "must stay under the image root"),
        ([entry("a.jpg", "train"), entry("a.jpg", "val")], r"images\[1\] repeats images\[0\]"),
        ([], "'images' list is empty"),
    ],
)
def test_malformed_split_file_names_the_entry(tmp_path, items, message):
    write_split_file(tmp_path / "src" / "dataset_x.json", items)
    with pytest.raises(CaptionerError, match=message):
        prepare_raw(data_params(str(tmp_path / "src")), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_split_file_that_is_not_json_names_the_line(tmp_path):
    (tmp_path / "dataset_x.json").write_text('{"images": [\n  oops\n]}')
    with pytest.raises(CaptionerError, match=r"dataset_x.json:2: malformed JSON"):
        prepare_raw(data_params(str(tmp_path / "dataset_x.json")), tmp_path / "raw")


def test_no_image_found_is_one_error_saying_where_it_looked(tmp_path):
    write_split_file(tmp_path / "src" / "dataset_coco.json", [entry("x.jpg", "train", "val2014")])
    (tmp_path / "src" / "val2014").mkdir()
    with pytest.raises(CaptionerError, match=r"none of its 1 images was found under .*src.*val2014/x.jpg"):
        prepare_raw(data_params(str(tmp_path / "src")), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize(
    "layout, message",
    [
        ({"dataset_a.json": "{}", "dataset_b.json": "{}"}, r"several split files \(dataset_a.json, dataset_b.json\)"),
        ({"readme.txt": "hi"}, r"no Karpathy split file \(dataset_\*.json\)"),
    ],
)
def test_folder_without_exactly_one_split_file(tmp_path, layout, message):
    for name, text in layout.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(CaptionerError, match=message):
        prepare_raw(data_params(str(tmp_path)), tmp_path / "raw")
