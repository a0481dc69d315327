"""The verify method: a first stage's shortlist reranked by spatially verified matches (vop.verification)."""

import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

from vop import io
from vop.cli import main as vop_main
from vop.conf import ConfigError, VerifyConf
from vop.io import GroundTruth, write_gt, write_pairs
from vop.local_features import extract_local_features
from vop.match_store import build_store
from vop.retrieval import Ranking, read_ranking, run_method, write_outputs
from vop.verification import rerank, verified_inliers
from vop.workflow import load_datasets

REPO = Path(__file__).resolve().parents[1]
NAN = math.nan


# ---------------------------------------------------------------------------------------------------
# The ranking


def test_rerank_by_inliers_ties_and_weak_pairs_in_first_stage_order():
    first_db = np.array([[10, 11, 12, 13, 14, 15], [20, 21, 22, 23, 24, 25]])
    first_score = np.arange(12, dtype=float).reshape(2, 6)[:, ::-1]
    inliers = np.array([[30, 5, 80, 30, 0], [3, 2, 1, 0, 16]])  # shortlist 5 of 6
    db, score, pre = rerank(first_db, first_score, inliers, k=6, min_inliers=15)
    # verified by inliers (the 30-30 tie in first-stage order), then the weak in first-stage order, then rank 6
    np.testing.assert_array_equal(db[0], [12, 10, 13, 11, 14, 15])
    np.testing.assert_array_equal(score[0], [80, 30, 30, 5, 0, NAN])
    np.testing.assert_array_equal(pre[0], first_score[0, [2, 0, 3, 1, 4, 5]])
    np.testing.assert_array_equal(db[1], [24, 20, 21, 22, 23, 25])
    # k below the shortlist keeps the best k; min_inliers 0 ranks by inliers alone
    np.testing.assert_array_equal(rerank(first_db, first_score, inliers, 2, 0)[0], [[12, 10], [24, 20]])
    # a full ranking (k past the shortlist): the rest in first-stage order; k past the first stage: all of it
    db, score, _ = rerank(first_db, first_score, inliers[:, :2], k=10, min_inliers=1)
    np.testing.assert_array_equal(db, [[10, 11, 12, 13, 14, 15], [20, 21, 22, 23, 24, 25]])
    assert np.isnan(score[:, 2:]).all()
    with pytest.raises(ValueError, match="7 verified ranks but the first stage has 6"):
        rerank(first_db, first_score, np.zeros((2, 7)), 3, 15)


# ---------------------------------------------------------------------------------------------------
# The geometry


def project(K, R, t, X):
    x = (X @ R.T + t) @ K.T
    return x[:, :2] / x[:, 2:]


def two_views(rng, X):
    K = np.array([[400.0, 0, 320], [0, 400, 240], [0, 0, 1]])
    R = cv2.Rodrigues(np.array([0.0, 0.25, 0.05]))[0]
    t = np.array([-1.0, 0.1, 0.2])
    x0 = project(K, np.eye(3), np.zeros(3), X) + rng.normal(0, 0.3, (len(X), 2))
    x1 = project(K, R, t, X) + rng.normal(0, 0.3, (len(X), 2))
    return x0, x1


def test_fundamental_matrix_counts_the_matches_of_every_plane():
    # Two walls at right angles, 100 matches each, and 100 outliers. A homography explains one wall; the
    # fundamental matrix (no intrinsics needed) explains both, so it measures how much the views share.
    rng = np.random.default_rng(0)
    wall0 = np.c_[rng.uniform(-2, 0, 100), rng.uniform(-1, 1, 100), np.full(100, 6.0)]
    wall1 = np.c_[np.zeros(100), rng.uniform(-1, 1, 100), rng.uniform(4, 6, 100)]
    x0, x1 = two_views(rng, np.vstack([wall0, wall1]))
    x0 = np.vstack([x0, rng.uniform([0, 0], [640, 480], (100, 2))])
    x1 = np.vstack([x1, rng.uniform([0, 0], [640, 480], (100, 2))])
    inliers = verified_inliers(x0, x1, 4.0)
    assert 190 <= inliers <= 215  # the 200 true matches, few of the outliers near an epipolar line
    _, mask = cv2.findHomography(x0, x1, cv2.RANSAC, 4.0)
    assert mask.sum() < 0.7 * inliers  # about one wall
    # random matches verify little; too few matches verify nothing
    noise = rng.uniform([0, 0], [640, 480], (200, 2)), rng.uniform([0, 0], [640, 480], (200, 2))
    assert verified_inliers(*noise, 4.0) < 60
    assert verified_inliers(x0[:7], x1[:7], 4.0) == 0


