"""vop.download against a real HTTP server on 127.0.0.1 serving archives the tests build."""

import http.server
import io
import logging
import re
import socket
import stat
import tarfile
import threading
import zipfile

import numpy as np
import pytest

from vop import download as dl
from vop.cli import main as vop_main


class ArchiveServer:
    """Serves `files` {name: bytes} with Range support; `cut[name]` = bytes sent before dropping the
    connection, for the next `cut_times[name]` responses; `ignore_range` answers 200 to Range requests."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.cut_times: dict[str, int] = {}
        self.ignore_range = False
        self.requests: list[dict] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                server.requests.append({"path": name, "range": self.headers.get("Range")})
                if name not in server.files:
                    self.send_error(404)
                    return
                data = server.files[name]
                start = 0
                header = self.headers.get("Range")
                if header and not server.ignore_range:
                    start = int(header.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_times.get(name, 0) > 0:
                    server.cut_times[name] -= 1
                    self.wfile.write(body[: server.cut[name]])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    with ArchiveServer() as s:
        yield s


def make_zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def make_tar(members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return buf.getvalue()


def file_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def random_bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).bytes(n)


def test_resume_after_dropped_connection(server, tmp_path, caplog):
    payload = make_zip({"scene/a.bin": random_bytes(3_000_000), "scene/b.bin": random_bytes(2_000_000, 1)})
    server.files["data.zip"] = payload
    server.cut["data.zip"], server.cut_times["data.zip"] = 1_234_567, 1
    dest = tmp_path / "dl" / "data.zip"
    with caplog.at_level(logging.INFO, logger="vop.download"):
        dl.download(f"{server.url}/data.zip", dest, progress_every=0.0)
    assert dest.read_bytes() == payload
    assert [r["range"] for r in server.requests] == [None, "bytes=1234567-"]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["data.zip"]  # no .part left
    log = caplog.text
    size = f"{len(payload) / 1e6:.1f} MB"
    # vop.progress lines: the first connection stops at the cut, the second resumes there to the end
    assert re.search(rf"download data\.zip: stopped at 1\.2 MB/{size} \(24%\) after \d+s, [\d.]+ [kMG]?B/s", log)
    assert "resuming at 1.2 MB" in log
    assert re.search(rf"download data\.zip: 5\.0 MB/{size} \(100%\) in \d+s, [\d.]+ [kMG]?B/s", log)
    assert re.search(rf"verify data\.zip: {size}/{size} \(100%\) in", log)  # the CRC check, by member bytes
    assert "archive test passed" in log


def test_a_killed_run_resumes_from_the_part_file(server, tmp_path):
    payload = make_tar([file_member("cutouts/x.jpg", random_bytes(800_000))])
    server.files["cutouts.tar.gz"] = payload
    dest = tmp_path / "cutouts.tar.gz"
    (tmp_path / "cutouts.tar.gz.part").write_bytes(payload[:300_000])  # what a killed run left
    assert vop_main(["download", f"{server.url}/cutouts.tar.gz", str(dest)]) == 0
    assert dest.read_bytes() == payload
    assert [r["range"] for r in server.requests] == ["bytes=300000-"]


def test_a_complete_part_file_is_not_fetched_again(server, tmp_path):
    payload = make_zip({"a.txt": b"abc" * 1000})
    server.files["a.zip"] = payload
    (tmp_path / "a.zip.part").write_bytes(payload)
    dl.download(f"{server.url}/a.zip", tmp_path / "a.zip")
    assert (tmp_path / "a.zip").read_bytes() == payload
    assert [r["range"] for r in server.requests] == [f"bytes={len(payload)}-"]  # answered 416: complete


def test_server_without_range_support_restarts_from_zero(server, tmp_path):
    payload = make_zip({"a.bin": random_bytes(500_000)})
    server.files["a.zip"] = payload
    server.ignore_range = True
    (tmp_path / "a.zip.part").write_bytes(b"stale bytes from another file")
    dl.download(f"{server.url}/a.zip", tmp_path / "a.zip")
    assert (tmp_path / "a.zip").read_bytes() == payload


def test_connection_that_keeps_dropping_gives_up_and_keeps_the_part(server, tmp_path):
    payload = random_bytes(400_000)
    server.files["big.tar"] = payload
    server.cut["big.tar"], server.cut_times["big.tar"] = 0, 100  # headers, then nothing, every time
    with pytest.raises(dl.DownloadError, match="keeps failing.*run again to resume"):
        dl.download(f"{server.url}/big.tar", tmp_path / "big.tar", retries=2)
    assert not (tmp_path / "big.tar").exists()
    assert len(server.requests) == 3


@pytest.mark.parametrize("kind", ["truncated_tar", "corrupt_zip", "not_an_archive"])
def test_corrupt_archive_is_detected_and_deleted(server, tmp_path, kind):
    if kind == "truncated_tar":
        name = "scene_info.tar.gz"
        good = make_tar([file_member(f"scene_info/{i:04d}.npz", random_bytes(200_000, i)) for i in range(3)])
        payload = good[: len(good) * 2 // 3]  # served whole: the size check passes, the archive test must not
    elif kind == "corrupt_zip":
        name = "ETH3D_undistorted.zip"
        good = make_zip({"ETH3D_undistorted/a.bin": b"\x00" * 100_000})
        payload = bytearray(good)
        payload[50_000] ^= 0xFF  # inside the stored member's data: its CRC no longer matches
        payload = bytes(payload)
    else:
        name = "cutouts.tar.gz"
        payload = b"<html>maintenance</html>"
    server.files[name] = payload
    dest = tmp_path / "out" / name
    with pytest.raises(dl.ArchiveError, match="corrupt.*deleted, run again"):
        dl.download(f"{server.url}/{name}", dest)
    assert list((tmp_path / "out").iterdir()) == []  # neither the archive nor its .part


def test_http_error_names_url_and_destination(server, tmp_path):
    dest = tmp_path / "missing.zip"
    with pytest.raises(dl.DownloadError, match="HTTP 404") as info:
        dl.download(f"{server.url}/missing.zip", dest, config_key="datasets.x.root")
    assert str(dest) in str(info.value) and "datasets.x.root" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_no_network_says_url_destination_and_config_key(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = tmp_path / "ETH3D_undistorted.zip"
    url = f"http://127.0.0.1:{port}/ETH3D_undistorted.zip"
    with pytest.raises(dl.DownloadError) as info:
        dl.download(url, dest, config_key="datasets.eth3d.root", timeout=5)
    message = str(info.value)
    assert "no network or server unreachable" in message
    assert url in message and str(dest) in message and "`datasets.eth3d.root`" in message
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Extraction


def test_extract_zip_and_tar_with_member_prefix(tmp_path):
    files = {"ETH3D_undistorted/office/images/a.JPG": b"office", "ETH3D_undistorted/kicker/images/b.JPG": b"kick"}
    zpath = tmp_path / "a.zip"
    zpath.write_bytes(make_zip(files))
    out = dl.extract(zpath, tmp_path / "z", member_prefix="ETH3D_undistorted/office/")
    assert out == tmp_path / "z" / "ETH3D_undistorted" / "office"
    assert (out / "images" / "a.JPG").read_bytes() == b"office"
    assert not (tmp_path / "z" / "ETH3D_undistorted" / "kicker").exists()
    with pytest.raises(FileExistsError):
        dl.extract(zpath, tmp_path / "z", member_prefix="ETH3D_undistorted/office/")
    with pytest.raises(dl.ArchiveError, match="nothing under 'ETH3D_undistorted/relief/'"):
        dl.extract(zpath, tmp_path / "z", member_prefix="ETH3D_undistorted/relief/")

    tpath = tmp_path / "depth_undistorted.tar.gz"
    tpath.write_bytes(make_tar([file_member(f"./{k}", v) for k, v in files.items()]))
    whole = dl.extract(tpath, tmp_path / "t")
    assert sorted(str(p.relative_to(whole)) for p in whole.rglob("*.JPG")) == sorted(files)
    assert dl.extract(tpath, tmp_path / "t", overwrite=True) == whole  # replaced, not merged
    assert list(tmp_path.glob("t/.*")) == [] and list(tmp_path.glob(".t*")) == []


def _link(name: str, target: str, hard: bool = False) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info, None


ESCAPES = ["../evil", "ok/../../evil", "/tmp/evil_abs", "symlink"]


@pytest.mark.parametrize(("kind", "bad"), [("zip", b) for b in ESCAPES]
                         + [("tar", b) for b in [*ESCAPES, "hardlink", "fifo"]])  # zip has no hard links
def test_extract_refuses_escapes_and_links(tmp_path, bad, kind):
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    if kind == "zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("fine.txt", "ok")
            if bad == "symlink":
                info = zipfile.ZipInfo("link")
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                zf.writestr(info, "../../evil")
            else:
                zf.writestr(bad, "pwned")
        archive = tmp_path / "bad.zip"
        archive.write_bytes(buf.getvalue())
    else:
        members = [file_member("fine.txt", b"ok")]
        if bad == "symlink":
            members.append(_link("link", "../../evil"))
        elif bad == "hardlink":
            members.append(_link("hard", "/etc/passwd", hard=True))
        elif bad == "fifo":
            info = tarfile.TarInfo("pipe")
            info.type = tarfile.FIFOTYPE
            members.append((info, None))
        else:
            members.append(file_member(bad, b"pwned"))
        archive = tmp_path / "bad.tar.gz"
        archive.write_bytes(make_tar(members))
    with pytest.raises(dl.ArchiveError, match="refusing the archive"):
        dl.extract(archive, sandbox / "target")
    assert list(sandbox.iterdir()) == []  # neither the target nor a temporary folder
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([archive.name, "sandbox"])
    # as the workflow extracts (one part under a prefix, into folders that do not exist yet): no empty folders
    with pytest.raises(dl.ArchiveError, match="refusing the archive"):
        dl.extract(archive, sandbox / "resources" / "ds", member_prefix="scene/part/")
    assert list(sandbox.iterdir()) == []


def test_extract_truncated_tar_leaves_nothing(tmp_path):
    good = make_tar([file_member(f"scene_info/{i}.npz", random_bytes(100_000, i)) for i in range(4)])
    archive = tmp_path / "scene_info.tar.gz"
    archive.write_bytes(good[: len(good) // 2])
    with pytest.raises(dl.ArchiveError, match="truncated or corrupt"):
        dl.extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["scene_info.tar.gz"]
    with pytest.raises(dl.ArchiveError, match="truncated or corrupt"):
        dl.verify_archive(archive)
