import json
import math

import numpy as np
import pytest
import torch

from vop import io, retrieval


def brute_force_votes(query, candidates, tau, tfidf):
    """The formula of the pipeline issue, written as plain loops over patches."""
    num_cand = len(candidates)
    n_d = len(query)
    scores = [0.0] * num_cand
    for p in range(n_d):
        n_p, holders, sums = 0, 0, [0.0] * num_cand
        for c in range(num_cand):
            hit = False
            for r in range(len(candidates[c])):
                s = float(np.dot(query[p], candidates[c][r]))
                if s > tau:
                    n_p += 1
                    sums[c] += s
                    hit = True
            holders += hit
        if tfidf:
            w = 0.0 if holders == 0 else n_p / n_d * max(0.0, math.log(num_cand / holders))
        else:
            w = 1.0
        for c in range(num_cand):
            scores[c] += w * sums[c]
    return np.array(scores)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("tfidf", [True, False])
@pytest.mark.parametrize("tau", [0.0, 0.3, 0.95])
def test_votes_equal_brute_force(tfidf, tau):
    rng = np.random.default_rng(0)
    query = unit(rng.normal(size=(12, 6))).astype(np.float32)
    cands = unit(rng.normal(size=(5, 12, 6))).astype(np.float32)
    cands[2, 3] = query[4]  # an exact match: similarity 1
    got = retrieval.vote_scores(torch.from_numpy(query), torch.from_numpy(cands), tau, tfidf).numpy()
    want = brute_force_votes(query, cands, tau, tfidf)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_tfidf_ignores_patches_that_match_every_candidate():
    # A query patch similar to a patch of every candidate carries no information: log(P/m_p) = 0.
    q = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    cands = np.array([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]], np.float32)
    scores = retrieval.vote_scores(torch.from_numpy(q), torch.from_numpy(cands), 0.5, True).numpy()
    # patch 0 matches both candidates (weight 0); patch 1 matches only candidate 1: n_p=1, w=1/2*log(2)
    np.testing.assert_allclose(scores, [0.0, 0.5 * math.log(2)], rtol=1e-6)


def test_vop_ties_and_no_votes_fall_back_to_prefilter_order():
    rng = np.random.default_rng(1)
    n = 6
    glob = unit(rng.normal(size=(n, 8))).astype(np.float32)
    patches = unit(rng.normal(size=(n, 4, 8))).astype(np.float32)
    # radius 0.001 -> tau 0.999: no random patch pair is that similar, so every score is 0
    ranking = retrieval.retrieve_vop(glob, patches, k=3, prefilter=5, radius=0.001, tfidf=True)
    cls = retrieval.retrieve_cls(glob, k=3)
    for q in range(n):
        np.testing.assert_array_equal(ranking.db[q], cls.db[q])
        assert q not in ranking.db[q]
    assert ranking.info["queries_without_votes"] == n


def test_vop_reranks_by_patch_overlap():
    rng = np.random.default_rng(2)
    n, m, d = 8, 16, 32
    patches = unit(rng.normal(size=(n, m, d))).astype(np.float32)
    patches[5, :10] = patches[0, :10]  # image 5 shares 10 patches with image 0
    patches[3, :4] = patches[0, 6:10]  # image 3 shares 4
    glob = np.ones((n, d), np.float32) + rng.normal(scale=1e-3, size=(n, d)).astype(np.float32)
    ranking = retrieval.retrieve_vop(glob, patches, k=2, prefilter=7, radius=0.2, tfidf=True)
    assert list(ranking.db[0]) == [5, 3]


def test_cls_excludes_query_and_sorts():
    glob = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.5, 0.5]], np.float32)
    r = retrieval.retrieve_cls(glob, k=2)
    assert list(r.db[0]) == [1, 3]
    assert list(r.db[2]) == [3, 1]


def test_oracle_and_random():
    ov = np.array([[1, 0.2, 0.9], [0.2, 1, 0.1], [0.9, 0.1, 1]], np.float32)
    r = retrieval.retrieve_oracle(ov, k=1)
    assert [list(d) for d in r.db] == [[2], [0], [0]]
    a = retrieval.retrieve_random(10, 3, seed=4, scene="s")
    b = retrieval.retrieve_random(10, 3, seed=4, scene="s")
    c = retrieval.retrieve_random(10, 3, seed=5, scene="s")
    assert all((x == y).all() for x, y in zip(a.db, b.db))
    assert any((x != y).any() for x, y in zip(a.db, c.db))
    assert all(q not in d for q, d in enumerate(a.db))
    with pytest.raises(ValueError, match="no 3D points|none"):
        retrieval.retrieve_oracle(None, 1, scene="x")


def test_k_larger_than_scene_is_clamped_and_one_image_scene_fails():
    glob = unit(np.random.default_rng(0).normal(size=(3, 4))).astype(np.float32)
    r = retrieval.retrieve_cls(glob, k=10)
    assert all(len(d) == 2 for d in r.db) and r.info["k_clamped"] == 2
    with pytest.raises(ValueError, match="scene 'lonely' has 1 image"):
        retrieval.retrieve_cls(glob[:1], k=1, scene="lonely")


def test_auto_radius_is_rounded_median():
    rng = np.random.default_rng(3)
    patches = unit(rng.normal(size=(20, 16, 8)) + 2.0).astype(np.float32)
    radius, median = retrieval.auto_radius(patches, seed=0, num_samples=20000)
    assert radius == pytest.approx(round(median, 1))
    assert 0.1 <= radius <= 1.0


def test_run_method_writes_contract_files(tmp_path):
    names = [f"img_{i}.jpg" for i in range(5)]
    rng = np.random.default_rng(0)
    ov = rng.uniform(size=(5, 5)).astype(np.float32)
    gt = io.GroundTruth(names, np.tile(np.eye(3), (5, 1, 1)), np.tile(np.eye(4), (5, 1, 1)),
                        np.tile([64, 48], (5, 1)), (ov + ov.T) / 2)
    io.write_gt(tmp_path / "gt.h5", gt)
    io.write_image_groups(tmp_path / "emb.h5", {
        n: {"global_descriptor": rng.normal(size=8).astype(np.float32),
            "patch_descriptors": rng.normal(size=(4, 8)).astype(np.float16)} for n in names})
    method = {"type": "vop", "k": 2, "prefilter": 3, "radius": "auto", "tfidf": True}
    retrieval.run_method(method, "s", tmp_path / "gt.h5", tmp_path / "out", embeddings_h5=tmp_path / "emb.h5")
    pairs = io.read_pairs(tmp_path / "out" / "pairs.txt")
    assert [q for q, _ in pairs] == [n for n in names for _ in range(2)]
    info = json.loads((tmp_path / "out" / "retrieval.json").read_text())
    assert info["tau"] == pytest.approx(1 - info["radius"]) and info["prefilter"] == 3
    lines = (tmp_path / "out" / "scores.csv").read_text().splitlines()
    assert lines[0] == "query,db,rank,score,prefilter_score" and len(lines) == 11
