"""Every data source (sample, folder in both layouts, archive, kaggle with a faked download) and bad input."""

import csv
import io
import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest
from conftest import captions_for, make_kaggle_folder, make_original_folder, save_image

from captioner.data.datasets import prepare_raw
from captioner.data.datasets.flickr8k import official_splits
from captioner.data.datasets.raw import read_captions_csv
from captioner.core.errors import CaptionerError


def data_params(**overrides):
    params = {"source": "sample", "path": None, "kaggle_dataset": "adityajn105/flickr8k",
              "sample_images": 30, "sample_seed": 0, "split": "official", "val_fraction": 0.1,
              "test_fraction": 0.1, "split_seed": 0}
    params.update(overrides)
    return params


def read_raw(out: Path):
    splits = json.loads((out / "splits.json").read_text())
    report = json.loads((out / "report.json").read_text())
    with (out / "captions.csv").open() as f:
        rows = list(csv.DictReader(f))
    return splits, report, rows


def test_official_splits_are_6000_1000_1000():
    splits = official_splits()
    assert [len(splits[s]) for s in ("train", "val", "test")] == [6000, 1000, 1000]
    assert not set(splits["train"]) & set(splits["test"])


def test_sample_is_deterministic_and_complete(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    prepare_raw(data_params(), a)
    prepare_raw(data_params(), b)
    prepare_raw(data_params(sample_seed=1), c)
    assert (a / "captions.csv").read_bytes() == (b / "captions.csv").read_bytes()
    assert (a / "captions.csv").read_bytes() != (c / "captions.csv").read_bytes()
    first = sorted((a / "Images").iterdir())[0]
    assert first.read_bytes() == (b / "Images" / first.name).read_bytes()
    splits, report, rows = read_raw(a)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [21, 4, 5]
    assert len(rows) == 30 * 5 and report["images"] == 30
    per_image = {}
    for row in rows:
        per_image.setdefault(row["image"], []).append(row["caption"])
    assert all(len(set(caps)) == 5 for caps in per_image.values())
    assert len(list((a / "Images").glob("*.jpg"))) == 30


def test_sample_captions_name_what_is_drawn(tmp_path):
    prepare_raw(data_params(sample_images=60), tmp_path / "raw")
    _, _, rows = read_raw(tmp_path / "raw")
    words = {w for r in rows for w in r["caption"].split()}
    assert {"red", "blue", "circle", "square", "triangle", "above", "two", "background"} <= words


def test_kaggle_layout_folder_drops_missing_images(tmp_path, capsys):
    flickr_test = official_splits()["test"][0]
    names = make_kaggle_folder(tmp_path / "src", drop=(flickr_test,))
    prepare_raw(data_params(source="folder", path=str(tmp_path / "src")), tmp_path / "raw")
    splits, report, rows = read_raw(tmp_path / "raw")
    assert set(splits["train"]) == set(names["train"])
    assert flickr_test not in splits["test"] and len(splits["test"]) == 1
    assert flickr_test in report["missing_images"]
    assert report["layout"] == "kaggle" and report["images"] == 7
    assert len(report["missing_images"]) == 8000 - 8 + 1
    assert "not in the images folder" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "raw" / "Images").iterdir()) == sorted(r for r in {x["image"] for x in rows})


def test_original_layout_folder_with_token_quirk(tmp_path):
    names = make_original_folder(tmp_path / "src")
    prepare_raw(data_params(source="folder", path=str(tmp_path / "src")), tmp_path / "raw")
    splits, report, rows = read_raw(tmp_path / "raw")
    assert report["layout"] == "original"
    assert {s: len(v) for s, v in splits.items()} == {"train": 4, "val": 2, "test": 2}
    assert "2258277193_586949ec62.jpg.1" in report["missing_images"]
    assert rows[0]["caption"] == captions_for(names["train"][0])[0]


