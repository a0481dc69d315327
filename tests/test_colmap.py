import numpy as np
import pytest

from vop.datasets import colmap
from vop.io import read_gt


def hand_model() -> colmap.Model:
    """Four images; P(a) = {3,4,5}, P(b) = {1,2,3,4}, P(c) = {} (no observations), P(d) = {5,6}."""
    cameras = {
        1: colmap.Camera(1, "PINHOLE", 640, 480, np.array([500.0, 510.0, 320.0, 240.0])),
        2: colmap.Camera(2, "SIMPLE_PINHOLE", 100, 80, np.array([90.0, 50.5, 40.25])),
    }

    def image(image_id, name, camera_id, ids, qvec=(1.0, 0, 0, 0), tvec=(0.0, 0, 0)):
        ids = np.array(ids, np.int64)
        xys = np.stack([np.arange(len(ids)) + 0.5, np.arange(len(ids)) * 0.25 + 1.0 / 3], 1).reshape(-1, 2)
        return colmap.Image(image_id, name, np.array(qvec, float), np.array(tvec, float), camera_id, xys, ids)

    images = {
        1: image(1, "b.jpg", 1, [1, 2, -1, 3, 4], (0.5, 0.5, 0.5, 0.5), (1.0, -2.0, 3.5)),
        2: image(2, "a.jpg", 2, [3, 4, 5]),
        3: image(3, "c.jpg", 1, []),
        4: image(4, "sub dir/d.jpg", 1, [5, -1, 6]),
    }
    tracks = {}
    for im in images.values():
        for idx, pid in enumerate(im.point3D_ids):
            if pid >= 0:
                tracks.setdefault(int(pid), []).append((im.id, idx))
    points = {
        pid: colmap.Point3D(pid, np.array([pid, -pid / 3, 2.0]), np.array([pid, 2 * pid, 255], np.uint8), 0.125,
                            np.array([t[0] for t in track]), np.array([t[1] for t in track]))
        for pid, track in tracks.items()
    }
    return colmap.Model(cameras, images, points)


def assert_models_equal(a: colmap.Model, b: colmap.Model):
    assert a.cameras.keys() == b.cameras.keys()
    for k, cam in a.cameras.items():
        other = b.cameras[k]
        assert (cam.id, cam.model, cam.width, cam.height) == (other.id, other.model, other.width, other.height)
        np.testing.assert_array_equal(cam.params, other.params)
    assert a.images.keys() == b.images.keys()
    for k, im in a.images.items():
        other = b.images[k]
        assert (im.id, im.name, im.camera_id) == (other.id, other.name, other.camera_id)
        for field in ("qvec", "tvec", "xys", "point3D_ids"):
            np.testing.assert_array_equal(getattr(im, field), getattr(other, field), err_msg=field)
    assert a.points3D.keys() == b.points3D.keys()
    for k, p in a.points3D.items():
        other = b.points3D[k]
        assert p.error == other.error
        for field in ("xyz", "rgb", "image_ids", "point2D_idxs"):
            np.testing.assert_array_equal(getattr(p, field), getattr(other, field), err_msg=field)


def test_text_round_trip(tmp_path):
    model = hand_model()
    colmap.write_model_text(model, tmp_path / "m")
    back = colmap.read_model(tmp_path / "m")
    assert_models_equal(model, back)
    # Writing what was read gives the same bytes; headers are COLMAP's.
    colmap.write_model_text(back, tmp_path / "m2")
    for name in ("cameras.txt", "images.txt", "points3D.txt"):
        assert (tmp_path / "m" / name).read_bytes() == (tmp_path / "m2" / name).read_bytes()
    lines = (tmp_path / "m" / "images.txt").read_text().splitlines()
    assert lines[1] == "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME"
    assert lines[3].startswith("# Number of images: 4, mean observations per image: ")
    assert not list((tmp_path / "m").glob(".*"))  # no temporary files left


def test_image_without_points_at_end_of_file(tmp_path):
    model = hand_model()
    colmap.write_model_text(model, tmp_path)
    text = (tmp_path / "images.txt").read_text()
    # The last image's (empty) POINTS2D line may be missing entirely.
    del model.images[4]
    colmap.write_model_text(model, tmp_path)
    (tmp_path / "images.txt").write_text((tmp_path / "images.txt").read_text().rstrip("\n"))
    back = colmap.read_model(tmp_path)
    assert sorted(im.name for im in back.images.values()) == ["a.jpg", "b.jpg", "c.jpg"]
    assert len(back.images[3].point3D_ids) == 0 and back.images[3].xys.shape == (0, 2)
    assert "sub dir/d.jpg" in text  # names with spaces survive


