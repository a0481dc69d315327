"""pose.scale_aware (vop.scale_aware): scale buckets, extraction at a bucket, the per-image cache, the pose rows,
scale.csv, and the workflow's +scale rows."""

import math
import shutil

import cv2
import h5py
import numpy as np
import pandas as pd
import pytest

from vop import local_features, pose, scale_aware
from vop.conf import LocalFeaturesConf, PoseConf
from vop.io import write_csv
from vop.local_features import extract_at_bucket, read_local_features, scale_bucket
from vop.metrics import pose_auc
from vop.nso import OVERLAP_COLUMNS


def test_buckets_are_half_octaves_nearest_in_log2():
    assert scale_bucket(1.0) == 0 and scale_bucket(0.5) == 2 and scale_bucket(0.7) == 1
    assert scale_bucket(math.nan) == 0 and scale_bucket(2.0) == 0  # no scale, or no downsampling: as is
    assert scale_bucket(1e-6) == scale_bucket(0.0) == local_features.MAX_BUCKET == 6  # clamped
    assert scale_bucket(2 ** -2.5) == 5 and scale_bucket(0.6) == 1  # 0.6: log2 -0.74, nearer -0.5 than -1
    assert [local_features.bucket_factor(j) for j in (0, 2, 4)] == [1.0, 0.5, 0.25]


def write_overlap(path, pairs, scales, true_scales=None):
    """An overlap.csv with the given predicted (and true) relative scales (None: empty cell)."""
    true_scales = true_scales or [None] * len(pairs)

    def cell(x):
        return "" if x is None else f"{x:.6g}"

    write_csv(path, OVERLAP_COLUMNS, [(q, d, "0.5", "0.5", cell(s), "0.5", "0.5", cell(t))
                                      for (q, d), s, t in zip(pairs, scales, true_scales)])


def test_pair_buckets_downsample_the_close_up_only(tmp_path):
    pairs = [("a", "b"), ("b", "a"), ("a", "c"), ("c", "a")]
    write_overlap(tmp_path / "overlap.csv", pairs, [2.0, 0.5, None, 1.15])
    # s=2: the query is the close-up, halved; s=1/2: the db image; no scale: as is; 1.15: within a quarter
    # octave (2^0.25 = 1.19)
    assert scale_aware.pair_buckets(tmp_path / "overlap.csv", pairs) == [(2, 0), (0, 2), (0, 0), (0, 0)]
    with pytest.raises(ValueError, match="no row for pair"):
        scale_aware.pair_buckets(tmp_path / "overlap.csv", [("b", "c")])


def blobs_image(tmp_path, seed=0):
    """Gaussian blobs (sigma 6 px) at known sub-pixel centres on a 320x240 image; (path, centres)."""
    rng = np.random.default_rng(seed)
    gx, gy = np.meshgrid(np.arange(40, 300, 40), np.arange(40, 220, 40))
    centres = np.stack([gx.ravel(), gy.ravel()], 1) + rng.uniform(-5, 5, (gx.size, 2))
    y, x = np.mgrid[:240, :320]
    image = np.zeros((240, 320))
    for cx, cy in centres:
        image += np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 6.0**2))
    path = tmp_path / "blobs.png"
    cv2.imwrite(str(path), np.clip(40 + 200 * image, 0, 255).astype(np.uint8))
    return path, centres


def test_extraction_at_a_bucket_puts_keypoints_in_the_original_pixels(tmp_path):
    path, centres = blobs_image(tmp_path)
    for bucket in (0, 2, 4):  # factors 1, 1/2, 1/4
        feats = extract_at_bucket(path, bucket, LocalFeaturesConf())
        assert feats["image_size"].tolist() == [320, 240]  # the original grid, which K calibrates
        kpts = feats["keypoints"]
        nearest = np.linalg.norm(centres[:, None] - kpts[None], axis=2).min(axis=1)
        # every blob found where it is in the original image (measured: 0.03 px median at every bucket);
        # unscaled keypoints would be tens of pixels off, a missing half-pixel shift 0.7 px (bucket 2), 2.1 (4)
        assert np.mean(nearest < 0.3) > 0.9, (bucket, np.median(nearest))
    # the downsampled image finds fewer keypoints than the full one: it really is smaller
    texture = tmp_path / "texture.png"
    cv2.imwrite(str(texture), cv2.GaussianBlur(np.random.default_rng(1).integers(0, 255, (240, 320), np.uint8),
                                               (0, 0), 1.0))
    full, half = (len(extract_at_bucket(texture, b)["keypoints"]) for b in (0, 2))
    assert 0 < half < full / 2


