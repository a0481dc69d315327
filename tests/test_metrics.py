import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vop import metrics
from vop.cli import main as vop_main
from vop.io import POSE_COLUMNS, GroundTruth, read_gt, write_gt, write_pairs
from vop.metrics import best_pair_errors, pose_auc, retrieval_recall, summarize

# ---------------------------------------------------------------------------------------------------
# AUC


def test_pose_auc_hand_computed():
    # Sorted [1, 3, 8, inf], recall .25/.5/.75/1 after a (0, 0) start:
    # @5:  .25*1/2 + (.25+.5)/2*2 + .5*2           = 1.875 / 5  = 37.5 %
    # @10: .125 + .75 + (.5+.75)/2*5 + .75*2        = 5.5 / 10  = 55 %
    # @20: .125 + .75 + 3.125 + .75*12              = 13 / 20   = 65 %
    assert pose_auc([1, 3, math.inf, 8]) == pytest.approx([37.5, 55.0, 65.0])


def test_pose_auc_limits():
    assert pose_auc([0, 0, 0]) == pytest.approx([100, 100, 100])
    assert pose_auc([math.inf, math.inf]) == [0, 0, 0]
    assert pose_auc([]) == [0, 0, 0]
    assert pose_auc([float("nan"), 0.0]) == pytest.approx([50, 50, 50])  # nan is a failure
    # Errors beyond every threshold never reach the curve.
    assert pose_auc([25, 30]) == [0, 0, 0]


def test_pose_auc_single_error_is_linear():
    # One error e < t: the curve rises linearly from (0, 0) to (e, 1), so AUC = (t - e/2) / t.
    assert pose_auc([2.0], thresholds=(5, 10)) == pytest.approx([80.0, 90.0])


# ---------------------------------------------------------------------------------------------------
# Best-pair protocol


def _pose_df(rows):
    return pd.DataFrame(rows, columns=POSE_COLUMNS)


def test_best_pair_picks_most_inliers_first_on_ties():
    df = _pose_df([
        ["q0", "a", 100, 10, 1.0, 1.0, 1.0],
        ["q0", "b", 100, 50, 1.0, 2.0, 7.0],  # most inliers: counts, error max(2, 7) = 7
        ["q0", "c", 100, 20, 1.0, 0.1, 0.1],
        ["q1", "a", 100, 30, 1.0, 4.0, 3.0],  # tie with the next: the first (best rank) counts
        ["q1", "b", 100, 30, 1.0, 0.5, 0.5],
        ["q2", "a", 0, 0, 1.0, math.inf, math.inf],  # all failed: still one row, inf error
        ["q2", "b", 3, 0, 1.0, math.inf, math.inf],
    ])
    best = best_pair_errors(df)
    assert best["query"].tolist() == ["q0", "q1", "q2"]
    assert best["db"].tolist() == ["b", "a", "a"]
    assert best["error"].tolist() == [7.0, 4.0, math.inf]


def test_best_pair_keeps_query_order_of_file():
    df = _pose_df([["z", "a", 1, 1, 1.0, 1.0, 1.0], ["a", "z", 1, 1, 1.0, 2.0, 2.0]])
    assert best_pair_errors(df)["query"].tolist() == ["z", "a"]


# ---------------------------------------------------------------------------------------------------
# Retrieval recall


def _gt(names, overlap):
    n = len(names)
    return GroundTruth(list(names), np.tile(np.eye(3), (n, 1, 1)), np.tile(np.eye(4), (n, 1, 1)),
                       np.tile([640, 480], (n, 1)), None if overlap is None else np.asarray(overlap, np.float32))


