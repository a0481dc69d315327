import h5py
import numpy as np
import pytest

from vop import labels
from vop.cli import main as vop_main
from vop.conf import LabelsConf
from vop.datasets import eth3d, open_scene, synthetic
from vop.io import read_gt

W, H, F, D = 320, 256, 250.0, 4.0  # image size, focal length, distance of the plane z = D
PATCH_W, PATCH_H = W // 16, H // 16


def K_matrix(f=F, w=W, h=H):
    return np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]])


def pose(center):
    """World-to-camera of a camera at `center` looking down +z (no rotation)."""
    T = np.eye(4)
    T[:3, 3] = -np.asarray(center, np.float64)
    return T


def plane_depth(distance, w=W, h=H):
    return np.full((h, w), distance, np.float32)


def shifted_pair(shift_patches=2):
    """A at the origin, B moved sideways so that the plane's image moves left by `shift_patches` patches."""
    shift_px = shift_patches * W / 16
    T_b = pose([shift_px * D / F, 0, 0])
    return (plane_depth(D), K_matrix(), pose([0, 0, 0])), (plane_depth(D), K_matrix(), T_b)


def patch(r, c):
    return r * 16 + c


def test_translation_by_two_patches_gives_exact_positives():
    (da, Ka, Ta), (db, Kb, Tb) = shifted_pair(2)
    counts = labels.patch_correspondences(da, Ka, Ta, db, Kb, Tb)
    assert counts.shape == (256, 256)
    expected = np.zeros((256, 256), np.int64)
    for r in range(16):
        for c in range(2, 16):
            expected[patch(r, c), patch(r, c - 2)] = PATCH_W * PATCH_H
    np.testing.assert_array_equal(counts, expected)

    positives = labels.mutual_positives(counts)
    want = sorted((patch(r, c), patch(r, c - 2)) for r in range(16) for c in range(2, 16))
    assert sorted(map(tuple, positives.tolist())) == want
    # the two columns of A that leave B's image have no partner
    assert not np.isin(positives[:, 0], [patch(r, c) for r in range(16) for c in (0, 1)]).any()

    # The other way round: B's columns c match A's columns c + 2.
    back = labels.mutual_positives(labels.patch_correspondences(db, Kb, Tb, da, Ka, Ta))
    assert sorted(map(tuple, back.tolist())) == sorted((b, a) for a, b in want)


def test_stride_subsamples_without_changing_positives():
    (da, Ka, Ta), (db, Kb, Tb) = shifted_pair(2)
    full = labels.patch_correspondences(da, Ka, Ta, db, Kb, Tb, stride=1)
    sub = labels.patch_correspondences(da, Ka, Ta, db, Kb, Tb, stride=2)
    assert sub.sum() * 4 == full.sum()
    np.testing.assert_array_equal(labels.mutual_positives(sub), labels.mutual_positives(full))


def test_pixel_centre_convention():
    # Shift by half a patch plus a quarter pixel: with centres at u + 0.5 (COLMAP) pixel u lands at
    # u + 0.25 - PATCH_W / 2; taking the centre at u would move one column of pixels across the border.
    shift_px = PATCH_W / 2 + 0.25
    T_b = pose([shift_px * D / F, 0, 0])
    counts = labels.patch_correspondences(plane_depth(D), K_matrix(), pose([0, 0, 0]),
                                          plane_depth(D), K_matrix(), T_b)
    land = np.arange(PATCH_W, 2 * PATCH_W) + 0.5 - shift_px  # landing x of the pixels of column patch 1
    a = patch(5, 1)
    assert counts[a, patch(5, 0)] == PATCH_H * np.sum(land < PATCH_W) == PATCH_H * PATCH_W // 2
    assert counts[a, patch(5, 1)] == PATCH_H * np.sum(land >= PATCH_W)


