"""Ground truth from tracks: posed models without 3D points get their tracks triangulated by the ground-truth
stage (recorded in gt.h5), and patch labels come from tracks as they come from depth."""

import numpy as np
import pytest
from walk_scene import render_walk

from vop import labels
from vop.conf import LabelsConf, TriangulationConf
from vop.datasets import colmap, open_scene, synthetic
from vop.geometry import covisibility_overlap, rotmat_to_qvec
from vop.io import read_gt, write_gt
from vop.local_features import extract_local_features

# --- labels from tracks ----------------------------------------------------------------------------------


def test_track_correspondences_by_hand():
    # Image A 160x160 (patches of 10 px, centres at 5, 15, ...), image B 320x160 (20x10 px, centres at x = 10,
    # 30, ...). Points 1-3 sit on patch centres, so each counts once, where it is; point 4 lies halfway
    # between two columns of A and splits in halves; point 9 is seen by A only.
    xy_a = np.array([[5, 5], [15, 5], [155, 155], [10, 25], [80, 80]], np.float32)
    ids_a = np.array([1, 2, 3, 4, 9])
    xy_b = np.array([[30, 5], [310, 155], [50, 5], [10, 25]], np.float32)
    ids_b = np.array([1, 3, 2, 4])
    counts = labels.track_correspondences(xy_a, ids_a, (160, 160), xy_b, ids_b, (320, 160))
    expected = np.zeros((256, 256))
    expected[0, 1] = expected[1, 2] = expected[255, 255] = 1.0  # point 1: A (0,0) - B (0,1); 2; 3: corners
    expected[32, 32] = expected[33, 32] = 0.5  # point 4: A row 2, columns 0 and 1 - B row 2, column 0
    np.testing.assert_allclose(counts, expected)
    positives = labels.mutual_positives(counts)  # one to one: B's patch 32 keeps A's 32 (ties: lowest index)
    assert sorted(map(tuple, positives.tolist())) == [(0, 1), (1, 2), (32, 32), (255, 255)]


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    """A rendered scene in the ETH3D layout: depth maps and the model's own tracks (80 points per m^2)."""
    root = tmp_path_factory.mktemp("room")
    synthetic.generate_scene(root / "room", seed=3, num_images=24, width=640, height=480)
    scene = open_scene("eth3d", root, "room")
    scene.write_ground_truth(root / "gt.h5")
    return scene, root


def test_labels_from_tracks_agree_with_labels_from_depth(room):
    scene, root = room
    conf = LabelsConf(pairs_per_bin=10, num_negative=5, stride=2)
    depth = labels.scene_labels(scene, root / "gt.h5", root / "depth.h5", conf.replace(geometry="depth"))
    tracks = labels.scene_labels(scene, root / "gt.h5", root / "tracks.h5", conf.replace(geometry="tracks"))
    assert labels.read_labels(root / "tracks.h5")["attrs"]["source"] == "tracks"
    assert depth["attrs"]["source"] == "depth"
    np.testing.assert_array_equal(depth["pairs"], tracks["pairs"])  # binned by the same overlap
    gt = read_gt(root / "gt.h5")
    shared = num_depth = num_tracks = overlapping = 0
    for m, (i, j) in enumerate(depth["pairs"]):
        by_depth = {tuple(p) for p in labels.pair_positives(depth, m).tolist()}
        by_tracks = labels.pair_positives(tracks, m)
        shared += len(by_depth & {tuple(p) for p in by_tracks.tolist()})
        num_depth, num_tracks = num_depth + len(by_depth), num_tracks + len(by_tracks)
        counts = labels.patch_correspondences(scene.depth(gt.names[i], gt.image_size[i]), gt.K[i], gt.T_w2cam[i],
                                              scene.depth(gt.names[j], gt.image_size[j]), gt.K[j], gt.T_w2cam[j],
                                              stride=2)
        overlapping += int((counts[by_tracks[:, 0], by_tracks[:, 1]] > 0).sum())
    # Measured: 1290 positives from tracks, 1727 from depth over 35 pairs; 62.5% of the tracks' positives are
    # exactly depth positives (the depth labels' mutual best of a few hundred pixels against the tracks' of
    # a few points: neighbouring patches often share nearly as much), and 99.9% of them are patch pairs that
    # share surface by depth.
    assert num_tracks > 0.6 * num_depth
    assert shared / num_tracks > 0.55, (shared, num_tracks)
    assert overlapping / num_tracks > 0.97, (overlapping, num_tracks)


def test_labels_without_tracks_or_depth_are_refused(room, tmp_path):
    scene, root = room
    no_tracks = tmp_path / "gt.h5"
    gt = scene.ground_truth()
    gt.tracks = None
    write_gt(no_tracks, gt)
    with pytest.raises(ValueError, match="no tracks of 3D points"):
        labels.scene_labels(scene, no_tracks, tmp_path / "l.h5", LabelsConf(geometry="tracks"))


# --- the ground-truth stage triangulates models without points --------------------------------------------


@pytest.fixture(scope="module")
def walk_model(tmp_path_factory):
    """A connected synthetic capture written as a COLMAP model with poses and no 3D points, as mary_rose is."""
    out = tmp_path_factory.mktemp("walk")
    walk = render_walk(out, seed=5, num_images=10)
    gt = walk.gt
    n = len(gt.names)
    qvec = np.stack([rotmat_to_qvec(T[:3, :3]) for T in gt.T_w2cam])
    arrays = colmap.ModelArrays(gt.names, gt.K, gt.image_size, qvec, gt.T_w2cam[:, :3, 3], [np.zeros((0, 2))] * n,
                                np.zeros((0, 3)), np.zeros((0, 3), np.uint8), [])
    colmap.write_model(arrays, out / "sparse")
    return walk, out


def test_model_without_points_gets_triangulated_tracks(walk_model):
    walk, out = walk_model
    scene = open_scene("colmap", out)
    assert scene.needs_tracks() and scene.image_names() == walk.gt.names
    extract_local_features(scene.image_dir, scene.image_names(), out / "local_features.h5")
    scene.write_ground_truth(out / "gt.h5", local_features=out / "local_features.h5",
                             conf=TriangulationConf(neighbours=20))
    gt = read_gt(out / "gt.h5", tracks=True)
    assert gt.overlap_source == "tracks"
    info = gt.overlap_info
    assert info["pairs"] == 45 and info["images_with_points"] == 10 and info["points"] > 1000, info
    assert info["mean_reprojection_error"] < 1.0 and info["neighbours"] == 20
    # the overlap is the co-visibility of the stored tracks, and it follows the true tracks' overlap
    np.testing.assert_allclose(gt.overlap, covisibility_overlap(gt.tracks.point_sets()))
    upper = np.triu_indices(10, 1)
    assert np.corrcoef(gt.overlap[upper], walk.gt.overlap[upper])[0, 1] > 0.75
    # every image observes points, inside the image
    for i in range(10):
        xy = gt.tracks.xy[i]
        assert len(xy) > 100 and (xy >= 0).all() and (xy < gt.image_size[i]).all()
    # the labels of a posed scene without depth come from these tracks
    result = labels.scene_labels(scene, out / "gt.h5", out / "labels.h5", LabelsConf(pairs_per_bin=5, num_negative=2))
    assert result["attrs"]["source"] == "tracks"
    overlapping = result["bins"] >= 0
    sizes = np.diff(result["offsets"])
    assert overlapping.any() and (sizes[overlapping] > 0).all() and (sizes[~overlapping] == 0).all()