def test_retrieval_recall_hand_built():
    # Row q: overlap of q with each image; the diagonal never counts.
    overlap = [
        [1.0, 0.5, 0.3, 0.0],  # a: relevant b, c
        [0.5, 1.0, 0.0, 0.05],  # b: relevant a (d below tau)
        [0.3, 0.0, 1.0, 0.0],  # c: relevant a
        [0.0, 0.05, 0.0, 1.0],  # d: none -> left out
    ]
    gt = _gt("abcd", overlap)
    pairs = [("a", "b"), ("a", "d"), ("b", "c"), ("b", "a"), ("c", "b"), ("c", "d"), ("d", "a")]
    # k=1: a 1/1, b 0/1, c 0/1 -> 33.33
    assert retrieval_recall(pairs, gt, k=1) == pytest.approx(100 / 3)
    # k=2: a 1/2, b 1/1, c 0/1 -> 50
    assert retrieval_recall(pairs, gt, k=2) == pytest.approx(50.0)
    # The oracle (retrieve by overlap) gets 100.
    oracle = [("a", "b"), ("a", "c"), ("b", "a"), ("c", "a")]
    assert retrieval_recall(oracle, gt, k=2) == pytest.approx(100.0)
    assert metrics.num_relevant(gt).tolist() == [2, 1, 1, 0]


def test_recall_curve_and_average_precision_hand_built():
    overlap = np.zeros((5, 5)) + np.eye(5)
    overlap[0, [1, 3, 4]] = 0.5  # q = a: relevant b, d, e
    gt = _gt("abcde", overlap)
    pairs = [("a", "c"), ("a", "b"), ("a", "b"), ("a", "d")]  # miss, hit, repeat (ignored), hit
    # recall@k over k = 1..4: 0/1, 1/2, 2/3, 2/3 (only three distinct results)
    np.testing.assert_allclose(metrics.retrieval_recall_at_ks(pairs, gt, [1, 2, 3, 4]),
                               [[0, 1 / 2, 2 / 3, 2 / 3]])
    # AP@3: precision 1/2 at rank 2 and 2/3 at rank 3, over min(3, 3): (1/2 + 2/3) / 3
    assert metrics.mean_average_precision(pairs, gt, k=3) == pytest.approx((0.5 + 2 / 3) / 3 * 100)
    # AP@2 normalises by min(2, 3) = 2: (1/2) / 2
    assert metrics.average_precision_per_query(pairs, gt, k=2).tolist() == pytest.approx([0.25])
    perfect = [("a", "b"), ("a", "d"), ("a", "e")]
    assert metrics.mean_average_precision(perfect, gt, k=3) == pytest.approx(100.0)
    assert metrics.mean_average_precision(perfect[::-1], gt, k=2) == pytest.approx(100.0)


def test_recall_and_ap_restricted_to_a_database_subset():
    # Retrieve mode: queries a, b; database c, d, e. b is relevant to a but is not in the database.
    overlap = np.eye(5)
    overlap[0, [1, 2]] = 0.5
    overlap[1, [3, 4]] = 0.5
    gt = _gt("abcde", overlap)
    pairs = [("a", "c"), ("a", "d"), ("b", "c"), ("b", "e")]
    database = ["c", "d", "e"]
    # a: relevant {c} in the database -> recall@2 = 1/1; over all images {b, c} -> 1/2.
    # b: relevant {d, e}: hit e at rank 2 -> 1/2 either way.
    assert metrics.retrieval_recall(pairs, gt, k=2, database=database) == pytest.approx(75.0)
    assert metrics.retrieval_recall(pairs, gt, k=2) == pytest.approx(50.0)
    aps = metrics.average_precision_per_query(pairs, gt, k=2, database=database)
    np.testing.assert_allclose(aps, [1.0, 0.25])
    with pytest.raises(ValueError, match="'zz'"):
        metrics.retrieval_recall(pairs, gt, k=2, database=["c", "zz"])


def test_retrieval_recall_unknown_name_names_it():
    gt = _gt("ab", [[1, 1], [1, 1]])
    with pytest.raises(ValueError, match="'zz'"):
        retrieval_recall([("a", "zz")], gt, k=1)


# ---------------------------------------------------------------------------------------------------
# summarize


def _scene(tmp_path, method, scene, names, overlap, pose_rows):
    d = tmp_path / method / scene
    d.mkdir(parents=True)
    write_gt(d / "gt.h5", _gt(names, overlap))
    write_pairs(d / "pairs.txt", [(r[0], r[1]) for r in pose_rows])
    _pose_df(pose_rows).to_csv(d / "pose.csv", index=False)
    return {"method": method, "scene": scene, "pose_csv": str(d / "pose.csv"),
            "pairs_txt": str(d / "pairs.txt"), "gt_h5": str(d / "gt.h5"), "k": 1}