def test_zoom_maps_each_patch_into_its_scaled_block():
    # B halfway to the plane sees A's central half magnified 2x about the principal point (the centre).
    da, Ka, Ta = plane_depth(D), K_matrix(), pose([0, 0, 0])
    db, Kb, Tb = plane_depth(D / 2), K_matrix(), pose([0, 0, D / 2])
    counts = labels.patch_correspondences(da, Ka, Ta, db, Kb, Tb)
    assert counts.sum() == (W // 2) * (H // 2)  # exactly A's central half lands in B
    for a in np.flatnonzero(counts.sum(1)):
        r, c = divmod(a, 16)
        assert 4 <= r < 12 and 4 <= c < 12
        block = [patch(2 * r - 8 + i, 2 * c - 8 + j) for i in (0, 1) for j in (0, 1)]
        assert set(np.flatnonzero(counts[a])) == set(block)
        np.testing.assert_array_equal(counts[a, block], PATCH_W * PATCH_H // 4)
    positives = labels.mutual_positives(counts)
    assert len(positives) == 64  # one of the four tied partners of each central patch, one to one
    for a, b in positives:
        (r, c), (rb, cb) = divmod(a, 16), divmod(b, 16)
        assert rb // 2 == r - 4 and cb // 2 == c - 4
    assert len(set(positives[:, 1])) == 64


def test_occluder_in_b_removes_the_pixels_landing_on_it():
    (da, Ka, Ta), (db, Kb, Tb) = shifted_pair(2)
    clear = labels.patch_correspondences(da, Ka, Ta, db, Kb, Tb)
    occluded = db.copy()
    y0, y1, x0, x1 = 37, 101, 45, 133  # not aligned with the patch grid
    occluded[y0:y1, x0:x1] = D / 2  # something in front of the plane, seen by B only
    counts = labels.patch_correspondences(da, Ka, Ta, occluded, Kb, Tb)
    hidden = np.zeros((H, W), bool)
    hidden[y0:y1, x0:x1] = True
    hidden_per_patch = hidden.reshape(16, PATCH_H, 16, PATCH_W).sum((1, 3)).ravel()  # per patch of B
    assert clear.sum() - counts.sum() == hidden.sum()
    # B patch b receives its pixels from A patch b + 2 columns only: it loses exactly its hidden pixels.
    np.testing.assert_array_equal(clear.sum(0) - counts.sum(0), hidden_per_patch)
    full_hidden = np.flatnonzero(hidden_per_patch == PATCH_W * PATCH_H)
    assert len(full_hidden) and counts[:, full_hidden].sum() == 0
    assert not np.isin(labels.mutual_positives(counts)[:, 1], full_hidden).any()

    # Invalid depth (inf) in A: those pixels are not used at all.
    holes = da.copy()
    holes[:, :PATCH_W * 8] = np.inf
    counts = labels.patch_correspondences(holes, Ka, Ta, db, Kb, Tb)
    assert counts.reshape(16, 16, 256)[:, :8].sum() == 0
    assert counts.sum() == 16 * 8 * PATCH_W * PATCH_H


def test_points_behind_b_are_dropped():
    # B turned around (looking down -z): the plane is behind it, nothing may match even if it "projects".
    (da, Ka, Ta), (db, Kb, _) = shifted_pair(0)
    T_back = np.diag([-1.0, 1.0, -1.0, 1.0])  # 180 degrees about y
    assert labels.patch_correspondences(da, Ka, Ta, db, Kb, T_back).sum() == 0


def test_mutual_positives_by_hand():
    counts = np.array([
        [5, 1, 0, 0],  # a0 -> b0, but b0 -> a1 (7 > 5): not mutual
        [7, 0, 2, 0],  # a1 <-> b0
        [0, 3, 4, 0],  # a2 <-> b2 (b2's column: 2 < 4)
        [0, 6, 0, 0],  # a3 <-> b1 (b1's column: 1, 3 < 6); b3 has no partner
        [0, 0, 0, 0],  # a4: nothing, although argmax points at b0
    ])
    np.testing.assert_array_equal(labels.mutual_positives(counts), [[1, 0], [2, 2], [3, 1]])
    assert labels.mutual_positives(np.zeros((3, 3), int)).shape == (0, 2)


def test_sample_pairs_bins_order_and_determinism():
    rng = np.random.default_rng(3)
    n = 40
    overlap = rng.choice([0.0, 0.0, 0.05, 0.2, 0.4, 0.6, 0.8], size=(n, n))
    overlap = np.triu(overlap, 1) + np.triu(overlap, 1).T
    np.fill_diagonal(overlap, 1.0)
    bins = ((0.1, 0.3), (0.3, 0.5), (0.5, 0.7))
    pairs, which = labels.sample_pairs(overlap, bins, pairs_per_bin=30, num_negative=25, seed=7)
    assert pairs.shape == (len(which), 2) and (pairs[:, 0] < pairs[:, 1]).all()
    assert len({tuple(p) for p in pairs.tolist()}) == len(pairs)
    o = overlap[pairs[:, 0], pairs[:, 1]]
    for k, (lo, hi) in enumerate(bins):
        assert (which == k).sum() == 30
        assert ((o[which == k] >= lo) & (o[which == k] < hi)).all()
    assert (which == -1).sum() == 25 and (o[which == -1] == 0).all()
    assert not np.isin(o, [0.05, 0.8]).any()  # outside every bin and not negative

    again = labels.sample_pairs(overlap, bins, pairs_per_bin=30, num_negative=25, seed=7)
    np.testing.assert_array_equal(again[0], pairs)
    np.testing.assert_array_equal(again[1], which)
    other = labels.sample_pairs(overlap, bins, pairs_per_bin=30, num_negative=25, seed=8)
    assert not np.array_equal(other[0], pairs)

    # Fewer candidates than asked: all of them.
    small = np.array([[1, 0.2, 0], [0.2, 1, 0.6], [0, 0.6, 1]])
    pairs, which = labels.sample_pairs(small, bins, pairs_per_bin=10, num_negative=10)
    assert sorted(zip(map(tuple, pairs.tolist()), which.tolist())) == [((0, 1), 0), ((0, 2), -1), ((1, 2), 2)]


@pytest.fixture(scope="module")
def synthetic_scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("labels")
    synthetic.generate_scene(root / "scene", seed=0, num_images=10, width=160, height=120)
    scene = open_scene("synthetic", root, "scene")
    scene.write_ground_truth(root / "gt.h5")
    return scene, root / "gt.h5"


def test_scene_labels_on_a_synthetic_scene(synthetic_scene, tmp_path):
    scene, gt_h5 = synthetic_scene
    out = tmp_path / "labels.h5"
    bins = ((0.05, 0.4), (0.4, 1.01))
    conf = LabelsConf(pairs_per_bin=50, num_negative=50, seed=0, stride=1)
    written = labels.scene_labels(scene, gt_h5, out, conf, bins=bins)
    got = labels.read_labels(out)
    gt = read_gt(gt_h5)
    assert got["names"] == gt.names
    for key in ("pairs", "bins", "offsets", "positives", "overlap"):
        np.testing.assert_array_equal(got[key], written[key])
    assert got["pairs"].dtype == np.int32 and got["bins"].dtype == np.int8
    assert got["offsets"].dtype == np.int64 and got["positives"].dtype == np.int16
    assert got["attrs"]["grid"] == 16 and got["attrs"]["stride"] == 1 and got["attrs"]["seed"] == 0
    m = len(got["pairs"])
    assert got["offsets"].shape == (m + 1,) and got["offsets"][-1] == len(got["positives"])
    np.testing.assert_allclose(got["overlap"], gt.overlap[got["pairs"][:, 0], got["pairs"][:, 1]])

    num = np.diff(got["offsets"])
    low, high, neg = (num[got["bins"] == k] for k in (0, 1, -1))
    assert len(low) and len(high) and len(neg)
    assert high.mean() > low.mean() > neg.mean()
    assert neg.max() <= 2  # non-overlapping pairs share (almost) no visible surface
    for k in range(m):
        p = labels.pair_positives(got, k)
        assert len(p) == num[k] and ((p >= 0) & (p < 256)).all()
        assert len(set(p[:, 0])) == len(p) and len(set(p[:, 1])) == len(p)  # one to one

    # A pair's cached positives are what the functions give for it directly.
    k = int(np.argmax(num))
    i, j = got["pairs"][k]
    depth = [scene.depth(gt.names[x], (160, 120)) for x in (i, j)]
    counts = labels.patch_correspondences(depth[0], gt.K[i], gt.T_w2cam[i], depth[1], gt.K[j], gt.T_w2cam[j])
    np.testing.assert_array_equal(labels.pair_positives(got, k), labels.mutual_positives(counts))

    with h5py.File(out) as f:
        assert set(f.keys()) == {"names", "pairs", "bins", "offsets", "positives", "overlap"}


def test_scene_labels_names_missing_depth(synthetic_scene, tmp_path):
    _, gt_h5 = synthetic_scene
    (tmp_path / "scene" / eth3d.DEPTH_SUBDIR).mkdir(parents=True)  # a dataset without depth maps
    scene = open_scene("eth3d", tmp_path, "scene")
    out = tmp_path / "labels.h5"
    with pytest.raises(FileNotFoundError, match=r"IMG_\d+\.JPG.*training labels need ground-truth depth"):
        labels.scene_labels(scene, gt_h5, out, LabelsConf(pairs_per_bin=5, num_negative=5))
    assert not out.exists() and not list(tmp_path.glob(".labels.h5*"))


def test_cli(synthetic_scene, tmp_path):
    scene, gt_h5 = synthetic_scene
    out = tmp_path / "labels.h5"
    assert vop_main(["labels", "--source", "synthetic", "--root", str(scene.root), "--scene", "scene", "--gt",
                     str(gt_h5), "--out", str(out), "--pairs-per-bin", "3", "--num-negative", "2", "--seed", "1",
                     "--stride", "2"]) == 0
    got = labels.read_labels(out)
    assert (got["bins"] == -1).sum() <= 2 and np.bincount(got["bins"][got["bins"] >= 0]).max() <= 3
    assert got["attrs"]["stride"] == 2 and got["attrs"]["pairs_per_bin"] == 3
    with pytest.raises(SystemExit):
        vop_main(["labels", "--help"])