def test_binary_model_written_by_pycolmap(tmp_path):
    pycolmap = pytest.importorskip("pycolmap")
    model = hand_model()
    model.images[4].name = "sub/d.jpg"  # COLMAP's own text reader stops names at a space
    colmap.write_model_text(model, tmp_path / "txt")
    (tmp_path / "bin").mkdir()
    pycolmap.Reconstruction(str(tmp_path / "txt")).write_binary(str(tmp_path / "bin"))
    back = colmap.read_model(tmp_path / "bin")
    assert_models_equal(colmap.read_model(tmp_path / "txt"), back)


def test_known_rotation():
    # 90 degrees about z: x -> y.
    qvec = np.array([np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)])
    R = colmap.qvec_to_rotmat(qvec)
    np.testing.assert_allclose(R, [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-15)
    np.testing.assert_allclose(colmap.rotmat_to_qvec(R), qvec, atol=1e-15)
    # 180 degrees about x (trace -1, the hard case for trace-based formulas).
    np.testing.assert_allclose(colmap.rotmat_to_qvec(np.diag([1.0, -1, -1])), [0, 1, 0, 0], atol=1e-15)
    rng = np.random.default_rng(0)
    for q in rng.normal(size=(50, 4)):
        q = q / np.linalg.norm(q) * np.sign(q[0])
        R = colmap.qvec_to_rotmat(q)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)
        np.testing.assert_allclose(colmap.rotmat_to_qvec(R), q, atol=1e-12)


def test_ground_truth_overlap_by_hand():
    gt = colmap.ground_truth_from_model(hand_model())
    assert gt.names == ["a.jpg", "b.jpg", "c.jpg", "sub dir/d.jpg"]
    # a={3,4,5} b={1,2,3,4} c={} d={5,6}
    expected = np.array([
        [1, 2 / 3, 0, 1 / 2],
        [2 / 3, 1, 0, 0],
        [0, 0, 1, 0],
        [1 / 2, 0, 0, 1],
    ], np.float32)
    assert gt.overlap.dtype == np.float32
    np.testing.assert_allclose(gt.overlap, expected, rtol=1e-6)
    np.testing.assert_allclose(gt.K[0], [[90, 0, 50.5], [0, 90, 40.25], [0, 0, 1]])
    np.testing.assert_allclose(gt.K[1], [[500, 0, 320], [0, 510, 240], [0, 0, 1]])
    np.testing.assert_array_equal(gt.image_size, [[100, 80], [640, 480], [640, 480], [640, 480]])
    T = gt.T_w2cam[1]
    np.testing.assert_allclose(T[:3, :3], colmap.qvec_to_rotmat([0.5, 0.5, 0.5, 0.5]))
    np.testing.assert_allclose(T[:3, 3], [1.0, -2.0, 3.5])
    np.testing.assert_array_equal(T[3], [0, 0, 0, 1])


def test_no_points_means_no_overlap(tmp_path):
    model = hand_model()
    model.points3D = {}
    assert colmap.ground_truth_from_model(model).overlap is None
    colmap.write_model_text(model, tmp_path)
    (tmp_path / "points3D.txt").unlink()  # a model without the file at all
    assert colmap.ground_truth_from_model(colmap.read_model(tmp_path)).overlap is None


def test_missing_camera_is_named(tmp_path):
    model = hand_model()
    del model.cameras[2]
    colmap.write_model_text(model, tmp_path)
    with pytest.raises(colmap.ModelError, match=r"a\.jpg.*camera 2.*cameras\.txt"):
        colmap.read_model(tmp_path)


def test_distorted_camera_is_refused(tmp_path):
    model = hand_model()
    model.cameras[1] = colmap.Camera(1, "OPENCV", 640, 480, np.array([500.0, 510, 320, 240, 0.1, 0, 0, 0]))
    colmap.write_model_text(model, tmp_path)
    model = colmap.read_model(tmp_path)
    with pytest.raises(colmap.ModelError, match="OPENCV.*undistort"):
        colmap.ground_truth_from_model(model)
    gt = colmap.ground_truth_from_model(model, allow_distortion=True)
    np.testing.assert_allclose(gt.K[1], [[500, 0, 320], [0, 510, 240], [0, 0, 1]])


def test_bad_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no COLMAP model"):
        colmap.read_model(tmp_path)
    colmap.write_model_text(hand_model(), tmp_path)
    with open(tmp_path / "cameras.txt", "a") as f:
        f.write("7 PINHOLE 10 10 1 2 3\n")
    with pytest.raises(colmap.ModelError, match=r"cameras\.txt:\d+: PINHOLE has 4 parameters"):
        colmap.read_model(tmp_path)


def test_cli_writes_gt(tmp_path):
    colmap.write_model_text(hand_model(), tmp_path / "m")
    colmap.main(["gt", str(tmp_path / "m"), str(tmp_path / "gt.h5")])
    gt = read_gt(tmp_path / "gt.h5")
    assert gt.names == ["a.jpg", "b.jpg", "c.jpg", "sub dir/d.jpg"]
    assert gt.overlap[0, 1] == pytest.approx(2 / 3)
