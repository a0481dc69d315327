"""Dataset archives: resumable download, integrity checks and safe extraction (ETH3D, MegaDepth, InLoc).

A download writes `DEST.part` and renames it to `DEST` only once it is complete and verified, so a
killed or dropped transfer resumes from where it stopped (HTTP Range), in the same call (a few retries)
or in the next run. Verification: the size the server announced (Content-Length / Content-Range), then
an archive test by file name: every zip member's CRC, or a full read of a tar (gz/bz2/xz) archive. A
corrupt archive is deleted with a clear error; nothing half-written keeps the final name.

Extraction refuses the whole archive when a member would land outside the target (absolute paths, `..`)
or is a link or a special file; it writes into a temporary folder beside the target, renamed at the end.

    vop download URL DEST [--config-key datasets.eth3d.root]
    vop verify ARCHIVE
    vop extract ARCHIVE TARGET [--member-prefix ETH3D_undistorted/courtyard/]
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import shutil
import stat
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from vop.io import atomic_path, replace_dir
from vop.progress import Progress

logger = logging.getLogger(__name__)

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
CHUNK = 1 << 20
# Failures of the transfer itself (server gone, connection cut): worth a resumed retry.
_TRANSFER_ERRORS = (ConnectionError, TimeoutError, http.client.HTTPException)


class DownloadError(RuntimeError):
    """A download that cannot complete, with what to do instead in the message."""


class ArchiveError(ValueError):
    """An archive that is corrupt, truncated or unsafe to extract."""


def archive_kind(path: str | Path) -> str | None:
    """'zip', 'tar' or None (not an archive we test), from the file name."""
    name = Path(path).name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    return None


# ---------------------------------------------------------------------------------------------
# Download


def _by_hand(url: str, dest: Path, config_key: str | None) -> str:
    skip = f" (or set the config key `{config_key}` to an extracted copy to skip the download)" if config_key else ""
    return f"Fetch {url} by hand and put it at {dest}{skip}"


def _total_size(response, offset: int) -> int | None:
    """The full size of the remote file, from Content-Range (206) or Content-Length (200)."""
    content_range = response.headers.get("Content-Range")
    if content_range and "/" in content_range:
        total = content_range.rsplit("/", 1)[1].strip()
        if total.isdigit():
            return int(total)
    length = response.headers.get("Content-Length")
    if length is not None and length.strip().isdigit():
        return int(length) + (offset if response.status == 206 else 0)
    return None


def download(url: str, dest: str | Path, config_key: str | None = None, timeout: float = 60.0,
             retries: int = 5, progress_every: float = 30.0, verify: bool = True) -> Path:
    """Download `url` to `dest`, resuming `dest.part` with HTTP Range; verify; rename into place.

    Progress (vop.progress): a line every 5% or `progress_every` seconds in the log, a bar on a terminal.
    A connection that drops mid-way is resumed up to `retries` times in a row without progress.
    `config_key` (e.g. "datasets.eth3d.root") is named in the error when the server cannot be reached.
    With `verify`, archives (by name: .zip, .tar*) are tested after the size check; a corrupt one is
    deleted. Returns `dest`.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    failures = 0
    while True:
        offset = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
        received = 0
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                if offset and response.status != 206:  # the server ignored Range: start again
                    logger.info("%s: the server does not resume (HTTP %d); downloading from the start",
                                url, response.status)
                    offset = 0
                total = _total_size(response, offset)
                if offset:
                    logger.info("%s: resuming at %.1f MB", url, offset / 1e6)
                with open(part, "ab" if offset else "wb") as f, \
                        Progress(total, f"download {dest.name}", unit="B", initial=offset, logger=logger,
                                 every_seconds=progress_every) as bar:
                    while chunk := response.read(CHUNK):
                        f.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
            size = part.stat().st_size
            if total is not None and size < total:
                raise http.client.IncompleteRead(b"", total - size)
        except urllib.error.HTTPError as e:
            if e.code == 416 and offset:  # nothing left to send: the part may be complete already
                total = _total_size(e, 0)
                if total == offset:
                    size = offset
                    break
                part.unlink(missing_ok=True)
                failures += 1
                if failures > retries:
                    raise DownloadError(f"cannot resume {url} at {part}; delete it and run again") from e
                continue
            raise DownloadError(
                f"cannot download {url}: the server answered HTTP {e.code} {e.reason}. "
                + _by_hand(url, dest, config_key)
            ) from e
        except urllib.error.URLError as e:  # no connection at all (HTTPError was handled above)
            kept = f" The partial download {part} is kept and resumes next time." if part.exists() else ""
            raise DownloadError(
                f"cannot download {url}: no network or server unreachable ({e.reason}). "
                + _by_hand(url, dest, config_key) + "." + kept
            ) from e
        except _TRANSFER_ERRORS as e:  # connected, then the transfer broke: resume
            failures = 0 if received else failures + 1
            if failures > retries:
                raise DownloadError(f"download of {url} keeps failing ({e!r}); run again to resume from {part}. "
                                    + _by_hand(url, dest, config_key)) from e
            logger.warning("%s: connection lost after %.1f MB (%r); resuming", url, (offset + received) / 1e6, e)
            time.sleep(min(0.1 * 2 ** failures, 5.0))
            continue
        break
    if total is not None and size != total:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{url}: received {size} bytes but the server announced {total}; the partial file "
                            f"was deleted, run again. " + _by_hand(url, dest, config_key))
    if verify and archive_kind(dest):
        try:
            verify_archive(part, name=dest.name)
        except ArchiveError as e:
            part.unlink(missing_ok=True)
            raise ArchiveError(f"{url}: downloaded file is corrupt ({e}); it was deleted, run again") from e
    os.replace(part, dest)
    logger.info("%s -> %s (%.1f MB)", url, dest, size / 1e6)
    return dest