# ---------------------------------------------------------------------------------------------------
# The method on a scene


@pytest.fixture
def scene(tmp_path):
    """Two views of a texture 7 px apart, a third of another texture, and a textureless image."""
    rng = np.random.default_rng(4)
    images = tmp_path / "images"
    images.mkdir()

    def texture():
        noise = rng.uniform(0, 255, (30, 40)).astype(np.uint8)
        return cv2.GaussianBlur(cv2.resize(noise, (320, 240), interpolation=cv2.INTER_NEAREST), (3, 3), 0)

    base = texture()
    cv2.imwrite(str(images / "a.png"), base)
    cv2.imwrite(str(images / "b.png"), np.roll(base, 7, axis=1))
    cv2.imwrite(str(images / "c.png"), texture())
    cv2.imwrite(str(images / "grey.png"), np.full((240, 320), 128, np.uint8))
    names = ["a.png", "b.png", "c.png", "grey.png"]
    gt = GroundTruth(names, np.full((4, 3, 3), np.nan), np.full((4, 4, 4), np.nan), np.tile([320, 240], (4, 1)), None)
    write_gt(tmp_path / "gt.h5", gt)  # no calibration: verification needs none
    extract_local_features(images, names, tmp_path / "local.h5", num_workers=1)
    return tmp_path, names


def first_stage(root, names, order, mode_queries=None):
    """A first stage's outputs with the given ranking (names best first per query)."""
    queries = list(order)
    db = np.array([[names.index(d) for d in order[q]] for q in queries])
    score = np.linspace(0.9, 0.5, db.shape[1])[None].repeat(len(queries), 0)
    ranking = Ranking(np.array([names.index(q) for q in queries]), db, score, score)
    write_outputs(ranking, names, root / "first", {"type": "cls"})
    return ranking


