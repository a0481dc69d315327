"""COLMAP models through pycolmap: ground truth from text and binary models, refused models, the source."""

import numpy as np
import pytest

from vop.datasets import colmap, open_scene
from vop.geometry import qvec_to_rotmat, rotmat_to_qvec


def hand_model() -> colmap.ModelArrays:
    """Four images; P(a) = {3,4,5}, P(b) = {1,2,3,4} (plus one observation of no point), P(c) = {},
    P(d) = {5,6}. Point ids follow the order of `xyz` (1-based)."""
    names = ["b.jpg", "a.jpg", "c.jpg", "sub/d.jpg"]
    K = np.array([[[500.0, 0, 320], [0, 510, 240], [0, 0, 1]], [[90.0, 0, 50.5], [0, 90, 40.25], [0, 0, 1]],
                  [[500.0, 0, 320], [0, 510, 240], [0, 0, 1]], [[500.0, 0, 320], [0, 510, 240], [0, 0, 1]]])
    size = np.array([[640, 480], [100, 80], [640, 480], [640, 480]])
    qvec = np.array([[0.5, 0.5, 0.5, 0.5], [1.0, 0, 0, 0], [1.0, 0, 0, 0], [1.0, 0, 0, 0]])
    tvec = np.array([[1.0, -2.0, 3.5], [0.0, 0, 0], [0.0, 0, 0], [0.0, 0, 0]])
    observed = {0: [1, 2, None, 3, 4], 1: [3, 4, 5], 2: [], 3: [5, None, 6]}  # per image: point id or None
    xys = [np.stack([np.arange(len(ids)) + 0.5, np.arange(len(ids)) * 0.25 + 1.0 / 3], 1).reshape(-1, 2)
           for ids in observed.values()]
    tracks = [np.array([(i, j) for i, ids in observed.items() for j, pid in enumerate(ids) if pid == p])
              for p in range(1, 7)]
    xyz = np.array([[p, -p / 3, 2.0] for p in range(1, 7)])
    rgb = np.array([[p, 2 * p, 255] for p in range(1, 7)], np.uint8)
    return colmap.ModelArrays(names, K, size, qvec, tvec, xys, xyz, rgb, tracks)


EXPECTED_OVERLAP = np.array([  # a={3,4,5} b={1,2,3,4} c={} d={5,6}, images sorted by name
    [1, 2 / 3, 0, 1 / 2],
    [2 / 3, 1, 0, 0],
    [0, 0, 1, 0],
    [1 / 2, 0, 0, 1],
], np.float32)


@pytest.mark.parametrize("binary", [False, True])
def test_ground_truth_by_hand_from_text_and_binary(tmp_path, binary):
    colmap.write_model(hand_model(), tmp_path, binary=binary)
    ext = ".bin" if binary else ".txt"
    assert [f.name for f in colmap.model_files(tmp_path)] == [f"cameras{ext}", f"images{ext}", f"points3D{ext}"]
    gt = colmap.ground_truth_from_model(colmap.read_model(tmp_path))
    assert gt.names == ["a.jpg", "b.jpg", "c.jpg", "sub/d.jpg"]
    assert gt.overlap.dtype == np.float32
    np.testing.assert_allclose(gt.overlap, EXPECTED_OVERLAP, rtol=1e-6)
    np.testing.assert_allclose(gt.K[0], [[90, 0, 50.5], [0, 90, 40.25], [0, 0, 1]])
    np.testing.assert_allclose(gt.K[1], [[500, 0, 320], [0, 510, 240], [0, 0, 1]])
    np.testing.assert_array_equal(gt.image_size, [[100, 80], [640, 480], [640, 480], [640, 480]])
    T = gt.T_w2cam[1]
    np.testing.assert_allclose(T[:3, :3], qvec_to_rotmat([0.5, 0.5, 0.5, 0.5]), atol=1e-15)
    np.testing.assert_allclose(T[:3, 3], [1.0, -2.0, 3.5])
    np.testing.assert_array_equal(T[3], [0, 0, 0, 1])


def test_text_model_values_round_trip_exactly(tmp_path):
    arrays = hand_model()
    arrays.tvec = arrays.tvec + 1 / 3  # not exactly representable in few digits
    colmap.write_model(arrays, tmp_path)
    gt = colmap.ground_truth_from_model(colmap.read_model(tmp_path))
    assert gt.T_w2cam[1, 0, 3] == arrays.tvec[0, 0]  # b.jpg, 17 significant digits in the text


def test_known_rotation():
    # 90 degrees about z: x -> y.
    qvec = np.array([np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)])
    R = qvec_to_rotmat(qvec)
    np.testing.assert_allclose(R, [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-15)
    np.testing.assert_allclose(rotmat_to_qvec(R), qvec, atol=1e-15)
    # 180 degrees about x (trace -1, the hard case for trace-based formulas).
    np.testing.assert_allclose(rotmat_to_qvec(np.diag([1.0, -1, -1])), [0, 1, 0, 0], atol=1e-15)
    rng = np.random.default_rng(0)
    for q in rng.normal(size=(50, 4)):
        q = q / np.linalg.norm(q) * np.sign(q[0])
        R = qvec_to_rotmat(q)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)
        np.testing.assert_allclose(rotmat_to_qvec(R), q, atol=1e-12)


def test_no_points_means_no_overlap(tmp_path):
    colmap.write_model(hand_model(), tmp_path)
    (tmp_path / "points3D.txt").write_text("# no points\n")
    assert colmap.ground_truth_from_model(colmap.read_model(tmp_path)).overlap is None
    (tmp_path / "points3D.txt").unlink()  # a model without the file at all
    assert [f.name for f in colmap.model_files(tmp_path)] == ["cameras.txt", "images.txt"]


def test_distorted_camera_is_refused(tmp_path):
    colmap.write_model(hand_model(), tmp_path)
    cameras = (tmp_path / "cameras.txt").read_text().replace("1 PINHOLE 640 480 500 510 320 240",
                                                               "1 OPENCV 640 480 500 510 320 240 0.1 0 0 0")
    assert "OPENCV" in cameras
    (tmp_path / "cameras.txt").write_text(cameras)
    with pytest.raises(colmap.ModelError, match=f"{tmp_path}.*OPENCV.*undistort"):
        colmap.ground_truth_from_model(colmap.read_model(tmp_path), tmp_path)


def test_bad_models_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no COLMAP model"):
        colmap.read_model(tmp_path)
    colmap.write_model(hand_model(), tmp_path)
    with open(tmp_path / "cameras.txt", "a") as f:
        f.write("7 PINHOLE 10 10 1 2 3\n")  # PINHOLE has 4 parameters
    with pytest.raises(colmap.ModelError, match=f"{tmp_path}: COLMAP cannot read this model"):
        colmap.read_model(tmp_path)


def test_colmap_source_finds_the_mapper_subfolder_and_checks_images(tmp_path):
    colmap.write_model(hand_model(), tmp_path / "sparse" / "0")
    for name in hand_model().names:
        (tmp_path / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "images" / name).write_bytes(b"")
    scene = open_scene("colmap", tmp_path)
    assert scene.model_dir == tmp_path / "sparse" / "0"
    assert [p.name for p in scene.input_files()] == ["cameras.txt", "images.txt", "points3D.txt"]
    np.testing.assert_allclose(scene.ground_truth().overlap, EXPECTED_OVERLAP, rtol=1e-6)
    (tmp_path / "images" / "sub" / "d.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"sub/d\.jpg: image of .* not found .*`images`"):
        scene.ground_truth()
