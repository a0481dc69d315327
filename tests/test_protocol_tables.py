"""What the other protocols need from retrieval (deep and full rankings, the oracle by relevance,
match_pairs.txt) and their tables, hand-computed."""

import json

import numpy as np
import pandas as pd
import pytest
from test_protocol_sources import revisitop_layout, vpr_split, write_jpg
from test_retrieval import unit, write_scene

from vop import io, reference, retrieval
from vop.conf import ClsConf, OracleConf, method_conf
from vop.datasets import open_scene
from vop.protocols import gl3d, tables
from vop.protocols.plots import vpr_curves

# ---------------------------------------------------------------------------------------------------
# Retrieval for the protocols


def test_vop_deeper_than_its_prefilter_continues_in_prefilter_order():
    rng = np.random.default_rng(1)
    patches = unit(rng.normal(size=(12, 6, 8)))
    glob = unit(patches.mean(1) + rng.normal(scale=0.3, size=(12, 8)))
    conf = method_conf({"type": "vop", "k": 3, "prefilter": 3, "radius": 0.7, "encoder": "e"})
    head = retrieval.retrieve_vop(conf, glob, patches)
    with pytest.raises(ValueError, match="k=7 exceeds prefilter=3"):
        retrieval.retrieve_vop(conf.replace(k=7), glob, patches)
    deep = retrieval.retrieve_vop(conf.replace(k=7), glob, patches, extend=True)
    order = retrieval.retrieve_cls(ClsConf(k=7), glob)  # the prefilter's order
    np.testing.assert_array_equal(deep.db[:, :3], head.db)  # the reranked head is unchanged
    for q in range(12):
        rest = [d for d in order.db[q] if d not in head.db[q]]
        assert deep.db[q, 3:].tolist() == rest[:4]
    assert np.isnan(deep.score[:, 3:]).all() and np.isfinite(deep.prefilter_score).all()
    assert deep.info["ranked_in_prefilter_order_after"] == 3


def test_run_method_depth_replaces_k_and_the_reference_agrees(tmp_path):
    names = write_scene(tmp_path, n=8)
    method = method_conf({"type": "vop", "k": 2, "prefilter": 3, "radius": 0.9, "encoder": "e"})
    retrieval.run_method(method, "s", tmp_path / "gt.h5", tmp_path / "out", embeddings_h5=tmp_path / "emb.h5", k="all")
    pairs = io.read_pairs(tmp_path / "out" / "pairs.txt")
    assert len(pairs) == 8 * 7 and all(sorted(d for q2, d in pairs if q2 == q) == sorted(set(names) - {q})
                                       for q in names)  # every other image, once
    info = json.loads((tmp_path / "out" / "retrieval.json").read_text())
    assert info["k"] == 7 and info["dataset_k"] == "all"
    (tmp_path / "embeddings-e.h5").symlink_to(tmp_path / "emb.h5")
    equal, message = reference.check_method_dir(tmp_path / "out")  # the straightforward way, head and tail
    assert equal, message
    retrieval.run_method(ClsConf(k=2), "s", tmp_path / "gt.h5", tmp_path / "cls", features_h5=tmp_path / "emb.h5", k=5)
    assert len(io.read_pairs(tmp_path / "cls" / "pairs.txt")) == 8 * 5


def test_oracle_ranks_by_relevance_then_database_order():
    # 6 images; queries 4 and 5 against database 0..3
    relevance = io.Relevance(np.array([4, 4, 4, 5, 5]), np.array([2, 0, 5, 3, 1]),
                             np.array([1.0, 3.0, 9.0, 2.0, 2.0], np.float32))
    r = retrieval.retrieve_oracle(OracleConf(k=3), None, np.array([4, 5]), np.arange(4), relevance=relevance,
                                  num_images=6)
    # query 4: grade 3 (0), grade 1 (2), then the rest in order (1); image 5 is no database image
    # query 5: equal grades in database order (1, 3), then 0
    assert r.db.tolist() == [[0, 2, 1], [1, 3, 0]]
    assert r.score.tolist() == [[3.0, 1.0, 0.0], [2.0, 2.0, 0.0]]
    # register mode: the query never ranks itself, whatever its grade
    rel = io.Relevance(np.array([0, 0]), np.array([0, 2]), np.array([5.0, 1.0], np.float32))
    r = retrieval.retrieve_oracle(OracleConf(k=2), None, relevance=rel, num_images=3)
    assert r.db[0].tolist() == [2, 1]
    with pytest.raises(ValueError, match="needs ground-truth overlap"):
        retrieval.retrieve_oracle(OracleConf(k=2), None, np.array([0]), np.arange(1, 3))


