"""The matches store and the verify method in the workflow: each pair matched once per scene, reruns that
match only what a change adds, and verify's ranking from the store (the tiny run of test_workflow.py)."""

import copy
import math
import re

import numpy as np
import pandas as pd
import pytest
from test_workflow import TINY_CONFIG, copy_run, job_counts, snakemake

from vop import io
from vop.local_features import read_local_features
from vop.match_store import canonical_pair, read_matches, stored_pairs, unique_pairs
from vop.verification import verified_inliers

pytestmark = pytest.mark.workflow

SCENES = ["room_a", "room_b"]
METHODS = ["vop", "vop_identity", "cls", "oracle", "random", "verify"]


def method_pairs(run, scene, method):
    """What a method's shard holds: its pairs (verify: its first stage's ranking, which pose may reach)."""
    name = "first_stage/pairs.txt" if method == "verify" else "pairs.txt"
    return io.read_pairs(run / f"results/tiny/{scene}/{method}/{name}")


def shard_log(run, scene, method):
    text = (run / f"logs/tiny/{scene}/{method}/matches.log").read_text()
    found = re.search(r"(\d+) unordered pairs: (\d+) reused, (\d+) from the scene's other stores, (\d+) matched",
                      text)
    return dict(zip(["needed", "reused", "shared", "matched"], (int(v) for v in found.groups())))


def test_each_pair_any_stage_needs_is_matched_once_per_scene(tiny_run):
    for scene in SCENES:
        ordered, union = 0, set()
        for method in METHODS:
            pairs = method_pairs(tiny_run, scene, method)
            ordered += len(pairs)
            union |= set(unique_pairs(pairs))
            shard = tiny_run / f"results/tiny/{scene}/{method}/matches.h5"
            assert stored_pairs(shard) == sorted(unique_pairs(pairs))
        logs = [shard_log(tiny_run, scene, method) for method in METHODS]
        # every unordered pair of the scene matched by exactly one shard's job, the others copied it
        assert sum(log["matched"] for log in logs) == len(union)
        assert all(log["needed"] == log["reused"] + log["shared"] + log["matched"] for log in logs)
        assert ordered == 8 * (5 * 3 + 5) and len(union) < 0.3 * ordered
        # and each unordered pair that some method's poses need is estimated once per scene
        scene_dir, logs_dir = tiny_run / f"results/tiny/{scene}", tiny_run / f"logs/tiny/{scene}"
        posed = set(unique_pairs(p for m in METHODS for p in io.read_pairs(scene_dir / m / "pairs.txt")))
        estimated = [int(re.search(r"(\d+) estimated", (logs_dir / m / "pose.log").read_text()).group(1))
                     for m in METHODS]
        assert sum(estimated) == len(posed)


def test_verify_ranks_by_the_inliers_of_the_stored_matches(tiny_run):
    for scene in SCENES:
        scene_dir = tiny_run / f"results/tiny/{scene}"
        scores = pd.read_csv(scene_dir / "verify/scores.csv")
        first = pd.read_csv(scene_dir / "verify/first_stage/scores.csv")
        cls = pd.read_csv(scene_dir / "cls/scores.csv")
        # the first stage is cls retrieving the shortlist's depth
        assert first.groupby("query").size().eq(5).all()
        top3 = first[first["rank"] < 3]
        assert list(zip(top3["query"], top3["db"])) == list(zip(cls["query"], cls["db"]))
        names = list(dict.fromkeys([*first["query"], *first["db"]]))
        features = read_local_features(scene_dir / "local_features.h5", names)
        pairs = list(zip(first["query"], first["db"]))
        matches = read_matches(scene_dir / "verify/matches.h5", pairs, features)
        inliers = {}
        for q, d in pairs:
            a, b = canonical_pair(q, d)
            m = matches[(a, b)]
            kpts0, kpts1 = features[a]["keypoints"][m[:, 0]], features[b]["keypoints"][m[:, 1]]
            inliers[(q, d)] = verified_inliers(kpts0, kpts1, 4.0)
        assert [inliers[(q, d)] for q, d in zip(scores["query"], scores["db"])] == scores["score"].tolist()
        for query, ranked in scores.groupby("query", sort=False):
            shortlist = first[first["query"] == query]
            key = [(-(inliers[(query, d)] >= 15), -inliers[(query, d)] if inliers[(query, d)] >= 15 else 0, r)
                   for d, r in zip(shortlist["db"], shortlist["rank"])]
            expected = [d for _, d in sorted(zip(key, shortlist["db"]))][:3]
            assert ranked["db"].tolist() == expected
        assert max(inliers.values()) > 30  # overlapping rooms verify