def test_empty_captions_and_short_images_are_counted_not_fatal(tmp_path):
    names = make_kaggle_folder(tmp_path / "src")
    with (tmp_path / "src" / "captions.txt").open("a", newline="") as f:
        csv.writer(f).writerow([names["train"][0], "   "])
    text = (tmp_path / "src" / "captions.txt").read_text().splitlines()
    victim = names["val"][0]
    kept = [line for line in text if not line.startswith(victim)] + [f"{victim},only one caption"]
    (tmp_path / "src" / "captions.txt").write_text("\n".join(kept) + "\n")
    prepare_raw(data_params(source="folder", path=str(tmp_path / "src")), tmp_path / "raw")
    _, report, _ = read_raw(tmp_path / "raw")
    assert report["empty_captions_dropped"] == 1
    assert report["fewer_than_five_captions"] == [victim]
    assert report["images"] == 8


def test_undecodable_image_is_reported_not_fatal(tmp_path):
    names = make_kaggle_folder(tmp_path / "src")
    (tmp_path / "src" / "Images" / names["train"][1]).write_text("this is not a jpeg")
    prepare_raw(data_params(source="folder", path=str(tmp_path / "src")), tmp_path / "raw")
    splits, report, _ = read_raw(tmp_path / "raw")
    assert names["train"][1] in report["undecodable_images"]
    assert names["train"][1] not in splits["train"]


def make_zip(path: Path, folder: Path) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for f in sorted(folder.rglob("*")):
            zf.write(f, f.relative_to(folder.parent))


def test_archive_zip_kaggle_layout(tmp_path):
    make_kaggle_folder(tmp_path / "flickr8k")
    make_zip(tmp_path / "flickr8k.zip", tmp_path / "flickr8k")
    prepare_raw(data_params(source="archive", path=str(tmp_path / "flickr8k.zip")), tmp_path / "raw")
    _, report, _ = read_raw(tmp_path / "raw")
    assert report["images"] == 8 and report["source"] == "archive"


def test_archive_tar_gz_original_layout(tmp_path):
    make_original_folder(tmp_path / "orig")
    with tarfile.open(tmp_path / "orig.tar.gz", "w:gz") as tf:
        tf.add(tmp_path / "orig", arcname="orig")
    prepare_raw(data_params(source="archive", path=str(tmp_path / "orig.tar.gz")), tmp_path / "raw")
    _, report, _ = read_raw(tmp_path / "raw")
    assert report["layout"] == "original" and report["images"] == 8


def test_archive_original_two_zips(tmp_path):
    make_original_folder(tmp_path / "orig")
    make_zip(tmp_path / "Flickr8k_Dataset.zip", tmp_path / "orig" / "Flicker8k_Dataset")
    with zipfile.ZipFile(tmp_path / "Flickr8k_text.zip", "w") as zf:
        zf.write(tmp_path / "orig" / "Flickr8k.token.txt", "Flickr8k.token.txt")
    paths = [str(tmp_path / "Flickr8k_Dataset.zip"), str(tmp_path / "Flickr8k_text.zip")]
    prepare_raw(data_params(source="archive", path=paths), tmp_path / "raw")
    assert read_raw(tmp_path / "raw")[1]["images"] == 8


def test_archive_nested_zips_inside_one_archive(tmp_path):
    make_original_folder(tmp_path / "orig")
    (tmp_path / "bundle").mkdir()
    make_zip(tmp_path / "bundle" / "Flickr8k_Dataset.zip", tmp_path / "orig" / "Flicker8k_Dataset")
    shutil.copy(tmp_path / "orig" / "Flickr8k.token.txt", tmp_path / "bundle")
    with tarfile.open(tmp_path / "all.tar", "w") as tf:
        tf.add(tmp_path / "bundle", arcname="bundle")
    prepare_raw(data_params(source="archive", path=str(tmp_path / "all.tar")), tmp_path / "raw")
    assert read_raw(tmp_path / "raw")[1]["images"] == 8


def evil_zip(path: Path, member: str) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr(member, "gotcha")