@pytest.fixture()
def counted(monkeypatch):
    """The OpenCV backend wrapped to record the size of every image it is given."""
    calls = []
    backend = local_features.SIFT_BACKENDS["opencv"]

    def counting(image, *args):
        calls.append(image.shape)
        return backend(image, *args)

    monkeypatch.setitem(local_features.SIFT_BACKENDS, "opencv", counting)
    return calls


def test_cache_extracts_each_image_and_bucket_once_and_never_reads_a_stale_entry(walk, counted, tmp_path):
    scene, out = walk
    names = scene.gt.names[:3]
    ordinary = read_local_features(out / "local.h5", names)
    conf = LocalFeaturesConf()
    cache = tmp_path / "a" / "local_features_scaled.h5"
    wanted = [(names[0], 2), (names[1], 2), (names[0], 2), (names[2], 0)]  # a repeat, and bucket 0: not cached

    first, counts = scale_aware.update_scaled_features(cache, scene.image_dir, wanted, ordinary, conf)
    assert sorted(first) == [(names[0], 2), (names[1], 2)] and counts["extracted"] == 2 and len(counted) == 2
    assert counted[0] == (240, 320)  # 640x480 at half the size
    again, counts = scale_aware.update_scaled_features(cache, scene.image_dir, wanted, ordinary, conf)
    assert len(counted) == 2 and counts["reused"] == 2 and counts["extracted"] == 0  # nothing extracted
    for key in first:
        np.testing.assert_array_equal(again[key]["keypoints"], first[key]["keypoints"])
        np.testing.assert_array_equal(again[key]["descriptors"], first[key]["descriptors"])
    # one new bucket: only it is extracted; what is no longer asked for is dropped from the cache
    more, counts = scale_aware.update_scaled_features(cache, scene.image_dir, [(names[0], 2), (names[0], 4)],
                                                      ordinary, conf)
    assert len(counted) == 3 and counted[-1] == (120, 160) and counts == {"needed": 2, "reused": 1, "shared": 0,
                                                                          "extracted": 1}
    with h5py.File(cache) as f:
        assert sorted(f) == ["bucket2", "bucket4"] and list(f["bucket2"]) == [names[0]]
    # another method's job copies the entries of this one's cache
    other = tmp_path / "b" / "local_features_scaled.h5"
    _, counts = scale_aware.update_scaled_features(other, scene.image_dir, [(names[0], 4)], ordinary, conf,
                                                   shared=[cache, other])
    assert counts["shared"] == 1 and len(counted) == 3
    # another conf, or another image (its ordinary features changed): the entry is stale, extracted again
    fewer = conf.replace(max_keypoints=100)
    stale, counts = scale_aware.update_scaled_features(cache, scene.image_dir, [(names[0], 4)], ordinary, fewer)
    assert counts["extracted"] == 1 and len(counted) == 4 and len(stale[(names[0], 4)]["keypoints"]) <= 100
    changed = {names[0]: {**ordinary[names[0]], "keypoints": ordinary[names[0]]["keypoints"] + 1}}
    _, counts = scale_aware.update_scaled_features(cache, scene.image_dir, [(names[0], 4)], changed, fewer)
    assert counts["extracted"] == 1 and len(counted) == 5


def walk_pairs(gt):
    n = gt.names
    return [(n[0], n[1]), (n[1], n[0]), (n[1], n[2]), (n[2], n[3]), (n[3], n[2]), (n[4], n[5])]


def test_pairs_at_bucket_zero_give_the_ordinary_rows_copied_from_poses_h5(walk, tmp_path, monkeypatch):
    scene, out = walk
    pairs = walk_pairs(scene.gt)
    ordinary = pose.estimate_poses(pairs, scene.gt, out / "local.h5", tmp_path / "pose.csv", PoseConf(),
                                   num_workers=1, estimates_h5=tmp_path / "poses.h5")
    write_overlap(tmp_path / "overlap.csv", pairs, [None, 1.1, 0.9, None, 1.0, None])  # all at bucket 0

    def no_estimation(*args, **kwargs):
        raise AssertionError("a pair at bucket 0 was estimated instead of copied")

    with monkeypatch.context() as patch:
        patch.setattr(pose, "estimate_relative_pose_sweep", no_estimation)
        rows = scale_aware.estimate_scale_aware_poses(
            pairs, tmp_path / "overlap.csv", scene.gt, out / "local.h5", scene.image_dir, tmp_path / "scaled.csv",
            tmp_path / "cache.h5", tmp_path / "poses_scaled.h5", num_workers=1,
            shared_estimates=[tmp_path / "poses.h5"])
    assert rows == ordinary
    assert (tmp_path / "scaled.csv").read_text() == (tmp_path / "pose.csv").read_text()
    # estimated afresh (no estimates to copy): the same rows, the estimators being seeded
    fresh = scale_aware.estimate_scale_aware_poses(pairs, tmp_path / "overlap.csv", scene.gt, out / "local.h5",
                                                   scene.image_dir, tmp_path / "fresh.csv", tmp_path / "cache.h5",
                                                   num_workers=1)
    assert fresh == ordinary