# ---------------------------------------------------------------------------------------------------
# VPR


def vpr_run(tmp_path, method, lists):
    root = tmp_path / "vpr"
    vpr_split(root)
    scene = open_scene("vpr", root)
    gt = scene.ground_truth()
    io.write_gt(tmp_path / "gt.h5", gt)
    names = gt.names
    pairs = [(names[q], names[d]) for q, dbs in lists.items() for d in dbs]
    io.write_pairs(tmp_path / method / "pairs.txt", pairs)
    return {"method": method, "scene": "street", "pairs_txt": tmp_path / method / "pairs.txt",
            "gt_h5": tmp_path / "gt.h5",
            "mode": "retrieve", "queries": "queries/*", "k": 20, "reader": {"source": "vpr", "root": str(root)}}


def test_vpr_table_counts_queries_without_positives_as_misses(tmp_path):
    # database (names order) db0, db3, db1, db2; query 4 has db0, db3, db1 within 25 m, query 5 none
    a = vpr_run(tmp_path, "a", {4: [3, 2, 0, 1], 5: [0, 1, 2, 3]})  # first positive of query 4 at rank 1
    b = vpr_run(tmp_path, "b", {4: [0, 3, 2, 1], 5: [3, 2, 1, 0]})  # at rank 0
    table = tables.vpr_table([a, b], tmp_path / "vpr.csv")
    assert list(table.columns) == ["method", "scene", "num_queries", "R@1", "R@5", "R@10", "R@20"]
    assert table.values.tolist() == [
        ["a", "street", 2, 0.0, 50.0, 50.0, 50.0], ["a", "ALL", 2, 0.0, 50.0, 50.0, 50.0],
        ["b", "street", 2, 50.0, 50.0, 50.0, 50.0], ["b", "ALL", 2, 50.0, 50.0, 50.0, 50.0]]
    curves = vpr_curves([a, b])
    assert curves["a"].tolist() == [0.0] + [50.0] * 19 and curves["b"][0] == 50.0
    io.write_pairs(a["pairs_txt"], [(n, m) for n, m in io.read_pairs(a["pairs_txt"])][:3])
    with pytest.raises(ValueError, match=r"has 3 retrieved images, the protocol needs 4"):
        tables.vpr_table([a], tmp_path / "vpr.csv")


# ---------------------------------------------------------------------------------------------------
# revisitop


def test_revisitop_table_hand_computed(tmp_path):
    revisitop_layout(tmp_path)
    reader = {"source": "revisitop", "root": str(tmp_path), "scene": "roxford5k"}
    gt = open_scene(**reader).ground_truth()
    io.write_gt(tmp_path / "gt.h5", gt)
    rankings = {"query/q0.jpg": [1, 4, 3, 0, 2], "query/q1.jpg": [4, 0, 1, 2, 3]}
    io.write_pairs(tmp_path / "pairs.txt", [(q, f"im{d}.jpg") for q, dbs in rankings.items() for d in dbs])
    entries = [{"method": "m", "scene": s, "pairs_txt": tmp_path / "pairs.txt", "gt_h5": tmp_path / "gt.h5",
                "reader": reader, "mode": "retrieve", "queries": "query/*"} for s in ("x", "y")]
    table = tables.revisitop_table(entries, tmp_path / "revisitop.csv").set_index("scene")
    # q0 easy: positives im0, im2 at positions 3 and 4, junk (junk + hard: im1, im2, im3) at 0, 2 and 4 ->
    # ranks 1, 2: AP = (0 + 1/2)/2 * 1/2 + (1/2 + 2/3)/2 * 1/2 = 5/12; q1: im4 first, AP 1
    expected = {
        "mAP_E": (5 / 12 + 1) / 2, "mAP_M": (37 / 72 + 1) / 2, "mAP_H": 0.25,  # hard: only q0 has a positive
        "mP@1_E": 0.5, "mP@5_E": (2 / 3 + 1) / 2, "mP@10_E": (2 / 3 + 1) / 2,
        "mP@1_M": 0.5, "mP@5_M": (3 / 4 + 1) / 2, "mP@10_M": (3 / 4 + 1) / 2,
        "mP@1_H": 0.0, "mP@5_H": 0.5, "mP@10_H": 0.5,
    }
    for scene in ("x", "y", "ALL"):
        for column, value in expected.items():
            assert table.loc[scene, column] == pytest.approx(100 * value, abs=1e-4), (scene, column)
    assert table.loc["ALL", "num_queries"] == 4
    io.write_pairs(tmp_path / "pairs.txt", [(q, f"im{d}.jpg") for q, dbs in rankings.items() for d in dbs[:4]])
    with pytest.raises(ValueError, match="the protocol needs the whole database"):
        tables.revisitop_table(entries, tmp_path / "revisitop.csv")