def test_a_changed_method_reruns_only_the_pairs_it_adds(tiny_run):
    # vop and cls only (the other shards deleted, so that vop's new pairs are new to the scene), vop's k 3 -> 4
    config = copy.deepcopy(TINY_CONFIG)
    config["datasets"]["tiny"]["methods"] = ["vop", "cls"]
    config["methods"]["vop"]["k"] = 4
    workdir = copy_run(tiny_run, "tiny_vop_k4", config)
    for method in ["vop_identity", "oracle", "random", "verify"]:
        for scene in SCENES:
            (workdir / f"results/tiny/{scene}/{method}/matches.h5").unlink()
    out = snakemake(workdir, "-n", "results/tiny/auc.csv")
    assert job_counts(out) == {"retrieve": 2, "matches": 2, "pose": 2, "auc_table": 1}
    before = {s: {m: set(unique_pairs(method_pairs(workdir, s, m))) for m in ("vop", "cls")} for s in SCENES}
    cls_poses = {p: p.stat().st_mtime_ns for p in workdir.glob("results/tiny/*/cls/*")}
    snakemake(workdir, "results/tiny/auc.csv")
    matched = 0
    for scene in SCENES:
        now = set(unique_pairs(method_pairs(workdir, scene, "vop")))
        own, cls = before[scene]["vop"], before[scene]["cls"]
        assert shard_log(workdir, scene, "vop") == {"needed": len(now), "reused": len(now & own),
                                                    "shared": len((now - own) & cls), "matched": len(now - own - cls)}
        matched += len(now - own - cls)
        assert stored_pairs(workdir / f"results/tiny/{scene}/vop/matches.h5") == sorted(now)
        assert len(pd.read_csv(workdir / f"results/tiny/{scene}/vop/pose.csv")) == 8 * 4
    assert matched > 0  # vop's 4th neighbours bring pairs neither shard had
    assert {p: p.stat().st_mtime_ns for p in cls_poses} == cls_poses  # cls: nothing rerun
    assert "Nothing to be done" in snakemake(workdir, "results/tiny/auc.csv")


def test_matching_and_shortlist_changes_rerun_exactly_their_readers(tiny_run):
    config = copy.deepcopy(TINY_CONFIG)
    config["matching"]["ratio"] = 0.7  # every reader of the store: each method's poses, and verify
    out = snakemake(copy_run(tiny_run, "tiny_ratio", config), "-n", "results/tiny/auc.csv")
    assert job_counts(out) == {"matches": 12, "retrieve": 2, "pose": 12, "auc_table": 1}
    retrieved = [line for line in out.splitlines() if "retrieval.json" in line and "output:" in line]
    assert retrieved and all("/verify/" in line for line in retrieved)
    config = copy.deepcopy(TINY_CONFIG)
    config["methods"]["verify"]["shortlist"] = 4
    out = snakemake(copy_run(tiny_run, "tiny_shortlist", config), "-n", "results/tiny/auc.csv")
    assert job_counts(out) == {"first_stage": 2, "matches": 2, "retrieve": 2, "pose": 2, "auc_table": 1}
    config = copy.deepcopy(TINY_CONFIG)
    config["pose"]["threshold_px"] = [1.0, 2.0]  # estimation only: nothing is matched again
    out = snakemake(copy_run(tiny_run, "tiny_sweep", config), "-n", "results/tiny/auc.csv")
    assert job_counts(out) == {"pose": 12, "auc_table": 1}


def test_verify_rows_in_the_table(tiny_run):
    table = pd.read_csv(tiny_run / "results/tiny/auc.csv").set_index(["method", "scene"])
    verify, cls = table.loc[("verify", "ALL")], table.loc[("cls", "ALL")]
    assert verify["num_queries"] == cls["num_queries"] == 16 and verify["k"] == 3
    assert all(math.isfinite(verify[c]) for c in ("auc@10", "recall@k", "mAP@k", "auc@10_all"))
    assert np.isfinite(table.loc["verify"]["mean_inliers"]).all()
