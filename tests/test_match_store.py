"""The scene's matches store (vop.match_store): hloc's layout, each unordered pair once, reuse, stale checks;
and the pose stage reading it, one estimate per unordered pair."""

import math

import cv2
import h5py
import numpy as np
import pytest

import vop.match_store as store
import vop.pose as pose
from vop.conf import MatchingConf, PoseConf
from vop.geometry import relative_pose_error
from vop.io import GroundTruth, read_pairs, write_gt, write_pairs
from vop.local_features import extract_local_features, read_local_features
from vop.match_store import build_store, canonical_pair, names_to_pair, read_matches, stored_pairs, update_store
from vop.matching import match_descriptors
from vop.pose import estimate_poses
from vop.utils import l2_normalize


def features_of(rng, sizes):
    """Local features with shared descriptors between images (so that pairs match)."""
    base = l2_normalize(rng.random((300, 128)).astype(np.float32) ** 4)
    out = {}
    for name, n in sizes.items():
        idx = rng.choice(len(base), n, replace=False)
        desc = l2_normalize(base[idx] + rng.normal(0, 0.02, (n, 128)).astype(np.float32))
        out[name] = {"keypoints": rng.uniform(0, 300, (n, 2)),
                     "descriptors": desc.astype(np.float16).astype(np.float32), "image_size": np.array([320, 240])}
    return out


def hloc_get_matches(path, name0, name1):
    """hloc's reader (hloc.utils.io.get_matches): the pair in either order, reversed when stored (1, 0)."""
    with h5py.File(path, "r") as f:
        key, reverse = names_to_pair(name0, name1), False
        if key not in f:
            key, reverse = names_to_pair(name1, name0), True
        matches = f[key]["matches0"][()]
    idx = np.where(matches != -1)[0]
    m = np.stack([idx, matches[idx]], -1)
    return np.flip(m, -1) if reverse else m


def test_each_unordered_pair_is_stored_once_in_hlocs_layout(tmp_path):
    feats = features_of(np.random.default_rng(0), {"b/y.jpg": 120, "a/x.jpg": 100, "c.jpg": 80})
    pairs = [("b/y.jpg", "a/x.jpg"), ("a/x.jpg", "b/y.jpg"), ("c.jpg", "a/x.jpg")]
    counts = update_store(tmp_path / "m.h5", pairs, feats)
    assert counts == {"needed": 2, "reused": 0, "shared": 0, "matched": 2, "dropped": 0}
    assert stored_pairs(tmp_path / "m.h5") == [("a/x.jpg", "b/y.jpg"), ("a/x.jpg", "c.jpg")]
    with h5py.File(tmp_path / "m.h5", "r") as f:
        g = f["a-x.jpg/b-y.jpg"]  # hloc's key: names sorted, "/" -> "-"
        assert g["matches0"].shape == (100,) and g["matches0"].dtype == np.int32
        assert g["matching_scores0"].dtype == np.float16
        assert "b-y.jpg" not in f  # not twice
    for name0, name1 in pairs:
        expected = match_descriptors(feats[canonical_pair(name0, name1)[0]]["descriptors"],
                                     feats[canonical_pair(name0, name1)[1]]["descriptors"], 0.8)
        if canonical_pair(name0, name1) != (name0, name1):
            expected = expected[:, ::-1]
        got = hloc_get_matches(tmp_path / "m.h5", name0, name1)
        assert len(got) > 10
        np.testing.assert_array_equal(np.sort(got, axis=0), np.sort(expected, axis=0))
        read = read_matches(tmp_path / "m.h5", [(name0, name1)], feats)
        np.testing.assert_array_equal(np.sort(store.oriented(read, name0, name1), axis=0), np.sort(got, axis=0))