@pytest.mark.parametrize("member", ["../evil", "a/../../evil", "/etc/evil"])
def test_zip_with_unsafe_member_is_refused(tmp_path, member):
    evil_zip(tmp_path / "evil.zip", member)
    out = tmp_path / "work" / "raw"
    with pytest.raises(CaptionerError, match=r"refusing member .*evil"):
        prepare_raw(data_params(source="archive", path=str(tmp_path / "evil.zip")), out)
    assert not (tmp_path / "evil").exists() and not out.exists()
    assert list((tmp_path / "work").iterdir()) == []


def test_tar_with_escaping_symlink_is_refused(tmp_path):
    with tarfile.open(tmp_path / "evil.tar", "w") as tf:
        link = tarfile.TarInfo("data/link")
        link.type, link.linkname = tarfile.SYMTYPE, "../../outside"
        tf.addfile(link)
    with pytest.raises(CaptionerError, match="refusing link .*data/link"):
        prepare_raw(data_params(source="archive", path=str(tmp_path / "evil.tar")), tmp_path / "raw")


def test_tar_with_dotdot_member_is_refused(tmp_path):
    with tarfile.open(tmp_path / "evil.tar.gz", "w:gz") as tf:
        info = tarfile.TarInfo("../evil")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(CaptionerError, match=r"refusing member .*\.\./evil"):
        prepare_raw(data_params(source="archive", path=str(tmp_path / "evil.tar.gz")), tmp_path / "raw")


def test_kaggle_source_with_faked_download(tmp_path, monkeypatch):
    import kagglehub

    make_kaggle_folder(tmp_path / "kaggle_cache" / "versions" / "1")
    asked = []

    def fake_download(handle):
        asked.append(handle)
        return str(tmp_path / "kaggle_cache" / "versions" / "1")

    monkeypatch.setattr(kagglehub, "dataset_download", fake_download)
    prepare_raw(data_params(source="kaggle"), tmp_path / "raw")
    assert asked == ["adityajn105/flickr8k"]
    assert read_raw(tmp_path / "raw")[1]["images"] == 8


def test_kaggle_without_network_or_credentials_says_how(tmp_path, monkeypatch):
    import kagglehub

    def offline(handle):
        raise ConnectionError("Failed to resolve 'www.kaggle.com'")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    with pytest.raises(CaptionerError, match="KAGGLE_USERNAME.*data.source: archive"):
        prepare_raw(data_params(source="kaggle"), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"source": "s3"}, "data.source 's3' is unknown"),
        ({"source": "folder", "path": "/no/such/folder"}, "folder not found: /no/such/folder"),
        ({"source": "folder"}, "data.path: required"),
        ({"source": "archive", "path": "/no/such.zip"}, "archive not found"),
    ],
)
def test_bad_source_settings(tmp_path, overrides, message):
    with pytest.raises(CaptionerError, match=message):
        prepare_raw(data_params(**overrides), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ("image,text\na.jpg,hello\n", "header must have columns 'image' and 'caption'"),
        ("image,caption\n", "no caption rows"),
        ("", "empty captions file"),
    ],
)
def test_malformed_captions_csv(tmp_path, text, message):
    path = tmp_path / "captions.txt"
    path.write_text(text)
    with pytest.raises(CaptionerError, match=message):
        read_captions_csv(path)


def test_malformed_token_file_names_the_line(tmp_path):
    make_original_folder(tmp_path / "src")
    token = tmp_path / "src" / "Flickr8k.token.txt"
    token.write_text(token.read_text() + "garbage line without a tab\n")
    with pytest.raises(CaptionerError, match=r"Flickr8k.token.txt:46: expected"):
        prepare_raw(data_params(source="folder", path=str(tmp_path / "src")), tmp_path / "raw")


def test_png_images_in_folder_are_accepted(tmp_path):
    names = make_kaggle_folder(tmp_path / "src")
    save_image(tmp_path / "src" / "Images" / "extra.png", 99)
    prepare_raw(data_params(source="folder", path=str(tmp_path / "src")), tmp_path / "raw")
    assert read_raw(tmp_path / "raw")[1]["images"] == sum(map(len, names.values()))


