import functools
import http.server
import shutil
import socket
import stat
import threading
import zipfile

import numpy as np
import pytest

from vop.datasets import colmap, eth3d, synthetic
from vop.io import read_gt


@pytest.fixture(scope="module")
def eth3d_root(tmp_path_factory):
    """A dataset root with one scene in ETH3D's undistorted layout (rendered by the synthetic generator)."""
    root = tmp_path_factory.mktemp("eth3d")
    scene = synthetic.generate_scene(root / "courtyard", seed=2, num_images=4, width=80, height=60)
    return root, scene


def test_scene_paths():
    images, model, depth = eth3d.scene_paths("/data", "office")
    assert str(images) == "/data/office/images"
    assert str(model) == "/data/office/dslr_calibration_undistorted"
    assert str(depth) == "/data/office/ground_truth_depth/dslr_images_undistorted"
    assert len(eth3d.SCENES) == 13 and "relief_2" in eth3d.SCENES


def test_ground_truth(eth3d_root, tmp_path):
    root, scene = eth3d_root
    eth3d.main(["gt", str(root), "courtyard", str(tmp_path / "gt.h5")])
    gt = read_gt(tmp_path / "gt.h5")
    assert gt.names == scene.names  # exactly as in images.txt
    for i, view in enumerate(scene.views):
        np.testing.assert_allclose(gt.K[i], view.K)
        np.testing.assert_allclose(gt.T_w2cam[i][:3, :3], view.R, atol=1e-12)
        np.testing.assert_allclose(gt.T_w2cam[i][:3, 3], view.tvec)
        np.testing.assert_array_equal(gt.image_size[i], [80, 60])
    model = colmap.read_model(eth3d.scene_paths(root, "courtyard")[1])
    np.testing.assert_array_equal(gt.overlap, colmap.ground_truth_from_model(model).overlap)
    assert gt.overlap.shape == (4, 4) and np.all(np.diag(gt.overlap) == 1)


def test_depth_reader(eth3d_root, tmp_path):
    root, scene = eth3d_root
    depth_dir = eth3d.scene_paths(root, "courtyard")[2]
    depth = eth3d.read_depth(depth_dir / "IMG_0000.JPG", 80, 60)
    assert depth.shape == (60, 80) and depth.dtype == np.float32
    # ETH3D marks pixels without ground truth with +inf.
    raw = np.full((3, 4), np.inf, np.float32)
    raw[1, 2] = 2.5
    raw.tofile(tmp_path / "d.JPG")
    np.testing.assert_array_equal(eth3d.read_depth(tmp_path / "d.JPG", 4, 3), raw)
    with pytest.raises(ValueError, match=r"d\.JPG: 48 bytes.*5x3 image has 60"):
        eth3d.read_depth(tmp_path / "d.JPG", 5, 3)


def test_missing_image_is_named(eth3d_root, tmp_path):
    root, _ = eth3d_root
    shutil.copytree(root / "courtyard", tmp_path / "courtyard")
    (tmp_path / "courtyard/images/dslr_images_undistorted/IMG_0002.JPG").unlink()
    with pytest.raises(FileNotFoundError, match=r"IMG_0002\.JPG.*images\.txt.*incomplete"):
        eth3d.write_ground_truth(tmp_path, "courtyard", tmp_path / "gt.h5")
    assert not (tmp_path / "gt.h5").exists()
    with pytest.raises(FileNotFoundError, match="calibration of scene 'office' not found"):
        eth3d.write_ground_truth(tmp_path, "office", tmp_path / "gt.h5")


def make_zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members:  # name: a str or a ZipInfo
            zf.writestr(name, data)
    return path


def test_extract_zip(tmp_path):
    archive = make_zip(tmp_path / "a.zip", [("ETH3D_undistorted/office/x.txt", "hello"), ("top.txt", "t")])
    target = eth3d.extract_zip(archive, tmp_path / "out")
    assert (target / "ETH3D_undistorted/office/x.txt").read_text() == "hello"
    with pytest.raises(FileExistsError):
        eth3d.extract_zip(archive, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip", "out"]


def test_extract_one_scene_by_prefix(tmp_path):
    archive = make_zip(tmp_path / "a.zip", [
        ("ETH3D_undistorted/office/dslr_calibration_undistorted/images.txt", "office"),
        ("ETH3D_undistorted/office_2/x.txt", "not this scene"),
        ("ETH3D_undistorted/pipes/x.txt", "nor this one"),
    ])
    # Snakemake creates the output's folders before the job: overwrite=True replaces them.
    (tmp_path / "out/ETH3D_undistorted/office/dslr_calibration_undistorted").mkdir(parents=True)
    scene = eth3d.extract_zip(archive, tmp_path / "out", overwrite=True, member_prefix="ETH3D_undistorted/office/")
    assert scene == tmp_path / "out/ETH3D_undistorted/office"
    assert (scene / "dslr_calibration_undistorted/images.txt").read_text() == "office"
    assert sorted(p.name for p in (tmp_path / "out/ETH3D_undistorted").iterdir()) == ["office"]
    with pytest.raises(ValueError, match="nothing under 'ETH3D_undistorted/kicker/'"):
        eth3d.extract_zip(archive, tmp_path / "out", member_prefix="ETH3D_undistorted/kicker/")


@pytest.mark.parametrize("bad", ["../evil", "ok/../../evil", "/tmp/evil_abs", "symlink"])
def test_extract_zip_refuses_escapes(tmp_path, bad):
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    if bad == "symlink":
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        member = (info, "../../evil")
    else:
        member = (bad, "pwned")
    archive = make_zip(tmp_path / "bad.zip", [("fine.txt", "ok"), member])
    with pytest.raises(ValueError, match="refusing the archive"):
        eth3d.extract_zip(archive, sandbox / "target")
    assert list(sandbox.iterdir()) == []  # neither the target nor a temporary directory
    assert not (tmp_path / "evil").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zip", "sandbox"]


@pytest.fixture
def http_root(tmp_path):
    """A loopback HTTP server serving tmp_path/'served'."""
    served = tmp_path / "served"
    served.mkdir()

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download(http_root, tmp_path):
    served, url = http_root
    payload = np.random.default_rng(0).bytes(300_000)
    (served / "ETH3D_undistorted.zip").write_bytes(payload)
    dest = tmp_path / "dl" / "ETH3D_undistorted.zip"
    eth3d.main(["download", f"{url}/ETH3D_undistorted.zip", str(dest)])
    assert dest.read_bytes() == payload
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]
    with pytest.raises(RuntimeError, match="HTTP 404"):
        eth3d.download(f"{url}/missing.zip", tmp_path / "dl" / "missing.zip")
    assert not (tmp_path / "dl" / "missing.zip").exists()


def test_download_unreachable_says_what_to_do(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = tmp_path / "ETH3D_undistorted.zip"
    with pytest.raises(RuntimeError) as info:
        eth3d.download(f"http://127.0.0.1:{port}/x.zip", dest, timeout=5)
    message = str(info.value)
    assert "no network or server unreachable" in message
    assert f"http://127.0.0.1:{port}/x.zip" in message and str(dest) in message
    assert "datasets.eth3d.root" in message
    assert list(tmp_path.iterdir()) == []