# ---------------------------------------------------------------------------------------------------
# GL3D


def gl3d_scene(tmp_path, pairs="0 1\n0 2\n1 0\n"):
    names = [f"images/{k}.jpg" for k in range(4)]
    for name in names:
        write_jpg(tmp_path / name)
    (tmp_path / "list.txt").write_text("\n".join(names) + "\n")
    options = {"image_list": "list.txt"}
    if pairs is not None:
        (tmp_path / "pairs.txt").write_text(pairs)
        options["gt_pairs"] = "pairs.txt"
    reader = {"source": "image_list", "root": str(tmp_path), "scene": None, **options}
    io.write_gt(tmp_path / "gt.h5", open_scene(**reader).ground_truth())
    return names, reader


def test_match_pairs_from_a_run_and_mirrors_map(tmp_path):
    names, reader = gl3d_scene(tmp_path)
    lists = {0: [3, 1, 2], 1: [0, 2, 3], 2: [3, 0, 1], 3: [2, 1, 0]}
    io.write_pairs(tmp_path / "run" / "pairs.txt", [(names[q], names[d]) for q, dbs in lists.items() for d in dbs])
    rows = [(names[q], names[d], r, f"{0.9 - 0.1 * r:.6g}", "0.5")
            for q, dbs in lists.items() for r, d in enumerate(dbs)]
    rows[0] = (*rows[0][:3], "4.5", "nan")  # a vote score above 1: the self pair takes the best score
    io.write_csv(tmp_path / "run" / "scores.csv", ["query", "db", "rank", "score", "prefilter_score"], rows)
    tables.write_match_pairs(tmp_path / "run" / "pairs.txt", tmp_path / "run" / "scores.csv", tmp_path / "gt.h5",
                             tmp_path / "run" / "match_pairs.txt")
    lines = (tmp_path / "run" / "match_pairs.txt").read_text().splitlines()
    assert lines[:5] == ["0 0 4.5", "0 3 4.5", "0 1 0.8", "0 2 0.7", "1 1 1.0"]
    assert len(lines) == 16
    entry = {"method": "m", "scene": "c", "match_pairs": tmp_path / "run" / "match_pairs.txt",
             "gt_h5": tmp_path / "gt.h5",
             "reader": reader, "k": 4}
    # query 0: [3, 1, 2] against {1, 2}: 0 + .5 * (0 + 1/2)/2 + .5 * (1/2 + 2/3)/2 = 5/12; query 1: [0, ..]: 1
    table = tables.gl3d_table([entry], tmp_path / "gl3d.csv")
    assert list(table.columns) == ["method", "scene", "num_queries", "mAP@4"]
    assert table.values.tolist()[0][:3] == ["m", "c", 2]
    assert table.loc[0, "mAP@4"] == pytest.approx(100 * (5 / 12 + 1) / 2, abs=1e-4)
    # K counts the self pair: K = 2 keeps one image per query, query 0's 3 (a miss), query 1's 0 (a hit)
    short = tables.gl3d_table([{**entry, "k": 2}], tmp_path / "gl3d.csv")
    assert short.loc[0, "mAP@2"] == pytest.approx(50.0)
    assert gl3d.map_at_k([[0, 3, 1, 2], [1, 0], [], []], [[1, 2], [0], [], []], 4) == pytest.approx((5 / 12 + 1) / 2)


def test_gl3d_table_without_ground_truth_says_so(tmp_path):
    names, reader = gl3d_scene(tmp_path, pairs=None)
    gl3d.write_match_pairs(tmp_path / "mp.txt", [[1], [0], [3], [2]], [[1.0], [1.0], [1.0], [1.0]])
    entry = {"method": "m", "scene": "c", "match_pairs": tmp_path / "mp.txt", "gt_h5": tmp_path / "gt.h5",
             "reader": reader, "k": 200}
    tables.gl3d_table([entry], tmp_path / "gl3d.csv")
    table = pd.read_csv(tmp_path / "gl3d.csv", dtype=str)
    assert table[["method", "scene"]].values.tolist() == [["m", "c"], ["m", "ALL"]]
    assert (table[["num_queries", "mAP@200"]] == "no ground truth").all().all()

