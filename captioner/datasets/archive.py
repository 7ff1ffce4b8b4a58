"""Safe extraction of .zip and .tar(.gz/.bz2/.xz) archives: no absolute paths, no `..`, no links that escape."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from captioner.errors import CaptionerError


def _check_member_name(archive: Path, name: str) -> None:
    """Refuse a member whose path is absolute or climbs out of the target folder."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or name.startswith(("/", "\\")) or (posix.parts and ":" in posix.parts[0]):
        raise CaptionerError(f"{archive}: refusing member with an absolute path: {name}")
    if ".." in posix.parts:
        raise CaptionerError(f"{archive}: refusing member that climbs out of the target folder: {name}")


def _extract_zip(archive: Path, target: Path) -> None:
    """Check every member name first, then extract."""
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for info in members:
            _check_member_name(archive, info.filename)
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise CaptionerError(f"{archive}: refusing symbolic link member: {info.filename}")
        for info in tqdm(members, desc=f"extracting {archive.name}", unit="file", disable=None):
            zf.extract(info, target)


def _extract_tar(archive: Path, target: Path) -> None:
    """Check every member (names, links, special files) first, then extract with the 'data' filter."""
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for m in members:
            _check_member_name(archive, m.name)
            if m.issym() or m.islnk():
                link = PurePosixPath(m.linkname)
                base = PurePosixPath(m.name).parent if m.issym() else PurePosixPath()
                if link.is_absolute() or ".." in (base / link).parts:
                    raise CaptionerError(f"{archive}: refusing link that leaves the target folder: "
                                         f"{m.name} -> {m.linkname}")
            elif not (m.isfile() or m.isdir()):
                raise CaptionerError(f"{archive}: refusing special file member: {m.name}")
        for m in tqdm(members, desc=f"extracting {archive.name}", unit="file", disable=None):
            tf.extract(m, target, filter="data")


def extract_archive(archive: Path, target: Path) -> None:
    """Extract `archive` into `target`, refusing unsafe members with a one-line error naming the member.

    Tar is tried first: a tar that holds a zip can pass zipfile's end-of-archive sniffing.
    """
    if not archive.exists():
        raise CaptionerError(f"data.path: archive not found: {archive}")
    if archive.is_dir():
        raise CaptionerError(f"data.path: {archive} is a folder (use data.source: folder)")
    try:
        if tarfile.is_tarfile(archive):
            _extract_tar(archive, target)
        elif zipfile.is_zipfile(archive):
            _extract_zip(archive, target)
        else:
            raise CaptionerError(f"{archive}: not a .zip or .tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise CaptionerError(f"{archive}: damaged archive ({exc})") from exc


def extract_nested(folder: Path) -> None:
    """Extract archives found inside an extracted archive (the original Flickr8k ships two zips)."""
    for inner in sorted(folder.rglob("*.zip")) + sorted(folder.rglob("*.tar*")):
        extract_archive(inner, inner.parent)