def test_verify_reranks_the_shortlist_by_verified_matches(scene):
    root, names = scene
    order = {"a.png": ["grey.png", "c.png", "b.png"], "b.png": ["c.png", "a.png", "grey.png"],
             "c.png": ["a.png", "b.png", "grey.png"], "grey.png": ["a.png", "b.png", "c.png"]}
    written = first_stage(root, names, order)
    assert (read_ranking(root / "first" / "scores.csv", names).db == written.db).all()
    shortlist = [(q, d) for q, dbs in order.items() for d in dbs]
    write_pairs(root / "shortlist.txt", shortlist)
    build_store(root / "matches.h5", [root / "shortlist.txt"], root / "local.h5")
    # Unrelated blurred-noise textures still give some 70 ratio-test matches, of which some 24 lie within
    # 4 px of one fundamental matrix's epipolar lines (7 points fit one exactly): 50 marks the weak here.
    conf = VerifyConf(first_stage="cls", shortlist=3, k=3, min_inliers=50)
    run_method(conf, "s", root / "gt.h5", root / "verify", first_stage_scores=root / "first" / "scores.csv",
               matches_h5=root / "matches.h5", local_features_h5=root / "local.h5", num_workers=2)
    pairs = io.read_pairs(root / "verify" / "pairs.txt")
    ranked = {q: [d for q_, d in pairs if q_ == q] for q in order}
    # the shifted copy comes first; the unrelated and textureless keep first-stage order behind it
    assert ranked == {"a.png": ["b.png", "grey.png", "c.png"], "b.png": ["a.png", "c.png", "grey.png"],
                      "c.png": ["a.png", "b.png", "grey.png"], "grey.png": ["a.png", "b.png", "c.png"]}
    scores = pd.read_csv(root / "verify" / "scores.csv")
    a_b = scores[(scores["query"] == "a.png") & (scores["db"] == "b.png")]
    b_a = scores[(scores["query"] == "b.png") & (scores["db"] == "a.png")]
    assert int(a_b["score"].iloc[0]) == int(b_a["score"].iloc[0]) > 50  # verified once, the same both ways
    assert (scores[scores["db"] == "grey.png"]["score"] == 0).all()
    assert (scores[scores["db"] == "c.png"]["score"] < 50).all()
    assert float(a_b["prefilter_score"].iloc[0]) == pytest.approx(0.5)  # the first-stage score, kept
    info = yaml.safe_load((root / "verify" / "retrieval.json").read_text())
    assert info["type"] == "verify" and info["verified_pairs"] == 6 and info["shortlist_used"] == 3

    # a shortlist of 1 (k 3): only the top first-stage image is verified; the CLI runs the same method
    assert vop_main(["retrieve", "verify", "--gt", str(root / "gt.h5"), "--first-stage-scores",
                     str(root / "first" / "scores.csv"), "--matches", str(root / "matches.h5"), "--local-features",
                     str(root / "local.h5"), "--out-dir", str(root / "cli"), "--k", "3", "--first-stage", "cls",
                     "--shortlist", "1", "--min-inliers", "50", "--workers", "1"]) == 0
    assert io.read_pairs(root / "cli" / "pairs.txt") == [(q, d) for q, dbs in order.items() for d in dbs]
    cli = pd.read_csv(root / "cli" / "scores.csv")
    assert cli["score"].isna().sum() == 8 and cli[cli["rank"] == 0]["score"].notna().all()


def test_verify_in_retrieve_mode_and_a_stale_first_stage(scene):
    root, names = scene
    order = {"a.png": ["c.png", "grey.png", "b.png"]}
    first_stage(root, names, order)
    write_pairs(root / "shortlist.txt", [("a.png", d) for d in order["a.png"]])
    build_store(root / "matches.h5", [root / "shortlist.txt"], root / "local.h5")
    files = {"first_stage_scores": root / "first" / "scores.csv", "matches_h5": root / "matches.h5",
             "local_features_h5": root / "local.h5"}
    conf = VerifyConf(first_stage="cls", shortlist=3, k=2)
    run_method(conf, "s", root / "gt.h5", root / "verify", mode="retrieve", queries="a.png", **files)
    assert io.read_pairs(root / "verify" / "pairs.txt") == [("a.png", "b.png"), ("a.png", "c.png")]
    # the first stage ranked other queries than this mode's: refused
    with pytest.raises(ValueError, match=r"scores\.csv: ranks other queries.*rerun its rule \(first_stage\)"):
        run_method(conf, "s", root / "gt.h5", root / "verify2", mode="register", **files)


def test_verify_config_errors_name_the_key():
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    assert config["methods"]["verify"]["first_stage"] == "cls" and "verify" in config["datasets"]["demo"]["methods"]
    config["methods"]["verify"]["first_stage"] = "clss"
    with pytest.raises(ConfigError, match=r"methods\.verify\.first_stage 'clss' is not under `methods:`"):
        load_datasets(config)
    config["methods"]["verify2"] = {"type": "verify", "first_stage": "cls", "k": 5}
    config["methods"]["verify"]["first_stage"] = "verify2"
    with pytest.raises(ConfigError, match=r"first_stage 'verify2' is a verify method itself"):
        load_datasets(config)
    config["methods"]["verify"]["first_stage"] = "oracle"  # needs overlap, which a folder dataset lacks
    config["datasets"]["photos"] = {"source": "folder", "root": "x", "backbone": "dense_sift", "methods": ["verify"]}
    with pytest.raises(ConfigError, match=r"datasets\.photos\.methods: 'verify' needs ground-truth overlap"):
        load_datasets(config)
