"""Downloads of the pretrained weights and the MPII dataset: resumable, verified, renamed into place when complete.

A transfer streams into `<file>.part`; a later run (or an automatic retry) asks the server for the rest with an HTTP
Range request. Only a complete file whose SHA-1 matches (where one is known) is renamed to its final name, so a file
under the final name is always whole. A download whose checksum does not match is deleted and the file the user
already had (if any) is left untouched.
"""

import hashlib
import http.client
import os
import re
import shutil
import ssl
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from caffecam.atomic import atomic_write_bytes
from caffecam.errors import CaffeCamError

CHUNK = 1 << 16


@dataclass(frozen=True)
class Source:
    url: str
    sha1: str | None = None
    note: str = ""

    @property
    def filename(self):
        return self.url.rsplit("/", 1)[-1]


MPII_BASE = "https://datasets.d2.mpi-inf.mpg.de/andriluka14cvpr/"
SOURCES = {
    "bvlc_googlenet": Source("http://dl.caffe.berkeleyvision.org/bvlc_googlenet.caffemodel",
                             "405fc5acd08a3bb12de8ee5e23a96bec22f08204",
                             "BVLC GoogLeNet (ImageNet), 53 MB, unrestricted license"),
    "googlenet_cam_imagenet": Source("http://cnnlocalization.csail.mit.edu/demoCAM/models/"
                                     "imagenet_googlenetCAM_train_iter_120000.caffemodel",
                                     None, "the CAM authors' ImageNet GoogLeNet-CAM"),
    "mpii_annotations": Source(MPII_BASE + "mpii_human_pose_v1_u12_2.zip", None,
                               "MPII Human Pose annotations, 12.5 MB, research use only"),
    "mpii_images": Source(MPII_BASE + "mpii_human_pose_v1.tar.gz", None,
                          "MPII Human Pose images, 12.9 GB, research use only"),
}


def sha1_file(path, progress=False):
    h = hashlib.sha1()
    size = os.path.getsize(path)
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc=f"sha1 {Path(path).name}",
                                     disable=None if progress else True, leave=False) as bar:
        while block := f.read(1 << 20):
            h.update(block)
            bar.update(len(block))
    return h.hexdigest()


class _Interrupted(Exception):
    """The connection ended before the whole file arrived; what came is in the .part file."""


def _network_error(url, exc, part):
    kept = f"; {part.stat().st_size} bytes kept in {part}, run again to resume" if part.exists() else ""
    if isinstance(exc, urllib.error.HTTPError):
        return CaffeCamError(f"{url}: HTTP {exc.code} {exc.reason}; the file may have moved or the server is down "
                             f"(try again later, or pass --mirror with another copy){kept}")
    reason = getattr(exc, "reason", None) or exc.__class__.__name__
    return CaffeCamError(f"{url}: cannot connect ({reason}); check the network connection and try again{kept}")