# ---------------------------------------------------------------------------------------------
# Integrity


def verify_archive(path: str | Path, name: str | None = None) -> None:
    """Raise ArchiveError unless the zip's CRCs all match / the tar reads to its end.

    `name` decides the kind when `path` is a temporary file (e.g. `x.zip.part`).
    """
    path = Path(path)
    kind = archive_kind(name or path)
    start = time.perf_counter()
    if kind == "zip":
        try:
            zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise ArchiveError(f"{path}: not a valid zip archive ({e})") from e
        with zf:
            members = [info for info in zf.infolist() if not info.is_dir()]
            with Progress(sum(i.file_size for i in members), f"verify {name or path.name}", unit="B",
                          logger=logger) as bar:
                for info in members:  # reading a member to its end checks its CRC, as ZipFile.testzip does
                    try:
                        with zf.open(info) as f:
                            while data := f.read(CHUNK):
                                bar.update(len(data))
                    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as e:
                        raise ArchiveError(f"{path}: member {info.filename!r} fails its CRC check "
                                           f"(corrupt archive: {e})") from e
    elif kind == "tar":
        try:
            with open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r:*") as tf, \
                    Progress(path.stat().st_size, f"verify {name or path.name}", unit="B", logger=logger) as bar:
                for member in tf:
                    if member.isfile():
                        f = tf.extractfile(member)
                        while f.read(CHUNK):
                            bar.update(raw.tell() - bar.done)  # compressed bytes read so far
        except (tarfile.TarError, OSError, EOFError, ValueError) as e:
            detail = " ".join(str(e).split())  # tarfile's multi-line "tried every method" message, on one line
            raise ArchiveError(f"{path}: truncated or corrupt tar archive ({type(e).__name__}: {detail})") from e
    else:
        raise ArchiveError(f"{path}: not an archive this pipeline tests (.zip or .tar[.gz|.bz2|.xz])")
    logger.info("%s: archive test passed in %.1fs", path, time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------
# Safe extraction


def _safe_name(name: str, archive: Path) -> str:
    """The member's relative POSIX path; refuses absolute paths, drive letters and `..`."""
    clean = name.replace("\\", "/")
    path = PurePosixPath(clean)
    if path.is_absolute() or ".." in path.parts or (len(clean) > 1 and clean[1] == ":"):
        raise ArchiveError(f"{archive}: member {name!r} would be written outside the target; refusing the archive")
    return "/".join(p for p in path.parts if p not in ("", "."))


def _check_zip_member(info: zipfile.ZipInfo, archive: Path) -> str:
    name = _safe_name(info.filename, archive)
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise ArchiveError(f"{archive}: member {info.filename!r} is a symbolic link; refusing the archive")
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: no Unix mode recorded
        raise ArchiveError(f"{archive}: member {info.filename!r} is a special file; refusing the archive")
    return name


def _check_tar_member(member: tarfile.TarInfo, archive: Path) -> str:
    name = _safe_name(member.name, archive)
    if member.issym() or member.islnk():
        raise ArchiveError(f"{archive}: member {member.name!r} is a link (to {member.linkname!r}); "
                           "refusing the archive")
    if not (member.isfile() or member.isdir()):
        raise ArchiveError(f"{archive}: member {member.name!r} is a special file; refusing the archive")
    return name


def _write_member(source, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as out:
        shutil.copyfileobj(source, out, CHUNK)


def install_file(path: str | Path, target: str | Path) -> Path:
    """Copy a downloaded file that is not an archive (a .pkl, an image list) into the folder `target`,
    under its own name, atomically. Returns the installed file."""
    path, target = Path(path), Path(target)
    dest = target / path.name
    with atomic_path(dest) as tmp:
        shutil.copyfile(path, tmp)
    logger.info("%s -> %s", path, dest)
    return dest


def extract(archive: str | Path, target: str | Path, member_prefix: str = "", overwrite: bool = False,
            flatten: bool = False) -> Path:
    """Extract a zip or tar archive into `target`, refusing members that escape it, links and devices.

    With `member_prefix` (e.g. "ETH3D_undistorted/courtyard/") only members under it are extracted, to
    `target / member_prefix`, so one scene of a large archive is unpacked by its own job. Files are
    written by this function (never by the archive library), so permissions and links in the archive
    have no effect. With `flatten`, every file goes straight into `target` under its basename (as
    revisitop's download script does with the Oxford and Paris archives), added to what `target` holds
    already, so several archives can fill one folder; two members with one basename are refused.
    Returns the extracted folder.
    """
    archive, target = Path(archive), Path(target)
    kind = archive_kind(archive)
    if kind is None:
        raise ArchiveError(f"{archive}: unknown archive type (expected .zip or .tar[.gz|.bz2|.xz])")
    prefix = member_prefix.strip("/") + "/" if member_prefix.strip("/") else ""
    final = target / prefix if prefix else target
    if flatten:
        return _extract_flat(archive, kind, final, prefix)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists: delete it or pass overwrite=True (--overwrite)")
    created = [d for d in (final.parent, *final.parent.parents) if not d.exists()]  # removed again on failure
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    count = 0
    done = False
    try:
        if kind == "zip":
            with _open_zip(archive) as zf:
                members = [(info, _check_zip_member(info, archive)) for info in zf.infolist()]
                # every member was checked before anything is written
                members = [(i, n) for i, n in members if (n + "/").startswith(prefix) and not i.is_dir()]
                with Progress(sum(i.file_size for i, _ in members), f"extract {archive.name}", unit="B",
                              logger=logger) as bar:
                    for info, name in members:
                        with zf.open(info) as src:
                            _write_member(src, tmp / name)
                        count += 1
                        bar.update(info.file_size)
        else:
            try:
                with open(archive, "rb") as raw, tarfile.open(fileobj=raw, mode="r:*") as tf, \
                        Progress(archive.stat().st_size, f"extract {archive.name}", unit="B", logger=logger) as bar:
                    for member in tf:  # one pass (gzip cannot seek back cheaply); checked before written
                        name = _check_tar_member(member, archive)
                        if (name + "/").startswith(prefix) and not member.isdir():
                            _write_member(tf.extractfile(member), tmp / name)
                            count += 1
                        bar.update(raw.tell() - bar.done)  # the archive's bytes read so far
            except (tarfile.TarError, EOFError, zipfile.BadZipFile) as e:
                detail = " ".join(str(e).split())
                raise ArchiveError(f"{archive}: truncated or corrupt tar archive ({detail}); download it again") from e
        if prefix and count == 0:
            raise ArchiveError(f"{archive} holds nothing under {prefix!r}: check the scene name in the config "
                               "against the archive's folders")
        (tmp / prefix).mkdir(parents=True, exist_ok=True)
        replace_dir(tmp / prefix if prefix else tmp, final)
        done = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in created if not done else ():  # innermost first; only if still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
    logger.info("%s: extracted %d files to %s", archive, count, final)
    return final


def _open_zip(archive: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise ArchiveError(f"{archive}: not a valid zip archive ({e}); download it again") from e


def _members(archive: Path, kind: str):
    """(checked relative name, open file) of every regular file of the archive, in archive order."""
    if kind == "zip":
        with _open_zip(archive) as zf:
            members = [(info, _check_zip_member(info, archive)) for info in zf.infolist()]
            for info, name in members:
                if not info.is_dir():
                    with zf.open(info) as src:
                        yield name, src
        return
    try:
        with tarfile.open(archive, "r:*") as tf:
            for member in tf:
                name = _check_tar_member(member, archive)
                if member.isfile():
                    yield name, tf.extractfile(member)
    except (tarfile.TarError, EOFError) as e:
        detail = " ".join(str(e).split())
        raise ArchiveError(f"{archive}: truncated or corrupt tar archive ({detail}); download it again") from e


def _extract_flat(archive: Path, kind: str, final: Path, prefix: str) -> Path:
    """`extract(..., flatten=True)`: files under `prefix` into `final` by basename, each moved into place
    once written (a rerun after an interruption writes them again)."""
    final.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    seen: dict[str, str] = {}
    try:
        for name, src in _members(archive, kind):
            if not (name + "/").startswith(prefix):
                continue
            base = PurePosixPath(name).name
            if base in seen:
                raise ArchiveError(f"{archive}: members {seen[base]!r} and {name!r} have the same file name, so "
                                   f"they cannot both go into {final}; refusing the archive")
            seen[base] = name
            _write_member(src, tmp / base)
            os.replace(tmp / base, final / base)
        if not seen:
            raise ArchiveError(f"{archive} holds no file{f' under {prefix!r}' if prefix else ''}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("%s: extracted %d files into %s", archive, len(seen), final)
    return final