def _two_scenes(tmp_path, method):
    overlap_a = [[1, 0.5, 0.05], [0.5, 1, 0.2], [0.0, 0.2, 1]]
    a = _scene(tmp_path, method, "a", ["a0", "a1", "a2"], overlap_a, [
        ["a0", "a1", 100, 80, 1.0, 1.0, 0.5],  # hit, error 1
        ["a1", "a2", 50, 40, 1.0, 2.0, 3.0],  # hit, error 3
        ["a2", "a0", 3, 0, 1.0, math.inf, math.inf],  # miss, failed
    ])
    b = _scene(tmp_path, method, "b", ["b0", "b1"], [[1, 0.9], [0.9, 1]], [
        ["b0", "b1", 20, 10, 1.0, 8.0, 1.0],  # hit, error 8
        ["b1", "b0", 10, 5, 1.0, 30.0, 2.0],  # hit, error 30
    ])
    return [b, a]  # given out of order: scenes are sorted in the table


def test_summarize_pools_all_queries(tmp_path):
    entries = _two_scenes(tmp_path, "vop") + _two_scenes(tmp_path, "cosine")
    out = tmp_path / "auc.csv"
    summarize(entries, out)
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns) == metrics.SUMMARY_COLUMNS
    assert list(zip(table["method"], table["scene"])) == [
        ("vop", "a"), ("vop", "b"), ("vop", "ALL"), ("cosine", "a"), ("cosine", "b"), ("cosine", "ALL")]
    rows = table.set_index(["method", "scene"])
    a, b, all_ = rows.loc[("vop", "a")], rows.loc[("vop", "b")], rows.loc[("vop", "ALL")]

    # Scene a: errors [1, 3, inf]: @5 = (1/6 + 1 + 4/3) / 5 = 50 %.
    assert a["auc@5"] == pytest.approx(50.0)
    assert a["num_queries"] == 3 and b["num_queries"] == 2 and all_["num_queries"] == 5
    # ALL pools [1, 3, inf, 8, 30] (recall steps of .2):
    # @5 = (.1 + .6 + .8) / 5 = 30; @10 = (.1 + .6 + 2.5 + 1.2) / 10 = 44; @20 = (.1+.6+2.5+7.2)/20 = 52.
    assert [all_["auc@5"], all_["auc@10"], all_["auc@20"]] == pytest.approx([30.0, 44.0, 52.0])
    assert all_["auc@5"] != pytest.approx((a["auc@5"] + b["auc@5"]) / 2)  # not a mean of scenes
    # Means over all pairs: (100+50+3+20+10)/5, (80+40+0+10+5)/5.
    assert all_["mean_matches"] == pytest.approx(36.6) and all_["mean_inliers"] == pytest.approx(27.0)
    assert a["mean_matches"] == pytest.approx(51.0)
    # Recall@1 per query: a 1, 1, 0; b 1, 1 -> scene a 66.67, b 100, ALL 80 (pooled, not 83.33).
    assert a["recall@k"] == pytest.approx(200 / 3, abs=1e-3)
    assert b["recall@k"] == pytest.approx(100.0)
    assert all_["recall@k"] == pytest.approx(80.0)
    assert (table["k"] == 1).all()
    # All-pairs protocol: here every query has one pair, so it equals the best-pair AUC.
    assert all_["auc@5_all"] == pytest.approx(all_["auc@5"]) and all_["auc@20_all"] == pytest.approx(52.0)
    # k = 1: AP@1 equals recall@1.
    assert all_["mAP@k"] == pytest.approx(80.0) and a["mAP@k"] == pytest.approx(200 / 3, abs=1e-3)
    numeric = table.drop(columns=["method", "scene"]).astype(float).to_numpy()
    assert np.isfinite(numeric).all()


