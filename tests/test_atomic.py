"""Atomic writes: recognisable temporaries that the next run removes, the user's umask, a full disk in one line."""

import os

import pytest

from captioner.core.atomic import atomic_dir, atomic_path, remove_stale, scratch_dir, stale_temps, write_json
from captioner.core.errors import CaptionerError


@pytest.fixture
def umask():
    """Set the process umask for one test, then restore it."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775), (0o077, 0o600, 0o700)])
def test_outputs_get_the_users_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    write_json(tmp_path / "m.json", {"a": 1})
    with atomic_dir(tmp_path / "bundle") as tmp:
        write_json(tmp / "config.json", {})
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "bundle").stat().st_mode & 0o777 == dir_mode
    assert (tmp_path / "bundle/config.json").stat().st_mode & 0o777 == file_mode


def test_failed_write_leaves_nothing_and_keeps_the_old_output(tmp_path):
    write_json(tmp_path / "out.json", {"v": 1})
    with atomic_dir(tmp_path / "dir") as tmp:
        (tmp / "f").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out.json") as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "dir") as tmp:
            (tmp / "f").write_text("new")
            raise RuntimeError("boom")
    assert (tmp_path / "out.json").read_text() == '{\n  "v": 1\n}\n'
    assert (tmp_path / "dir/f").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "out.json"]


def test_stale_temporaries_are_found_and_removed(tmp_path):
    out = tmp_path / "data" / "features"
    out.mkdir(parents=True)
    kept = [tmp_path / "data" / "features.json", tmp_path / "data" / ".other.tmp-1", out / "features.h5"]
    for path in kept:
        path.write_text("keep")
    (tmp_path / "data" / ".features.tmp-1a2b").mkdir()
    (tmp_path / "data" / ".features.tmp-1a2b" / "features.h5").write_bytes(b"x" * 1000)
    (tmp_path / "data" / ".features.tmp-old-99").mkdir()
    (out / ".meta.json.tmp-77").write_text("half")
    assert len(stale_temps(out)) == 3
    assert remove_stale(out) == 3
    assert stale_temps(out) == [] and all(p.exists() for p in kept)


def test_scratch_folder_is_a_recognisable_temporary(tmp_path):
    with scratch_dir(tmp_path / "raw") as scratch:
        assert scratch in stale_temps(tmp_path / "raw")
    assert not scratch.exists()


def test_disk_full_is_one_line_naming_the_output(tmp_path):
    with pytest.raises(CaptionerError) as err:
        with atomic_path(tmp_path / "out.json") as tmp:
            tmp.write_text("x")
            raise OSError(28, "No space left on device")
    assert str(err.value) == f"{tmp_path / 'out.json'}: cannot write: No space left on device (free some space and re-run)"
    assert list(tmp_path.iterdir()) == []
