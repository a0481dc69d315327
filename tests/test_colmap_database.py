import numpy as np
import pycolmap
import pytest

from vop.colmap_database import (
    make_camera,
    read_counts,
    read_matches,
    to_colmap_descriptors,
    verify,
    write_database,
)


def two_view_correspondences(rng, n=300, outliers=60):
    """Keypoints of two calibrated views of random points, matches 0..n-1 true, the rest random."""
    K = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    X = np.c_[rng.uniform(-2, 2, (n, 2)), rng.uniform(4, 8, n)]
    c, s = np.cos(0.2), np.sin(0.2)
    R = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    X1 = X @ R.T + np.array([-1.0, 0.1, 0.2])
    # COLMAP pixels (corner at 0) -> hloc pixels (centre at 0), as the features files hold them
    k0 = (X / X[:, 2:]) @ K.T
    k1 = (X1 / X1[:, 2:]) @ K.T
    k0 = np.r_[k0[:, :2] - 0.5, rng.uniform(0, 480, (outliers, 2))]
    k1 = np.r_[k1[:, :2] - 0.5, rng.uniform(0, 480, (outliers, 2))]
    matches = np.stack([np.arange(n + outliers), np.r_[np.arange(n), n + rng.permutation(outliers)]], 1)
    return K, k0, k1, matches


@pytest.fixture
def small_db(tmp_path):
    rng = np.random.default_rng(0)
    K, k0, k1, m01 = two_view_correspondences(rng)
    names = ["b.jpg", "a.jpg", "c.jpg"]  # ids follow this order, not the names' order
    keypoints = {"b.jpg": k0, "a.jpg": k1, "c.jpg": rng.uniform(0, 400, (50, 2))}
    descriptors = {n: rng.random((len(k), 128)).astype(np.float32) for n, k in keypoints.items()}
    m_ca = np.stack([np.arange(20), np.arange(20)], 1)
    matches = {("b.jpg", "a.jpg"): m01, ("c.jpg", "a.jpg"): m_ca, ("a.jpg", "b.jpg"): m01[:, ::-1]}
    cameras = [(K, (640, 480)), (K, (640, 480)), (None, (400, 300))]
    path = tmp_path / "database.db"
    stats = write_database(path, names, cameras, keypoints, descriptors, matches)
    return path, stats, names, keypoints, descriptors, matches


def test_write_database_counts_and_one_pair(small_db):
    path, stats, names, keypoints, descriptors, matches = small_db
    counts = read_counts(path)
    assert counts == {"images": 3, "cameras": 3, "rigs": 3, "frames": 3, "keypoints": 360 + 360 + 50,
                      "descriptors": 770, "matched_pairs": 2, "matches": 360 + 20, "verified_pairs": 0,
                      "inlier_matches": 0}
    assert stats.duplicate_pairs == 1 and stats.pairs == 2  # (a, b) repeats (b, a)
    # Stored once per pair, read back in either order with the columns following the names
    np.testing.assert_array_equal(read_matches(path, "b.jpg", "a.jpg"), matches[("b.jpg", "a.jpg")])
    np.testing.assert_array_equal(read_matches(path, "a.jpg", "b.jpg"), matches[("b.jpg", "a.jpg")][:, ::-1])
    np.testing.assert_array_equal(read_matches(path, "c.jpg", "a.jpg"), matches[("c.jpg", "a.jpg")])
    assert len(read_matches(path, "b.jpg", "c.jpg")) == 0

    with pycolmap.Database.open(path) as db:
        image = db.read_image_with_name("b.jpg")
        assert image.image_id == 1 and image.camera_id == 1 and image.frame_id == 1
        # hloc's pixel centre at (0, 0) -> COLMAP's corner at (0, 0)
        np.testing.assert_allclose(db.read_keypoints(1)[:, :2], keypoints["b.jpg"] + 0.5, atol=1e-4)
        desc = db.read_descriptors(2).data
        assert desc.dtype == np.uint8 and desc.shape == (360, 128)
        np.testing.assert_array_equal(desc, to_colmap_descriptors(descriptors["a.jpg"]))
        pinhole, guess = db.read_camera(1), db.read_camera(3)
        assert pinhole.model_name == "PINHOLE" and pinhole.has_prior_focal_length
        assert guess.model_name == "SIMPLE_RADIAL" and not guess.has_prior_focal_length
        np.testing.assert_allclose(guess.params, [1.2 * 400, 200, 150, 0])
        assert db.read_frame(3).rig_id == 3


def test_descriptors_as_colmap_stores_sift():
    rng = np.random.default_rng(1)
    d = rng.random((5, 128)).astype(np.float32)
    unit = d / np.linalg.norm(d, axis=1, keepdims=True)
    out = to_colmap_descriptors(d * 7.0)  # normalised first
    np.testing.assert_array_equal(out, np.minimum(255, np.round(512 * unit)).astype(np.uint8))
    with pytest.raises(ValueError, match="128"):
        to_colmap_descriptors(d.T)


def test_verify_keeps_the_true_matches(small_db):
    path, *_ = small_db
    stats = verify(path, [("b.jpg", "a.jpg"), ("c.jpg", "a.jpg")])
    assert stats.verified_pairs == 1  # c-a: random keypoints, no geometry
    inliers = read_matches(path, "b.jpg", "a.jpg", verified=True)
    true = inliers[:, 0] < 300
    assert len(inliers) >= 290 and true.mean() > 0.97, (len(inliers), true.mean())
    assert read_counts(path)["inlier_matches"] == stats.inlier_matches


def test_write_database_errors_name_the_problem(tmp_path):
    kp = {"a": np.zeros((3, 2)), "b": np.zeros((4, 2))}
    cams = [(None, (10, 10))] * 2
    with pytest.raises(IndexError, match=r"\(a, b\)"):
        write_database(tmp_path / "x.db", ["a", "b"], cams, kp, matches={("a", "b"): np.array([[0, 4]])})
    with pytest.raises(KeyError, match="'z'"):
        write_database(tmp_path / "x.db", ["a", "b"], cams, kp, matches={("a", "z"): np.array([[0, 0]])})
    with pytest.raises(ValueError, match="itself"):
        write_database(tmp_path / "x.db", ["a", "b"], cams, kp, matches={("a", "a"): np.array([[0, 0]])})
    with pytest.raises(KeyError, match="no keypoints"):
        write_database(tmp_path / "x.db", ["a", "b", "c"], cams + cams[:1], kp)
    assert not (tmp_path / "x.db").exists()  # nothing half-written is left behind
    with pytest.raises(ValueError, match="pinhole"):
        make_camera(np.eye(4), (10, 10))