def test_update_matches_only_the_pairs_it_lacks_and_drops_the_rest(tmp_path, monkeypatch):
    feats = features_of(np.random.default_rng(1), {n: 90 for n in "abcde"})
    asked = []
    real = store.match_pairs

    def recording(descriptors, pairs, ratio, device=None):
        asked.append(list(pairs))
        return real(descriptors, pairs, ratio, device=device)

    monkeypatch.setattr(store, "match_pairs", recording)
    path = tmp_path / "m.h5"
    update_store(path, [("a", "b"), ("b", "c"), ("c", "a")], feats)
    with h5py.File(path, "r") as f:
        before = f["a/b"]["matches0"][()]
    # another method adds (d, a) and (b, a): only (a, d) is new
    counts = update_store(path, [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a"), ("b", "a")], feats)
    assert counts == {"needed": 4, "reused": 3, "shared": 0, "matched": 1, "dropped": 0}
    assert asked[-1] == [("a", "d")]
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["a/b"]["matches0"][()], before)
    # a method's pairs changed: (b, c) is no longer needed by anyone, (d, e) is
    counts = update_store(path, [("a", "b"), ("c", "a"), ("d", "a"), ("e", "d")], feats)
    assert counts == {"needed": 4, "reused": 3, "shared": 0, "matched": 1, "dropped": 1}
    assert asked[-1] == [("d", "e")]
    assert stored_pairs(path) == [("a", "b"), ("a", "c"), ("a", "d"), ("d", "e")]
    # one image's features changed (re-extracted differently): its pairs only are matched again
    feats["a"] = {**feats["a"], "keypoints": feats["a"]["keypoints"] + 1.0}
    counts = update_store(path, [("a", "b"), ("c", "a"), ("d", "a"), ("e", "d")], feats)
    assert counts["matched"] == 3 and sorted(asked[-1]) == [("a", "b"), ("a", "c"), ("a", "d")]
    # another matching conf: nothing is reused
    counts = update_store(path, [("a", "b"), ("d", "e")], feats, MatchingConf(ratio=0.7))
    assert counts == {"needed": 2, "reused": 0, "shared": 0, "matched": 2, "dropped": 4}


def test_a_scenes_shards_share_their_pairs_and_take_turns(tmp_path, monkeypatch):
    feats = features_of(np.random.default_rng(5), {n: 90 for n in "abcd"})
    for name in "abcd":
        feats[name]["image_size"] = np.array([320, 240])
    local = tmp_path / "local.h5"
    from vop.io import write_image_groups

    write_image_groups(local, {n: {"keypoints": f["keypoints"].astype(np.float32),
                                   "descriptors": f["descriptors"].T.astype(np.float16), "image_size": f["image_size"]}
                               for n, f in feats.items()})
    scene = tmp_path / "scene"
    write_pairs(tmp_path / "m1.txt", [("a", "b"), ("b", "c")])
    write_pairs(tmp_path / "m2.txt", [("c", "b"), ("b", "a"), ("d", "a")])
    asked = []
    real = store.match_pairs
    monkeypatch.setattr(store, "match_pairs", lambda d, pairs, r, device=None: asked.append(list(pairs)) or
                        real(d, pairs, r, device=device))
    first = store.build_scene_shard(scene / "m1" / "matches.h5", [tmp_path / "m1.txt"], local)
    second = store.build_scene_shard(scene / "m2" / "matches.h5", [tmp_path / "m2.txt"], local)
    assert first == {"needed": 2, "reused": 0, "shared": 0, "matched": 2, "dropped": 0}
    assert second == {"needed": 3, "reused": 0, "shared": 2, "matched": 1, "dropped": 0} and asked[-1] == [("a", "d")]
    with h5py.File(scene / "m1" / "matches.h5", "r") as f1, h5py.File(scene / "m2" / "matches.h5", "r") as f2:
        np.testing.assert_array_equal(f1["a/b"]["matches0"][()], f2["a/b"]["matches0"][()])
    # a shard of another conf is no cache
    third = store.build_scene_shard(scene / "m3" / "matches.h5", [tmp_path / "m1.txt"], local, MatchingConf(ratio=0.9))
    assert third["shared"] == 0 and third["matched"] == 2
    assert (scene / ".matches.h5.lock").exists()


def test_a_stale_store_is_never_read(tmp_path):
    feats = features_of(np.random.default_rng(2), {n: 80 for n in "abc"})
    path = tmp_path / "m.h5"
    update_store(path, [("a", "b"), ("b", "c")], feats)
    assert set(read_matches(path, [("b", "a"), ("c", "b")], feats)) == {("a", "b"), ("b", "c")}
    with pytest.raises(ValueError, match=r"m\.h5: cannot be read: it was written with ratio 0\.8.*0\.9.*rerun"):
        read_matches(path, [("a", "b")], feats, MatchingConf(ratio=0.9))
    with pytest.raises(KeyError, match=r"pair \('a', 'c'\) is not in the store.*rerun its rule"):
        read_matches(path, [("c", "a")], feats)
    changed = {**feats, "b": {**feats["b"], "descriptors": feats["b"]["descriptors"][::-1].copy()}}
    with pytest.raises(ValueError, match=r"pair \('a', 'b'\) was matched from other local features than local\.h5"):
        read_matches(path, [("a", "b")], changed, local_features_h5="local.h5")
    with h5py.File(path, "a") as f:
        f.attrs["format"] = "vop-matches/0"
    with pytest.raises(ValueError, match="format 'vop-matches/0'"):
        read_matches(path, [("a", "b")], feats)
    assert update_store(path, [("a", "b")], feats)["reused"] == 0  # not reused either


def test_names_that_share_an_hloc_key_are_refused(tmp_path):
    feats = features_of(np.random.default_rng(3), {"a/b.jpg": 40, "a-b.jpg": 40, "c.jpg": 40})
    with pytest.raises(ValueError, match=r"same matches.h5 key 'a-b.jpg/c.jpg'.*rename one"):
        update_store(tmp_path / "m.h5", [("a/b.jpg", "c.jpg"), ("a-b.jpg", "c.jpg")], feats)
    assert not (tmp_path / "m.h5").exists()


# ---------------------------------------------------------------------------------------------------
# The pose stage on the store (the small scene of test_pose.py)


@pytest.fixture
def small_scene(tmp_path):
    """Two views of a texture 7 px apart (sideways motion) and a textureless image, with SIFT."""
    rng = np.random.default_rng(4)
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    noise = rng.uniform(0, 255, (30, 40)).astype(np.uint8)
    base = cv2.GaussianBlur(cv2.resize(noise, (320, 240), interpolation=cv2.INTER_NEAREST), (3, 3), 0)
    cv2.imwrite(str(images / "sub" / "tex0.png"), base)
    cv2.imwrite(str(images / "tex1.png"), np.roll(base, 7, axis=1))
    cv2.imwrite(str(images / "grey.png"), np.full((240, 320), 128, np.uint8))
    names = ["sub/tex0.png", "tex1.png", "grey.png"]
    K = np.array([[300.0, 0, 160], [0, 300, 120], [0, 0, 1]])
    T = np.stack([np.eye(4)] * 3)
    T[1, 0, 3] = -0.1
    gt = GroundTruth(names, np.stack([K] * 3), T, np.tile([320, 240], (3, 1)), None)
    extract_local_features(images, names, tmp_path / "local.h5", num_workers=1)
    return tmp_path, images, names, gt, tmp_path / "local.h5"


def test_pose_estimates_each_unordered_pair_once_and_inverts_for_the_other(small_scene, monkeypatch):
    root, images, names, gt, local = small_scene
    pairs = [("tex1.png", "sub/tex0.png"), ("sub/tex0.png", "tex1.png"), ("grey.png", "tex1.png"),
             ("tex1.png", "grey.png")]
    write_pairs(root / "pairs.txt", pairs)
    build_store(root / "matches.h5", [root / "pairs.txt"], local)
    calls = []
    real = pose.estimate_relative_pose_sweep
    monkeypatch.setattr(pose, "estimate_relative_pose_sweep", lambda *a, **k: calls.append(1) or real(*a, **k))
    rows = estimate_poses(read_pairs(root / "pairs.txt"), gt, local, root / "pose.csv", num_workers=1,
                          matches_h5=root / "matches.h5")
    assert len(calls) == 2  # (sub/tex0, tex1) and (grey, tex1), once each
    forward, backward = rows[1], rows[0]  # canonical: "sub/tex0.png" < "tex1.png"
    assert forward[2:5] == backward[2:5] and forward[3] > 20  # matches, inliers, threshold shared
    # the backward row is the inverse estimate scored against T_{tex1 -> tex0}
    R, t, _, _ = real(*sweep_inputs(gt, read_local_features(local, names), read_matches(
        root / "matches.h5", [("sub/tex0.png", "tex1.png")], read_local_features(local, names))))
    i, j = gt.names.index("sub/tex0.png"), gt.names.index("tex1.png")
    assert backward[5:] == list(relative_pose_error(gt.relative_pose(j, i), R.T, -R.T @ t))
    assert forward[5:] == list(relative_pose_error(gt.relative_pose(i, j), R, t))
    assert rows[2][3] == rows[3][3] == 0 and math.isinf(rows[2][5])  # the textureless pair fails both ways
    # without a store the same rows: matched here
    assert estimate_poses(pairs, gt, local, root / "pose2.csv", num_workers=2) == rows


def sweep_inputs(gt, features, matches):
    m = matches[("sub/tex0.png", "tex1.png")]
    i, j = gt.names.index("sub/tex0.png"), gt.names.index("tex1.png")
    return (features["sub/tex0.png"]["keypoints"][m[:, 0]] + 0.5, features["tex1.png"]["keypoints"][m[:, 1]] + 0.5,
            gt.K[i], gt.K[j], (0.5, 1.5, 2.0, 3.0))


def test_pose_refuses_a_stale_store(small_scene):
    root, images, names, gt, local = small_scene
    pairs = [("sub/tex0.png", "tex1.png")]
    write_pairs(root / "pairs.txt", pairs)
    build_store(root / "matches.h5", [root / "pairs.txt"], local, MatchingConf(ratio=0.7))
    with pytest.raises(ValueError, match=r"matches\.h5: cannot be read: it was written with ratio 0\.7"):
        estimate_poses(pairs, gt, local, root / "pose.csv", matches_h5=root / "matches.h5")
    with pytest.raises(KeyError, match=r"\('grey.png', 'tex1.png'\) is not in the store"):
        estimate_poses([("tex1.png", "grey.png")], gt, local, root / "pose.csv", matches_h5=root / "matches.h5",
                       matching=MatchingConf(ratio=0.7))
    assert not (root / "pose.csv").exists()


def test_a_scenes_pose_jobs_estimate_each_pair_once(small_scene, monkeypatch):
    root, images, names, gt, local = small_scene
    m1 = [("sub/tex0.png", "tex1.png"), ("grey.png", "tex1.png")]
    m2 = [("tex1.png", "sub/tex0.png"), ("tex1.png", "grey.png"), ("grey.png", "sub/tex0.png")]
    write_pairs(root / "all.txt", m1 + m2)
    build_store(root / "matches.h5", [root / "all.txt"], local)
    scratch1 = estimate_poses(m1, gt, local, root / "s1.csv", num_workers=1, matches_h5=root / "matches.h5")
    scratch2 = estimate_poses(m2, gt, local, root / "s2.csv", num_workers=1, matches_h5=root / "matches.h5")
    calls = []
    real = pose.estimate_relative_pose_sweep
    monkeypatch.setattr(pose, "estimate_relative_pose_sweep", lambda *a, **k: calls.append(a[2].shape) or real(*a, **k))
    scene = root / "scene"
    write_gt(root / "gt.h5", gt)
    rows1 = pose.estimate_scene_poses(m1, root / "gt.h5", local, scene / "m1" / "pose.csv", scene / "m1" / "poses.h5",
                                      num_workers=1, matches_h5=root / "matches.h5")
    assert len(calls) == 2 and rows1 == scratch1
    rows2 = pose.estimate_scene_poses(m2, root / "gt.h5", local, scene / "m2" / "pose.csv", scene / "m2" / "poses.h5",
                                      num_workers=2, matches_h5=root / "matches.h5")
    assert len(calls) == 2 + 1 and rows2 == scratch2  # only (grey, sub/tex0) was new to the scene
    # another sweep, or other intrinsics: nothing is copied
    again = estimate_poses(m1, gt, local, root / "x.csv", PoseConf(threshold_px=1.0), num_workers=1,
                           matches_h5=root / "matches.h5", shared=[scene / "m1" / "poses.h5"])
    assert len(calls) == 3 + 2 and again[0][4] == 1.0
    gt.K[1, 0, 0] += 1.0
    estimate_poses(m1, gt, local, root / "y.csv", num_workers=1, matches_h5=root / "matches.h5",
                   shared=[scene / "m1" / "poses.h5"])
    assert len(calls) == 5 + 2
    # the method's own previous estimates are reused when its job reruns
    gt.K[1, 0, 0] -= 1.0
    pose.estimate_scene_poses(m1, root / "gt.h5", local, scene / "m1" / "pose.csv", scene / "m1" / "poses.h5",
                              num_workers=1, matches_h5=root / "matches.h5")
    assert len(calls) == 7