def test_captions_file_that_is_not_utf8_names_the_line(tmp_path):
    make_kaggle_folder(tmp_path / "src")
    path = tmp_path / "src" / "captions.txt"
    lines = path.read_bytes().split(b"\n")
    lines[6] = lines[6].replace(b"grass", b"caf\xe9 grass")
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(CaptionerError, match=r"captions.txt:7: not UTF-8 text \(byte 0xe9 at column \d+\)") as err:
        prepare_raw(data_params(source="folder", path=str(tmp_path / "src")), tmp_path / "raw")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "raw").exists() and list(tmp_path.iterdir()) == [tmp_path / "src"]


def test_token_file_that_is_not_utf8_names_the_line(tmp_path):
    make_original_folder(tmp_path / "src")
    token = tmp_path / "src" / "Flickr8k.token.txt"
    token.write_bytes(token.read_bytes() + b"x.jpg#0\t\xff\xfe bad\n")
    with pytest.raises(CaptionerError, match=r"Flickr8k.token.txt:46: not UTF-8 text \(byte 0xff at column 9\)"):
        prepare_raw(data_params(source="folder", path=str(tmp_path / "src")), tmp_path / "raw")


@pytest.mark.parametrize("layout", ["kaggle", "original"])
def test_byte_order_mark_is_accepted(tmp_path, layout):
    names = (make_kaggle_folder if layout == "kaggle" else make_original_folder)(tmp_path / "src")
    path = tmp_path / "src" / ("captions.txt" if layout == "kaggle" else "Flickr8k.token.txt")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    prepare_raw(data_params(source="folder", path=str(tmp_path / "src")), tmp_path / "raw")
    _, report, rows = read_raw(tmp_path / "raw")
    assert report["images"] == sum(map(len, names.values())) and len(rows) == 5 * report["images"]
    assert rows[0]["image"] == sorted(n for s in names.values() for n in s)[0]


def test_duplicate_caption_lines_are_dropped_and_counted(tmp_path, capsys):
    names = make_kaggle_folder(tmp_path / "src")
    path = tmp_path / "src" / "captions.txt"
    lines = path.read_text().splitlines()
    first = names["train"][0]
    path.write_text("\n".join(lines + [lines[1], lines[1], lines[2]]) + "\n")
    prepare_raw(data_params(source="folder", path=str(tmp_path / "src")), tmp_path / "raw")
    _, report, rows = read_raw(tmp_path / "raw")
    assert report["duplicate_captions_dropped"] == 3
    assert report["images_with_duplicate_captions"] == [first]
    assert [r["caption"] for r in rows if r["image"] == first] == captions_for(first)
    assert "warning: 3 duplicate caption lines dropped" in capsys.readouterr().err


def test_unreadable_csv_row_is_a_line_error(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_text("image,caption\na.jpg,fine\nb.jpg," + "word " * 40000 + "\n")
    with pytest.raises(CaptionerError, match=r"captions.txt:3: malformed CSV \(field larger than field limit"):
        read_captions_csv(path)


def tar_with(path: Path, *members: tarfile.TarInfo, data: bytes = b"abc") -> None:
    """A tar holding `members` (regular ones get `data` as content)."""
    with tarfile.open(path, "w") as tf:
        for info in members:
            if info.isreg():
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)


def tar_info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


@pytest.mark.parametrize(
    "members, message",
    [
        ([tar_info("data/link", tarfile.LNKTYPE, "data/missing.jpg")],
         r"refusing hard link to a file the archive does not hold before it: data/link -> data/missing.jpg"),
        ([tar_info("data/link", tarfile.LNKTYPE, "data/a.jpg"), tar_info("data/a.jpg")],
         r"refusing hard link .*: data/link -> data/a.jpg"),
        ([tar_info("data", tarfile.DIRTYPE), tar_info("data/x", tarfile.LNKTYPE, "data")], r"refusing hard link .*: data/x -> data"),
        ([tar_info("data/pipe", tarfile.FIFOTYPE)], r"refusing special file member: data/pipe"),
        ([tar_info("data/tty", tarfile.CHRTYPE)], r"refusing special file member: data/tty"),
        ([tar_info("data/disk", tarfile.BLKTYPE)], r"refusing special file member: data/disk"),
        ([tar_info("data/odd", b"Z")], r"refusing special file member: data/odd"),
        ([tar_info("abs", tarfile.SYMTYPE, "/etc/passwd")], r"refusing link that leaves the target folder: abs"),
        ([tar_info("a"), tar_info("a/b")], r"cannot extract member a/b \(Not a directory\)"),
    ],
)
def test_every_tar_member_type_is_handled_in_one_line(tmp_path, members, message):
    tar_with(tmp_path / "odd.tar", *members)
    with pytest.raises(CaptionerError, match=message) as err:
        prepare_raw(data_params(source="archive", path=str(tmp_path / "odd.tar")), tmp_path / "work" / "raw")
    assert "\n" not in str(err.value) and str(tmp_path / "odd.tar") in str(err.value)
    assert list((tmp_path / "work").iterdir()) == []