def test_summarize_all_pairs_protocol_counts_every_pair(tmp_path):
    entry = _scene(tmp_path, "vop", "s", ["x", "y", "z"], None, [
        ["x", "y", 100, 90, 1.0, 1.0, 1.0],  # best pair of x: error 1
        ["x", "z", 50, 10, 1.0, 40.0, 40.0],  # a bad second pair
        ["y", "x", 80, 70, 1.0, 3.0, 2.0],
        ["y", "z", 0, 0, float("nan"), math.inf, math.inf],  # failed
    ])
    # As the pose stage writes it: a failed pair's threshold is "nan", its errors "inf".
    rows = Path(entry["pose_csv"]).read_text().replace(",,inf,inf", ",nan,inf,inf")
    Path(entry["pose_csv"]).write_text(rows)
    assert ",nan,inf,inf" in rows
    table = summarize([entry], tmp_path / "auc.csv").set_index("scene")
    assert table.loc["s", "auc@20"] == pytest.approx(pose_auc([1.0, 3.0])[2])
    assert table.loc["s", "auc@20_all"] == pytest.approx(pose_auc([1.0, 40.0, 3.0, math.inf])[2])
    assert table.loc["s", "auc@20_all"] < table.loc["s", "auc@20"]


def test_summarize_cli_and_no_overlap(tmp_path):
    entry = _scene(tmp_path, "vop", "posed_only", ["x", "y"], None, [
        ["x", "y", 10, 8, 1.0, 1.0, 1.0], ["y", "x", 10, 8, 1.0, 2.0, 2.0]])
    entries_json = tmp_path / "entries.json"
    entries_json.write_text(json.dumps([entry]))
    out = tmp_path / "auc.csv"
    assert vop_main(["table", "--entries", str(entries_json), "--out", str(out)]) == 0
    table = pd.read_csv(out, keep_default_na=False)
    assert table["scene"].tolist() == ["posed_only", "ALL"]
    # No overlap in the ground truth: recall is left empty, never a made-up number.
    assert table["recall@k"].tolist() == ["", ""] and table["mAP@k"].tolist() == ["", ""]
    assert table["auc@20"].iloc[0] == pytest.approx(pose_auc([1.0, 2.0])[2])


def test_summarize_bad_pose_csv_names_file(tmp_path):
    entry = _scene(tmp_path, "vop", "s", ["x", "y"], None, [["x", "y", 10, 8, 1.0, 1.0, 1.0]])
    pd.DataFrame({"query": ["x"], "db": ["y"]}).to_csv(entry["pose_csv"], index=False)
    with pytest.raises(ValueError, match="pose.csv.*missing column"):
        summarize([entry], tmp_path / "auc.csv")
    assert not (tmp_path / "auc.csv").exists()


def test_k_is_what_was_retrieved_and_the_overlap_source_is_logged(tmp_path, caplog):
    # k = 5 configured; a 3-image scene can only give 2 per query (retrieval clamps it), a 7-image one 5
    small = _scene(tmp_path, "cls", "small", ["a", "b", "c"], np.eye(3), [
        [q, d, 10, 8, 1.0, 1.0, 1.0] for q in "abc" for d in "abc" if d != q])
    names = [f"i{n}" for n in range(7)]
    large = _scene(tmp_path, "cls", "large", names, np.eye(7), [
        [q, d, 10, 8, 1.0, 1.0, 1.0] for q in names for d in [n for n in names if n != q][:5]])
    for entry in (small, large):
        entry["k"] = 5
    # the small scene's overlap came from the pose-only fallback: the table's log says so
    gt = read_gt(small["gt_h5"])
    gt.overlap_source, gt.overlap_info = "poses", {"fallback_reason": "only 12 points triangulated"}
    write_gt(small["gt_h5"], gt)
    with caplog.at_level(logging.INFO, logger="vop.metrics"):
        table = summarize([small, large], tmp_path / "auc.csv")
    assert table.set_index("scene")["k"].to_dict() == {"large": 5, "small": 2, "ALL": "2-5"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and small["gt_h5"] in warnings[0]
    assert "camera poses alone" in warnings[0] and "only 12 points triangulated" in warnings[0]
