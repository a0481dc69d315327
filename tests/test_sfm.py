"""The reconstruct stage (vop.sfm): SfM from a method's stored matches, the sweep, the tables, the COLMAP export."""

import numpy as np
import pandas as pd
import pycolmap
import pytest

from vop.cli import main
from vop.colmap_database import read_counts
from vop.colmap_database import read_matches as read_db_matches
from vop.conf import ExhaustiveConf, MatchingConf, SequentialConf, SfmConf
from vop.io import read_pairs, write_pairs
from vop.local_features import read_local_features
from vop.match_store import read_matches, stored_pairs, update_store
from vop.retrieval import Ranking, retrieve_exhaustive, retrieve_sequential, run_method
from vop.sfm import (
    export_colmap,
    pairs_per_image,
    ranking_pairs,
    reconstruct_method,
    run_sweep,
    sfm_table,
    sweep_ranking,
)

CONF = SfmConf(sweep=(1, 2, 4))



def test_exhaustive_ranks_every_other_image_and_refuses_large_scenes():
    r = retrieve_exhaustive(ExhaustiveConf(), 5)
    assert r.db.tolist() == [[j for j in range(5) if j != i] for i in range(5)]
    with pytest.raises(ValueError, match=r"200 images are 19900 pairs.*max_images=150.*instead"):
        retrieve_exhaustive(ExhaustiveConf(), 200)
    assert retrieve_exhaustive(ExhaustiveConf(max_images=200), 200).db.shape == (200, 199)
    with pytest.raises(ValueError, match="leave `k` out"):
        retrieve_exhaustive(ExhaustiveConf(k=5), 5)


def test_sequential_ranks_by_distance_in_name_order():
    names = ["f3", "f0", "f2", "f1", "f4"]  # name order f0 f1 f2 f3 f4 is not index order
    r = retrieve_sequential(SequentialConf(k=3), names)
    by_name = {names[q]: [names[d] for d in row] for q, row in zip(r.queries, r.db)}
    assert by_name["f2"] == ["f3", "f1", "f4"]  # next, previous, two ahead
    assert by_name["f0"] == ["f1", "f2", "f3"]
    assert by_name["f4"] == ["f3", "f2", "f1"]
    assert r.score[names.index("f2")].tolist() == [-1, -1, -2]


def exhaustive_store(walk, method="exhaustive"):
    """The exhaustive method's pairs.txt and store, as its retrieve and matches rules write them."""
    scene, out = walk
    run_method(ExhaustiveConf(), "walk", out / "gt.h5", out / method)
    pairs = read_pairs(out / method / "pairs.txt")
    features = read_local_features(out / "local.h5", scene.gt.names)
    update_store(out / method / "matches.h5", pairs, features)
    return pairs, features


def test_exhaustive_pairs_reconstruct_every_image_at_the_true_poses(walk):
    scene, out = walk
    pairs, _ = exhaustive_store(walk)
    assert len(pairs) == 90  # both orders: 45 unordered pairs
    m = reconstruct_method(CONF, pairs, out / "gt.h5", out / "local.h5", out / "exhaustive" / "matches.h5",
                           out / "exhaustive" / "sfm")
    # Measured (seed 5): 10/10 registered in one model, median rotation error ~0.03 deg, centre 0.001 extent.
    assert m["num_models"] == 1 and m["registered"] == 10 and m["registered_pct"] == 100.0, m
    assert m["rot_within_5deg_pct"] == 100.0 and m["median_center_err_rel"] < 0.01, m
    assert m["pairs"] == 45 and m["pairs_per_image"] == 9.0, m
    assert (out / "exhaustive" / "sfm" / "metrics.json").is_file()
    model = pycolmap.Reconstruction(out / "exhaustive" / "sfm" / "models" / "0")
    assert model.num_reg_images() == 10 and model.cameras[1].model_name == "PINHOLE"


def test_a_stale_store_is_refused(walk):
    scene, out = walk
    pairs, _ = exhaustive_store(walk, "stale")
    with pytest.raises(ValueError, match="written with ratio.*rerun its rule"):
        reconstruct_method(CONF, pairs, out / "gt.h5", out / "local.h5", out / "stale" / "matches.h5",
                           out / "stale" / "sfm", matching=MatchingConf(ratio=0.7))


def test_pairs_that_split_the_scene_give_two_models_in_the_table(walk, tmp_path):
    scene, out = walk
    names = scene.gt.names
    halves = [(a, b) for part in (names[:5], names[5:]) for i, a in enumerate(part) for b in part[i + 1:]]
    features = read_local_features(out / "local.h5", names)
    update_store(tmp_path / "split" / "matches.h5", halves, features)
    reconstruct_method(CONF, halves, out / "gt.h5", out / "local.h5", tmp_path / "split" / "matches.h5",
                       tmp_path / "split" / "sfm")
    reconstruct_method(CONF, halves[:4], out / "gt.h5", out / "local.h5", tmp_path / "split" / "matches.h5",
                       tmp_path / "few" / "sfm", posed=False)
    table = sfm_table([{"method": "split", "scene": "walk", "k": 4, "metrics": tmp_path / "split/sfm/metrics.json"},
                       {"method": "few", "scene": "walk", "k": 1, "metrics": tmp_path / "few/sfm/metrics.json"}],
                      tmp_path / "sfm.csv")
    row = pd.read_csv(tmp_path / "sfm.csv").set_index(["method", "scene"]).loc[("split", "walk")]
    assert row["num_models"] == 2 and row["registered_pct"] == 50.0 and row["registered_any_pct"] == 100.0
    assert row["pairs"] == 20 and row["pairs_per_image"] == 4.0
    few = table[(table["method"] == "few") & (table["scene"] == "walk")].iloc[0]
    assert few["registered"] < 10 and np.isnan(few["rot_within_5deg_pct"])  # no poses: no camera errors
    assert set(table[table["scene"] == "ALL"]["method"]) == {"split", "few"}