def test_tar_hard_link_to_an_earlier_file_is_extracted(tmp_path):
    from captioner.data.datasets.archive import extract_archive

    tar_with(tmp_path / "ok.tar", tar_info("./data/a.jpg"), tar_info("data/b.jpg", tarfile.LNKTYPE, "data/a.jpg"),
             tar_info("data/c.jpg", tarfile.SYMTYPE, "a.jpg"))
    extract_archive(tmp_path / "ok.tar", tmp_path / "out")
    assert [(tmp_path / "out/data" / n).read_bytes() for n in ("a.jpg", "b.jpg", "c.jpg")] == [b"abc"] * 3


def patch_zip_field(path: Path, offsets: dict[bytes, int], value: int) -> None:
    """Overwrite a 2-byte field of the (only) local header and central directory entry of a zip."""
    data = bytearray(path.read_bytes())
    for signature, offset in offsets.items():
        at = data.find(signature) + offset
        data[at:at + 2] = value.to_bytes(2, "little")
    path.write_bytes(bytes(data))


def zip_member(path: Path, name: str, mode: int = 0o100644, flag_bits: int = 0) -> None:
    """A zip with one member carrying the given Unix mode and flag bits."""
    info = zipfile.ZipInfo(name)
    info.create_system, info.external_attr = 3, mode << 16
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(info, b"content")
    if flag_bits:
        patch_zip_field(path, {b"PK\x03\x04": 6, b"PK\x01\x02": 8}, flag_bits)


@pytest.mark.parametrize(
    "mode, flag_bits, message",
    [
        (0o120777, 0, r"refusing symbolic link member: data/m"),
        (0o010644, 0, r"refusing special file member: data/m"),
        (0o020644, 0, r"refusing special file member: data/m"),
        (0o140755, 0, r"refusing special file member: data/m"),
        (0o100644, 1, r"refusing encrypted member: data/m"),
    ],
)
def test_every_zip_member_type_is_handled_in_one_line(tmp_path, mode, flag_bits, message):
    zip_member(tmp_path / "odd.zip", "data/m", mode, flag_bits)
    with pytest.raises(CaptionerError, match=message):
        prepare_raw(data_params(source="archive", path=str(tmp_path / "odd.zip")), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_zip_member_with_unknown_compression_or_bad_crc_is_named(tmp_path):
    zip_member(tmp_path / "a.zip", "data/m")
    shutil.copy(tmp_path / "a.zip", tmp_path / "b.zip")
    patch_zip_field(tmp_path / "b.zip", {b"PK\x03\x04": 8, b"PK\x01\x02": 10}, 99)
    with pytest.raises(CaptionerError, match=r"b.zip: member data/m uses compression method 99"):
        prepare_raw(data_params(source="archive", path=str(tmp_path / "b.zip")), tmp_path / "raw")
    data = bytearray((tmp_path / "a.zip").read_bytes())
    at = data.find(b"content")
    data[at:at + 7] = b"CONTENT"
    (tmp_path / "c.zip").write_bytes(bytes(data))
    with pytest.raises(CaptionerError, match=r"c.zip: cannot extract member data/m \(Bad CRC-32"):
        prepare_raw(data_params(source="archive", path=str(tmp_path / "c.zip")), tmp_path / "raw")