def test_rescaled_pairs_are_matched_at_their_bucket(walk, tmp_path):
    scene, out = walk
    pairs = walk_pairs(scene.gt)
    ordinary = pose.estimate_poses(pairs, scene.gt, out / "local.h5", tmp_path / "pose.csv", PoseConf(),
                                   num_workers=1, estimates_h5=tmp_path / "poses.h5")
    # (n0, n1) with the query twice as large: the query at bucket 2; (n1, n0) the db at bucket 2: the same
    # variant pair, one estimate; (n2, n3) the db at bucket 4
    write_overlap(tmp_path / "overlap.csv", pairs, [2.0, 0.5, None, 0.25, None, None])
    rows = scale_aware.estimate_scale_aware_poses(
        pairs, tmp_path / "overlap.csv", scene.gt, out / "local.h5", scene.image_dir, tmp_path / "scaled.csv",
        tmp_path / "cache.h5", tmp_path / "poses_scaled.h5", num_workers=2, shared_estimates=[tmp_path / "poses.h5"])
    assert [r[:2] for r in rows] == [list(p) for p in pairs]
    assert [rows[k] for k in (2, 4, 5)] == [ordinary[k] for k in (2, 4, 5)]  # untouched pairs
    assert rows[0][2] != ordinary[0][2] and rows[3][2] != ordinary[3][2]  # other keypoints, other matches
    assert rows[0][2] == rows[1][2] and rows[0][3] == rows[1][3]  # one estimate for both orientations
    n = scene.gt.names
    with h5py.File(tmp_path / "cache.h5") as f:
        assert sorted(f["bucket2"]) == [n[0]] and sorted(f["bucket4"]) == [n[3]]
    with h5py.File(tmp_path / "poses_scaled.h5") as f:
        groups = sorted(f"{a}/{b}" for a in f for b in f[a])
    assert f"{n[0]}/{n[1]}@2-0" in groups and f"{n[2]}/{n[3]}@0-4" in groups and f"{n[1]}/{n[2]}" in groups


def test_scale_table_counts_the_large_scale_pairs_and_scores_them_apart(tmp_path):
    from vop.io import POSE_COLUMNS

    pairs = [("a", "b"), ("b", "a"), ("a", "c"), ("c", "d")]
    write_overlap(tmp_path / "overlap.csv", pairs, [2, 0.5, 1, 1], true_scales=[2.5, 0.4, 1.9, None])
    errors = [1.0, 30.0, 2.0, math.inf]
    write_csv(tmp_path / "pose.csv", POSE_COLUMNS, [(q, d, 100, 50, 1.0, e, e / 2) for (q, d), e in zip(pairs, errors)])
    runs = [{"method": m, "scene": s, "pose_csv": tmp_path / "pose.csv", "overlap_csv": tmp_path / "overlap.csv"}
            for m in ("vop", "vop+scale") for s in ("x", "y")]
    scale_aware.scale_table(runs, tmp_path / "scale.csv")
    table = pd.read_csv(tmp_path / "scale.csv")
    assert list(zip(table.method, table.scene)) == [(m, s) for m in ("vop", "vop+scale") for s in ("x", "y", "ALL")]
    row = table[(table.method == "vop") & (table.scene == "ALL")].iloc[0]
    assert row.pairs == 8 and row.large_scale_pairs == 4  # 2.5 and 0.4, in both scenes; 1.9 and no scale are not
    assert row["auc@10_all"] == pytest.approx(round(pose_auc(errors * 2)[1], 4))
    assert row["auc@10_large"] == pytest.approx(round(pose_auc([1.0, 30.0] * 2)[1], 4))


# ---------------------------------------------------------------------------------------------------
# The workflow