def _open(url, offset, timeout):
    headers = {"User-Agent": "caffecam-fetch/1"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _transfer(url, part, timeout, progress, desc):
    """One attempt: append the rest of `url` to `part`. Returns the total size; raises _Interrupted if cut short."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        resp = _open(url, offset, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left past `offset`: either done already or a stale, longer .part
            m = re.search(r"/(\d+)", exc.headers.get("Content-Range", ""))
            if m and int(m.group(1)) == offset:
                return offset
            part.unlink()
            return _transfer(url, part, timeout, progress, desc)
        raise
    with resp:
        if offset and resp.status == 206:
            m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != offset:
                raise CaffeCamError(f"{url}: server answered a resume request with a wrong range "
                                    f"({resp.headers.get('Content-Range')!r}); delete {part} and try again")
            mode = "ab"
        else:  # the server ignored the Range request (or there was nothing to resume): start from byte 0
            offset, mode = 0, "wb"
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        done = offset
        with open(part, mode) as f, tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                                         desc=desc, disable=None if progress else True) as bar:
            try:
                while block := resp.read(CHUNK):
                    f.write(block)
                    done += len(block)
                    bar.update(len(block))
            except (http.client.HTTPException, ConnectionError, TimeoutError, ssl.SSLError) as exc:
                raise _Interrupted(f"{exc.__class__.__name__}") from None
    if total is not None and done < total:
        raise _Interrupted(f"got {done} of {total} bytes")
    return done


def download(url, dest_path, sha1=None, progress=True, retries=3, retry_wait=2.0, timeout=60.0):
    """Download `url` to `dest_path`, resuming `<dest>.part` if present; returns the Path.

    Skips the download when `dest_path` exists (and matches `sha1` when given). Retries an interrupted transfer
    `retries` times, resuming each time. Raises CaffeCamError (one line) on HTTP errors, unreachable servers, an
    interruption that outlasts the retries (the .part file is kept for the next run) and a checksum mismatch
    (the bad download is deleted; an existing `dest_path` is never touched).
    """
    dest = Path(dest_path)
    sha1 = sha1.lower() if sha1 else None
    if dest.exists():
        if sha1 is None:
            print(f"{dest}: already present (no checksum known); skipped")
            return dest
        have = sha1_file(dest, progress)
        if have == sha1:
            print(f"{dest}: already present, sha1 verified; skipped")
            return dest
        raise CaffeCamError(f"{dest}: exists but its sha1 is {have}, expected {sha1}; it was left as it is: "
                            f"move or delete it, then run again to download a fresh copy")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    while True:
        try:
            _transfer(url, part, timeout, progress, dest.name)
            break
        except _Interrupted as exc:
            attempt += 1
            kept = part.stat().st_size if part.exists() else 0
            if attempt > retries:
                raise CaffeCamError(f"{url}: download interrupted ({exc}); {kept} bytes kept in {part}, "
                                    f"run again to resume") from None
            print(f"{dest.name}: connection lost ({exc}); resuming from byte {kept} "
                  f"(retry {attempt} of {retries})")
            time.sleep(retry_wait * attempt)
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, ssl.SSLError) as exc:
            raise _network_error(url, exc, part) from None
        except OSError as exc:
            raise CaffeCamError(f"{part}: cannot write ({exc.strerror}); check free space and permissions") from None
    if sha1 is not None:
        got = sha1_file(part, progress)
        if got != sha1:
            part.unlink()
            raise CaffeCamError(f"{url}: downloaded file's sha1 is {got}, expected {sha1}; the bad download was "
                                f"deleted and nothing else was changed; try again, or check the URL/mirror")
    os.replace(part, dest)
    print(f"{dest}: downloaded" + (", sha1 verified" if sha1 else ""))
    return dest


def _safe_target(base, name, archive):
    target = (base / name).resolve()
    if os.path.isabs(name) or not target.is_relative_to(base):
        raise CaffeCamError(f"{archive}: member {name!r} would be written outside {base.parent}; refusing to unpack")
    return target


def _whole(target, size):
    """A member already unpacked by an interrupted run: files are written front to back, so the full size means
    the whole file."""
    return target.is_file() and not target.is_symlink() and target.stat().st_size == size


def _unzip(archive, base, bar_off):
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for m in members:
            _safe_target(base, m.filename, archive)
        for m in tqdm(members, desc=f"unpack {archive.name}", unit="file", disable=bar_off):
            if m.is_dir() or not _whole(base / m.filename, m.file_size):
                zf.extract(m, base)


def _untar(archive, base, bar_off):
    with tarfile.open(archive) as tf:
        for m in tqdm(tf, desc=f"unpack {archive.name}", unit="file", disable=bar_off):
            _safe_target(base, m.name, archive)
            if m.issym() or m.islnk():
                link_base = (base / m.name).parent if m.issym() else base
                if not (link_base / m.linkname).resolve().is_relative_to(base):
                    raise CaffeCamError(f"{archive}: link {m.name!r} -> {m.linkname!r} points outside "
                                        f"{base.parent}; refusing to unpack")
            if m.isdev():
                raise CaffeCamError(f"{archive}: member {m.name!r} is a device file; refusing to unpack")
            if m.isfile() and _whole(base / m.name, m.size):
                continue
            tf.extract(m, base, set_attrs=False, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))


def _move_into(src, dst):
    """Move everything in folder src into folder dst, merging folders both hold (src's files win), then remove
    src. Where dst lacks a folder, that whole folder moves in one rename."""
    dst.mkdir(exist_ok=True)
    for entry in os.scandir(src):
        target = dst / entry.name
        if entry.is_dir(follow_symlinks=False) and target.is_dir() and not target.is_symlink():
            _move_into(Path(entry.path), target)
        elif target.is_dir() and not target.is_symlink():
            raise CaffeCamError(f"{target}: is a folder where the archive has a file; move it away and run again")
        else:
            os.replace(entry.path, target)
    src.rmdir()


def _unpack_members(archive, base, progress):
    name, bar_off = archive.name.lower(), None if progress else True
    try:
        if name.endswith(".zip"):
            _unzip(archive, base, bar_off)
        elif name.endswith((".tar.gz", ".tgz", ".tar")):
            _untar(archive, base, bar_off)
        else:
            raise CaffeCamError(f"{archive}: unknown archive type; expected .zip, .tar or .tar.gz")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise CaffeCamError(f"{archive}: damaged archive ({exc}); delete it and fetch it again") from None


def unpack_archive(archive, dest_dir, progress=True):
    """Unpack a .zip or .tar(.gz) archive into dest_dir, refusing members (or links) that point outside it.

    Members go to the hidden folder `.<archive name>.unpacking` first and move into dest_dir only once all are
    there, so an unpack that is killed never leaves half a tree under the final names; the next run completes that
    folder (keeping the members already there whole) and moves it. A stamp file `.<archive name>.unpacked` records
    a completed unpack so repeated runs skip it.
    """
    archive, dest_dir = Path(archive), Path(dest_dir).resolve()
    stamp = dest_dir / f".{archive.name}.unpacked"
    if stamp.exists():
        print(f"{archive.name}: already unpacked into {dest_dir}; skipped")
        return dest_dir
    staging = dest_dir / f".{archive.name}.unpacking"
    if staging.is_dir():
        print(f"{archive.name}: finishing the interrupted unpack in {staging}")
    staging.mkdir(parents=True, exist_ok=True)
    try:
        _unpack_members(archive, staging.resolve(), progress)
    except CaffeCamError:
        shutil.rmtree(staging, ignore_errors=True)  # an archive refused is not resumed
        raise
    _move_into(staging, dest_dir)
    atomic_write_bytes(stamp, b"")
    print(f"{archive.name}: unpacked into {dest_dir}")
    return dest_dir


def fetch(name, dest_dir, unpack=False, progress=True, mirror=None, retries=3, retry_wait=2.0):
    """Download the named source (see SOURCES) into dest_dir; optionally unpack it there. Returns the file's Path.

    `mirror`: a base URL that replaces the source's folder (`<mirror>/<file name>`), e.g. a local copy.
    """
    if name not in SOURCES:
        raise CaffeCamError(f"unknown source {name!r}; choose from: {', '.join(SOURCES)}")
    src = SOURCES[name]
    url = src.url if mirror is None else mirror.rstrip("/") + "/" + src.filename
    path = download(url, Path(dest_dir) / src.filename, src.sha1, progress, retries, retry_wait)
    if unpack and src.filename.endswith((".zip", ".tar.gz", ".tgz", ".tar")):
        unpack_archive(path, dest_dir, progress)
    return path