def test_sweep_cuts_the_ranking_and_matches_only_what_is_missing(walk):
    scene, out = walk
    names = scene.gt.names
    run_method(SequentialConf(k=2), "walk", out / "gt.h5", out / "sequential")
    update_store(out / "sequential" / "matches.h5", read_pairs(out / "sequential" / "pairs.txt"),
                 read_local_features(out / "local.h5", names))

    def deeper(depth):
        return retrieve_sequential(SequentialConf(k=depth), names)

    ranking = sweep_ranking(out / "sequential" / "scores.csv", names, 4, deeper)
    assert ranking.db.shape[1] == 4
    shallow = sweep_ranking(out / "sequential" / "scores.csv", names, 4)  # no way deeper: as it is
    assert shallow.db.shape[1] == 2
    with pytest.raises(ValueError, match="does not start with"):
        sweep_ranking(out / "sequential" / "scores.csv", names, 4,
                      lambda d: Ranking(ranking.queries, ranking.db[:, ::-1], ranking.score, ranking.score))
    rows = run_sweep(CONF, ranking, out / "gt.h5", out / "local.h5", out / "sequential" / "sfm",
                     shared=[out / "sequential" / "matches.h5", out / "exhaustive" / "matches.h5"])
    assert [r["k"] for r in rows] == [1, 2, 4]
    ppi = [r["pairs_per_image"] for r in rows]
    assert ppi == sorted(ppi) and ppi[0] < ppi[-1]
    assert [r["pairs"] for r in rows] == [len(ranking_pairs(ranking, names, k)) for k in (1, 2, 4)]
    # 4 nearest in capture order: every image registered at the true poses
    assert rows[-1]["registered"] == 10 and rows[-1]["rot_within_5deg_pct"] == 100.0, rows[-1]
    assert len(stored_pairs(out / "sequential" / "sfm" / "matches.h5")) == rows[-1]["pairs"]
    # the geometries verified once for the sweep give what verifying the depth's own database gives
    fresh = reconstruct_method(CONF, ranking_pairs(ranking, names, 4), out / "gt.h5", out / "local.h5",
                               out / "sequential" / "sfm" / "matches.h5", out / "fresh", write_metrics=False)
    for key in ("pairs_verified", "registered", "num_models"):
        assert fresh[key] == rows[-1][key], (key, fresh, rows[-1])
    sweep = pd.read_csv(out / "sequential" / "sfm" / "sweep.csv")
    assert sweep["k"].tolist() == [1, 2, 4] and sweep["registered"].iloc[-1] == 10
    assert pairs_per_image(45, 10) == 9.0


def test_export_round_trips_through_pycolmap(walk, tmp_path):
    scene, out = walk
    pairs, features = exhaustive_store(walk)
    chosen = pairs[:12]
    counts = export_colmap(tmp_path / "database.db", chosen, out / "local.h5", out / "exhaustive" / "matches.h5",
                           out / "gt.h5")
    unordered = {tuple(sorted(p)) for p in chosen}
    assert counts["images"] == counts["cameras"] == 10 and counts["matched_pairs"] == len(unordered)
    assert counts["keypoints"] == counts["descriptors"] == sum(len(f["keypoints"]) for f in features.values())
    assert counts["verified_pairs"] >= 1 and counts["inlier_matches"] > 0
    a, b = sorted(chosen[0])
    stored = read_matches(out / "exhaustive" / "matches.h5", [(a, b)], features)[(a, b)]
    np.testing.assert_array_equal(read_db_matches(tmp_path / "database.db", a, b), stored)
    np.testing.assert_array_equal(read_db_matches(tmp_path / "database.db", b, a), stored[:, ::-1])  # (b, a)
    with pycolmap.Database.open(tmp_path / "database.db") as db:
        camera = db.read_camera(1)
        assert camera.model_name == "PINHOLE" and np.isclose(camera.params[0], scene.gt.K[0, 0, 0])


def test_export_command_matches_without_a_store(walk, tmp_path):
    scene, out = walk
    names = scene.gt.names
    write_pairs(tmp_path / "pairs.txt", [(names[0], names[1]), (names[1], names[2])])
    assert main(["export-colmap", "--pairs", str(tmp_path / "pairs.txt"), "--local-features", str(out / "local.h5"),
                 "--out", str(tmp_path / "db.db"), "--no-verify"]) == 0
    counts = read_counts(tmp_path / "db.db")
    assert counts["images"] == 10 and counts["matched_pairs"] == 2 and counts["verified_pairs"] == 0
    with pycolmap.Database.open(tmp_path / "db.db") as db:
        assert db.read_camera(1).model_name == "SIMPLE_RADIAL"  # no gt.h5: COLMAP's guess