def test_workflow_adds_scale_rows_and_the_scale_table(tiny_run, tmp_path):
    from test_workflow import TINY_CONFIG, snakemake, write_config

    from vop.io import read_pairs

    workdir = tmp_path / "tiny"
    shutil.copytree(tiny_run, workdir, symlinks=True)  # the run's results and metadata: only the new jobs run
    config = {**TINY_CONFIG, "pose": {**TINY_CONFIG["pose"], "scale_aware": True}}
    write_config(workdir, config)
    log = snakemake(workdir, "results/tiny/auc.csv", "results/tiny/scale.csv")
    assert "rule pose:" not in log  # scale_aware is no input of the ordinary pose jobs
    auc = pd.read_csv(workdir / "results/tiny/auc.csv")
    nso_methods = ["vop", "vop_identity", "cls"]
    assert set(auc.method) == set(TINY_CONFIG["datasets"]["tiny"]["methods"]) | {m + "+scale" for m in nso_methods}
    retrieval = ["num_queries", "recall@k", "k", "mAP@k"]
    for m in nso_methods:
        own, scaled = (auc[auc.method == name].set_index("scene") for name in (m, m + "+scale"))
        pd.testing.assert_frame_equal(own[retrieval], scaled[retrieval])
    scale = pd.read_csv(workdir / "results/tiny/scale.csv")
    assert list(scale.method.unique()) == [v for m in nso_methods for v in (m, m + "+scale")]
    for m in nso_methods:
        large, total = 0, 0
        for scene in ("room_a", "room_b"):
            run_dir = workdir / f"results/tiny/{scene}/{m}"
            overlap = pd.read_csv(run_dir / "overlap.csv")
            s = overlap.true_relative_scale
            large += int(((s >= 2) | (s <= 0.5)).sum())
            total += len(read_pairs(run_dir / "pairs.txt"))
            # the pairs that stay at bucket 0 have the ordinary rows
            buckets = scale_aware.pair_buckets(run_dir / "overlap.csv", read_pairs(run_dir / "pairs.txt"))
            ordinary = pd.read_csv(run_dir / "pose.csv")
            scaled = pd.read_csv(run_dir / "pose_scale_aware.csv")
            same = np.array([b == (0, 0) for b in buckets])
            pd.testing.assert_frame_equal(ordinary[same], scaled[same])
        for name in (m, m + "+scale"):
            row = scale[(scale.method == name) & (scale.scene == "ALL")].iloc[0]
            assert row.pairs == total and row.large_scale_pairs == large
        assert (auc[(auc.method == m + "+scale") & (auc.scene == "ALL")]["auc@10_all"].item()
                == scale[(scale.method == m + "+scale") & (scale.scene == "ALL")]["auc@10_all"].item())
    # a rerun extracts nothing: every job is up to date
    assert "Nothing to be done" in snakemake(workdir, "results/tiny/auc.csv", "results/tiny/scale.csv")

    # vop's predicted scales in room_a all round to bucket 0: give a pair that vop_identity retrieves too a
    # scale change in both overlap.csv (a newer overlap.csv reruns their jobs) to see the cache work there.
    scene_dir = workdir / "results/tiny/room_a"
    identity_pairs = read_pairs(scene_dir / "vop_identity/pairs.txt")
    shared = [p for p in read_pairs(scene_dir / "vop/pairs.txt") if p in identity_pairs]
    for method in ("vop", "vop_identity"):
        overlap = pd.read_csv(scene_dir / method / "overlap.csv", dtype={"query": str, "db": str})
        first = [(q, d) == shared[0] for q, d in zip(overlap["query"], overlap["db"])]
        overlap.loc[first, "relative_scale"] = 2.0  # the query halved: bucket 2
        overlap.to_csv(scene_dir / method / "overlap.csv", index=False)
        snakemake(workdir, "results/tiny/auc.csv", "results/tiny/scale.csv")
        log = (workdir / f"logs/tiny/room_a/{method}/pose_scale_aware.log").read_text()
        scaled = pd.read_csv(scene_dir / method / "pose_scale_aware.csv", dtype={"query": str, "db": str})
        ordinary = pd.read_csv(scene_dir / method / "pose.csv", dtype={"query": str, "db": str})
        assert (scaled.num_matches[first] != ordinary.num_matches[first]).all()  # matched at half the size
        pairs = read_pairs(scene_dir / method / "pairs.txt")
        same = np.array([b == (0, 0) for b in scale_aware.pair_buckets(scene_dir / method / "overlap.csv", pairs)])
        assert not same[first].any() and same.sum() >= len(same) // 2
        pd.testing.assert_frame_equal(scaled[same], ordinary[same])
        with h5py.File(scene_dir / method / "local_features_scaled.h5") as f:
            assert f"bucket2/{shared[0][0]}" in f
            if method == "vop":  # its only pair off bucket 0 (vop_identity predicts some changes of its own)
                assert list(f) == ["bucket2"] and list(f["bucket2"]) == [shared[0][0].split("/")[0]]
        # vop extracts the image at bucket 2; vop_identity copies it from vop's cache
        want = ("0 from the scene's other caches, 1 extracted" if method == "vop"
                else "1 from the scene's other caches, 0 extracted")
        assert want in log
