import hashlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from caffecam.data.fetch import download, unpack_archive
from caffecam.errors import CaffeCamError

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import fetch as fetch_script  # noqa: E402


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        body = srv.files.get(self.path)
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m and srv.ranges:
            start = int(m.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        rest = body[start:]
        self.send_header("Content-Length", str(len(rest)))
        self.end_headers()
        if self.path in srv.drop_once:  # send part of the body, then hang up
            srv.drop_once.discard(self.path)
            self.wfile.write(rest[: srv.drop_after])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(rest)


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.files, srv.requests, srv.drop_once, srv.ranges, srv.drop_after = {}, [], set(), True, 0
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def payload(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def sha1(b):
    return hashlib.sha1(b).hexdigest()


def test_download_verifies_and_renames(server, tmp_path):
    body = payload(300_000)
    server.files["/w.bin"] = body
    out = download(server.base + "/w.bin", tmp_path / "w.bin", sha1=sha1(body), progress=False)
    assert out.read_bytes() == body
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.bin"]
    # present and verified: skipped without asking the server
    n = len(server.requests)
    download(server.base + "/w.bin", tmp_path / "w.bin", sha1=sha1(body).upper(), progress=False)
    assert len(server.requests) == n


def test_dropped_connection_is_resumed_automatically(server, tmp_path):
    body = payload(250_000, 1)
    server.files["/big.bin"] = body
    server.drop_once.add("/big.bin")
    server.drop_after = 100_000
    download(server.base + "/big.bin", tmp_path / "big.bin", sha1=sha1(body), progress=False, retry_wait=0)
    assert (tmp_path / "big.bin").read_bytes() == body
    assert server.requests == [("/big.bin", None), ("/big.bin", "bytes=100000-")]


def test_interrupted_download_keeps_part_and_next_run_resumes(server, tmp_path):
    body = payload(200_000, 2)
    server.files["/m.zip"] = body
    server.drop_once.add("/m.zip")
    server.drop_after = 70_000
    with pytest.raises(CaffeCamError, match=r"interrupted.*70000 bytes kept.*run again to resume"):
        download(server.base + "/m.zip", tmp_path / "m.zip", progress=False, retries=0)
    assert not (tmp_path / "m.zip").exists()
    assert (tmp_path / "m.zip.part").read_bytes() == body[:70_000]
    download(server.base + "/m.zip", tmp_path / "m.zip", progress=False, retries=0)
    assert (tmp_path / "m.zip").read_bytes() == body
    assert not (tmp_path / "m.zip.part").exists()
    assert server.requests[-1] == ("/m.zip", "bytes=70000-")


def test_server_without_range_support_restarts_from_zero(server, tmp_path):
    body = payload(50_000, 3)
    server.files["/f"] = body
    server.ranges = False
    (tmp_path / "f.part").write_bytes(b"stale bytes of something else")
    download(server.base + "/f", tmp_path / "f", sha1=sha1(body), progress=False)
    assert (tmp_path / "f").read_bytes() == body


def test_complete_part_answered_416_is_finished(server, tmp_path):
    body = payload(10_000, 4)
    server.files["/f"] = body
    (tmp_path / "f.part").write_bytes(body)
    download(server.base + "/f", tmp_path / "f", sha1=sha1(body), progress=False)
    assert (tmp_path / "f").read_bytes() == body
    assert server.requests == [("/f", "bytes=10000-")]


def test_wrong_checksum_deletes_download_and_keeps_users_file(server, tmp_path):
    body = payload(20_000, 5)
    server.files["/f"] = body
    with pytest.raises(CaffeCamError, match=r"sha1 is [0-9a-f]{40}, expected 0{40}.*bad download was deleted"):
        download(server.base + "/f", tmp_path / "f", sha1="0" * 40, progress=False)
    assert list(tmp_path.iterdir()) == []
    # a file the user already has that does not match is never replaced or deleted
    (tmp_path / "f").write_bytes(b"user's own file")
    with pytest.raises(CaffeCamError, match=r"exists but its sha1 is .*left as it is"):
        download(server.base + "/f", tmp_path / "f", sha1=sha1(body), progress=False)
    assert (tmp_path / "f").read_bytes() == b"user's own file"


def test_404_is_one_line_error(server, tmp_path):
    with pytest.raises(CaffeCamError) as exc:
        download(server.base + "/missing.caffemodel", tmp_path / "x", progress=False)
    assert "HTTP 404" in str(exc.value) and "\n" not in str(exc.value)
    assert list(tmp_path.iterdir()) == []


def test_server_gone_is_one_line_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(CaffeCamError, match="cannot connect") as exc:
        download(f"http://127.0.0.1:{port}/x", tmp_path / "x", progress=False)
    assert "\n" not in str(exc.value)


def _zip_bytes(entries):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _tar_bytes(entries, links=()):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return buf.getvalue()


def test_unpack_zip_and_tar_and_refuse_escapes(tmp_path):
    (tmp_path / "a.zip").write_bytes(_zip_bytes({"ann/x.mat": b"mat", "ann/readme.txt": b"hi"}))
    unpack_archive(tmp_path / "a.zip", tmp_path / "out", progress=False)
    assert (tmp_path / "out/ann/x.mat").read_bytes() == b"mat"
    (tmp_path / "i.tar.gz").write_bytes(_tar_bytes({"images/1.jpg": b"j1", "images/2.jpg": b"j2"},
                                                   links=[("images/ok", "1.jpg")]))
    unpack_archive(tmp_path / "i.tar.gz", tmp_path / "out", progress=False)
    assert (tmp_path / "out/images/2.jpg").read_bytes() == b"j2"
    assert (tmp_path / "out/.i.tar.gz.unpacked").exists()

    (tmp_path / "evil.zip").write_bytes(_zip_bytes({"../escape.txt": b"x"}))
    with pytest.raises(CaffeCamError, match="outside"):
        unpack_archive(tmp_path / "evil.zip", tmp_path / "out2", progress=False)
    (tmp_path / "evil.tar.gz").write_bytes(_tar_bytes({}, links=[("images/l", "../../../etc/passwd")]))
    with pytest.raises(CaffeCamError, match="outside"):
        unpack_archive(tmp_path / "evil.tar.gz", tmp_path / "out3", progress=False)
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "out3/images/l").exists()
    (tmp_path / "bad.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(CaffeCamError, match="damaged archive"):
        unpack_archive(tmp_path / "bad.tar.gz", tmp_path / "out4", progress=False)


def test_script_fetches_and_unpacks_from_mirror(server, tmp_path, capsys):
    server.files["/mpii_human_pose_v1_u12_2.zip"] = _zip_bytes({"mpii_human_pose_v1_u12_2/a.mat": b"m"})
    assert fetch_script.main(["mpii_annotations", "--dest", str(tmp_path), "--unpack", "--mirror", server.base,
                              "--no-progress"]) == 0
    assert (tmp_path / "mpii_human_pose_v1_u12_2/a.mat").read_bytes() == b"m"
    # bvlc_googlenet has a known sha1, which the mirror's bytes do not match: exit 1 with one line
    server.files["/bvlc_googlenet.caffemodel"] = b"not the real weights"
    with pytest.raises(SystemExit) as exc:
        fetch_script.main(["bvlc_googlenet", "--dest", str(tmp_path), "--mirror", server.base, "--no-progress"])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "expected 405fc5acd08a3bb12de8ee5e23a96bec22f08204" in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "bvlc_googlenet.caffemodel").exists()
    (tmp_path / "a_file").write_bytes(b"")
    with pytest.raises(SystemExit) as exc:
        fetch_script.main(["bvlc_googlenet", "--dest", str(tmp_path / "a_file"), "--mirror", server.base])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err == f"error: --dest {tmp_path / 'a_file'}: is a file; give the folder to download into\n"


def test_server_gone_after_partial_download_keeps_part(server, tmp_path):
    body = payload(80_000, 6)
    server.files["/f"] = body
    server.drop_once.add("/f")
    server.drop_after = 30_000
    with pytest.raises(CaffeCamError):
        download(server.base + "/f", tmp_path / "f", progress=False, retries=0)
    server.shutdown()
    server.server_close()
    with pytest.raises(CaffeCamError, match=r"cannot connect.*30000 bytes kept in .*f\.part, run again to resume"):
        download(server.base + "/f", tmp_path / "f", progress=False)
    assert (tmp_path / "f.part").read_bytes() == body[:30_000] and not (tmp_path / "f").exists()


def test_unpack_killed_with_sigkill_is_finished_by_the_next_run(tmp_path):
    # 120 incompressible members of 256 KiB: the unpack takes long enough to be killed in the middle.
    rng = np.random.default_rng(3)
    members = {f"images/{i:03d}.jpg": rng.bytes(256 << 10) for i in range(120)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    dest = tmp_path / "mpii"
    dest.mkdir()
    (dest / "mpii_human_pose_v1.tar.gz").write_bytes(buf.getvalue())  # already downloaded: fetch goes on to unpack
    cmd = [sys.executable, str(ROOT / "scripts/fetch.py"), "mpii_images", "--dest", str(dest), "--unpack",
           "--no-progress"]

    def unpacked_files():
        return [p for p in dest.rglob("*.jpg") if p.is_file()]

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(unpacked_files()) < 10 and proc.poll() is None:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (dest / ".mpii_human_pose_v1.tar.gz.unpacked").exists()  # it was stopped half-way
    assert 10 <= len(unpacked_files()) < len(members)
    assert not (dest / "images").exists()  # no half tree under the final names

    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "finishing the interrupted unpack" in out.stdout
    assert sorted(str(p.relative_to(dest)) for p in unpacked_files()) == sorted(members)
    for name, data in members.items():
        assert (dest / name).read_bytes() == data
    assert sorted(p.name for p in dest.iterdir()) == [".mpii_human_pose_v1.tar.gz.unpacked", "images",
                                                      "mpii_human_pose_v1.tar.gz"]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already unpacked" in again.stdout
