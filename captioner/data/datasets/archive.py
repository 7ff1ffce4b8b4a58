"""Safe extraction of .zip and .tar(.gz/.bz2/.xz) archives: no absolute paths, no `..`, no links that escape.

Every member is checked before anything is extracted, and every member type gets a decision: files and
folders are extracted, symbolic links that stay inside and hard links to an earlier file member of the same
archive are extracted (tar), and everything else (devices, pipes, sockets, encrypted or unsupported zip
members, hard links to members the archive lacks) is refused with one line naming the member.
"""

from __future__ import annotations

import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from captioner.core.errors import CaptionerError

UNIX = 3  # zip "made by" system whose external attributes hold a Unix file mode
ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}


def _check_member_name(archive: Path, name: str) -> None:
    """Refuse a member whose path is absolute or climbs out of the target folder."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or name.startswith(("/", "\\")) or (posix.parts and ":" in posix.parts[0]):
        raise CaptionerError(f"{archive}: refusing member with an absolute path: {name}")
    if ".." in posix.parts:
        raise CaptionerError(f"{archive}: refusing member that climbs out of the target folder: {name}")


def _normal(name: str) -> str:
    """A member name without `./` parts or a trailing slash, to compare link targets with member names."""
    return PurePosixPath(name.replace("\\", "/")).as_posix()


def _check_zip_member(archive: Path, info: zipfile.ZipInfo) -> None:
    """Refuse a zip member that is not a plain file or folder, is encrypted, or uses an unsupported method."""
    _check_member_name(archive, info.filename)
    kind = stat.S_IFMT(info.external_attr >> 16) if info.create_system == UNIX else 0
    if kind == stat.S_IFLNK:
        raise CaptionerError(f"{archive}: refusing symbolic link member: {info.filename}")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise CaptionerError(f"{archive}: refusing special file member: {info.filename}")
    if info.flag_bits & 0x1:
        raise CaptionerError(f"{archive}: refusing encrypted member: {info.filename} (decrypt the archive first)")
    if info.compress_type not in ZIP_METHODS:
        raise CaptionerError(f"{archive}: member {info.filename} uses compression method {info.compress_type}, "
                             "which Python cannot read (re-pack the archive with deflate)")


def _extract_zip(archive: Path, target: Path) -> None:
    """Check every member first, then extract; a member that fails to extract is named."""
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for info in members:
            _check_zip_member(archive, info)
        for info in tqdm(members, desc=f"extracting {archive.name}", unit="file", disable=None):
            try:
                zf.extract(info, target)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
                reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
                raise CaptionerError(f"{archive}: cannot extract member {info.filename} ({reason})") from exc


def _check_tar_members(archive: Path, members: list[tarfile.TarInfo]) -> None:
    """Check names, links and types of every tar member."""
    files: set[str] = set()
    for m in members:
        _check_member_name(archive, m.name)
        if m.issym() or m.islnk():
            link = PurePosixPath(m.linkname)
            base = PurePosixPath(m.name).parent if m.issym() else PurePosixPath()
            if link.is_absolute() or ".." in (base / link).parts:
                raise CaptionerError(f"{archive}: refusing link that leaves the target folder: "
                                     f"{m.name} -> {m.linkname}")
            if m.islnk() and _normal(m.linkname) not in files:
                raise CaptionerError(f"{archive}: refusing hard link to a file the archive does not hold before it: "
                                     f"{m.name} -> {m.linkname}")
        elif not (m.isfile() or m.isdir()):
            raise CaptionerError(f"{archive}: refusing special file member: {m.name}")
        if m.isfile() or m.islnk():
            files.add(_normal(m.name))


def _extract_tar(archive: Path, target: Path) -> None:
    """Check every member (names, links, types) first, then extract with the 'data' filter."""
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        _check_tar_members(archive, members)
        for m in tqdm(members, desc=f"extracting {archive.name}", unit="file", disable=None):
            try:
                tf.extract(m, target, filter="data")
            except tarfile.FilterError as exc:
                raise CaptionerError(f"{archive}: refusing member {m.name} ({exc})") from exc
            except (KeyError, OSError, tarfile.ExtractError) as exc:
                reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
                raise CaptionerError(f"{archive}: cannot extract member {m.name} ({reason})") from exc


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
