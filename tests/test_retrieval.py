import json
import math

import h5py
import numpy as np
import pytest

from vop import io, prefilter, reference, retrieval, voting
from vop.conf import ClsConf, OracleConf, RandomConf, VopConf, method_conf
from vop.datasets import split_queries
from vop.voting import PatchStore


def vop_conf(**kwargs) -> VopConf:
    return VopConf(encoder="identity", **kwargs)


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
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def scene_with_ties(n=30, m=16, d=8, seed=0):
    """Random patches, plus exact duplicate images (tied votes) and an image whose patches match nothing."""
    rng = np.random.default_rng(seed)
    patches = unit(rng.normal(size=(n, m, d)))
    patches[7] = patches[3]  # duplicates: equal votes from every query
    patches[12] = patches[3]
    patches[20, :, :] = 0
    patches[20, :, 0] = 1  # every patch the same direction: few neighbourhoods
    glob = unit(patches.mean(1) + rng.normal(scale=0.3, size=(n, d)))
    glob[12] = glob[7]  # tied global similarity too
    return glob, patches


def store(x, **kwargs):
    return PatchStore.from_array(x, **kwargs)


@pytest.mark.parametrize("tfidf", [True, False])
@pytest.mark.parametrize("tau", [0.0, 0.3, 0.95])
def test_votes_equal_brute_force(tfidf, tau):
    rng = np.random.default_rng(0)
    query = unit(rng.normal(size=(1, 12, 6)))
    cands = unit(rng.normal(size=(5, 12, 6)))
    cands[2, 3] = query[0, 4]  # an exact match: similarity 1
    got = voting.vote_scores(store(query), store(cands), np.arange(5)[None], tau, tfidf)[0]
    np.testing.assert_allclose(got, brute_force_votes(query[0], cands, tau, tfidf), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(reference.votes_one_query(query[0], cands, tau, tfidf), got, rtol=1e-5, atol=1e-5)


def test_tfidf_ignores_patches_that_match_every_candidate():
    # A query patch similar to a patch of every candidate carries no information: log(P/m_p) = 0.
    q = np.array([[[1.0, 0.0], [0.0, 1.0]]], np.float32)
    cands = np.array([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]], np.float32)
    scores = voting.vote_scores(store(q), store(cands), np.array([[0, 1]]), 0.5, True)[0]
    # patch 0 matches both candidates (weight 0); patch 1 matches only candidate 1: n_p=1, w=1/2*log(2)
    np.testing.assert_allclose(scores, [0.0, 0.5 * math.log(2)], rtol=1e-6)


def test_a_query_shard_reads_only_its_queries_and_their_candidates_and_votes_as_the_whole_scene():
    glob, patches = scene_with_ties(n=60)
    cand, _ = prefilter.prefilter(glob, glob, 4, exclude=np.arange(60))
    whole = voting.vote_scores(store(patches, chunk_size=8), store(patches, chunk_size=8), cand, 0.5, True)
    read: list[int] = []
    counting = voting.PatchStore(lambda ids: (read.extend(ids.tolist()), patches[ids])[1], 60, chunk_size=8)
    shard = np.arange(20, 30)
    votes = voting.vote_scores(counting, counting, cand[shard], 0.5, True, shared=True, query_ids=shard)
    np.testing.assert_array_equal(votes, voting.vote_scores(s := store(patches, chunk_size=8), s, cand, 0.5, True,
                                                             shared=True)[shard])
    np.testing.assert_allclose(votes, whole[shard], rtol=1e-5, atol=1e-6)
    assert set(read) == {*shard.tolist(), *cand[shard].ravel().tolist()} < set(range(60))


@pytest.mark.parametrize("tfidf", [True, False])
@pytest.mark.parametrize("chunk_size, blocks_per_batch", [(64, 16), (7, 3), (1, 1)])
def test_batched_register_votes_equal_per_query_reference(tfidf, chunk_size, blocks_per_batch):
    glob, patches = scene_with_ties()
    tau = 0.5
    cand, _ = prefilter.prefilter(glob, glob, 9, exclude=np.arange(len(glob)))
    s = store(patches, chunk_size=chunk_size)
    shared = voting.vote_scores(s, s, cand, tau, tfidf, shared=True, blocks_per_batch=blocks_per_batch)
    unshared = voting.vote_scores(s, s, cand, tau, tfidf, blocks_per_batch=blocks_per_batch)
    want = np.stack([reference.votes_one_query(patches[q], patches[cand[q]], tau, tfidf) for q in range(len(glob))])
    np.testing.assert_allclose(shared, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(unshared, want, rtol=1e-5, atol=1e-5)
    assert (want == 0).any(axis=1).any() and (want > 0).any()  # the data has empty neighbourhoods and votes


def test_register_chunks_are_loaded_a_few_times_each():
    glob, patches = scene_with_ties(n=40)
    cand, _ = prefilter.prefilter(glob, glob, 10, exclude=np.arange(40))
    s = store(patches, chunk_size=10)
    voting.vote_scores(s, s, cand, 0.5, True, shared=True)
    # 4 chunks, tiles (i <= j) visited row by row with 2 chunks cached: 0,1,2,3 then 1,2 (at most 2 reloads
    # per row chunk); never once per pair.
    assert 4 <= s.chunk_loads <= 4 + 2 * 3


@pytest.mark.parametrize("tfidf", [True, False])
def test_vop_pairs_equal_reference_register_mode(tfidf):
    glob, patches = scene_with_ties()
    conf = vop_conf(k=4, prefilter=9, radius=0.5, tfidf=tfidf, chunk_images=8)
    ranking = retrieval.retrieve_vop(conf, glob, patches)
    want = reference.retrieve_vop(glob, patches, np.arange(30), np.arange(30), 4, 9, 0.5, tfidf)
    assert [list(d) for d in ranking.db] == [dbs for _, dbs, _ in want]
    np.testing.assert_allclose(ranking.score, [v for _, _, v in want], rtol=1e-5, atol=1e-6)


def test_vop_retrieve_mode_equals_reference_and_never_returns_queries():
    glob, patches = scene_with_ties()
    queries, database = np.arange(0, 30, 3), np.setdiff1d(np.arange(30), np.arange(0, 30, 3))
    conf = vop_conf(k=3, prefilter=6, radius=0.5, chunk_images=5)
    ranking = retrieval.retrieve_vop(conf, glob, patches, queries=queries, database=database)
    want = reference.retrieve_vop(glob, patches, queries, database, 3, 6, 0.5, True)
    assert list(ranking.queries) == list(queries)
    assert [list(d) for d in ranking.db] == [dbs for _, dbs, _ in want]
    assert not np.isin(ranking.db, queries).any()
    assert ranking.info["mode"] == "retrieve"


def test_duplicate_images_tie_by_prefilter_order_and_query_is_excluded():
    glob, patches = scene_with_ties()
    ranking = retrieval.retrieve_vop(vop_conf(k=3, prefilter=9, radius=0.5), glob, patches)
    # Image 3's duplicates 7 and 12 are its best matches; the query itself is never returned.
    assert set(ranking.db[3][:2]) == {7, 12}
    assert all(q not in d for q, d in zip(ranking.queries, ranking.db))
    # 7 and 12 are identical: from any query their votes are equal, so the one earlier in prefilter order
    # (equal global similarity: the lower index) comes first.
    for q, db in zip(ranking.queries, ranking.db):
        if 7 in db and 12 in db and q not in (3, 7, 12):
            assert list(db).index(7) < list(db).index(12)


def test_tight_radius_falls_back_to_prefilter_order_and_says_so():
    glob, patches = scene_with_ties()
    # radius 0.001 -> tau 0.999: no two random patches are that similar (the duplicates are, for 3, 7, 12)
    ranking = retrieval.retrieve_vop(vop_conf(k=3, prefilter=5, radius=0.001), glob, patches)
    cls = retrieval.retrieve_cls(ClsConf(k=3), glob)
    no_votes = [q for q in range(30) if q not in (3, 7, 12)]
    for q in no_votes:
        np.testing.assert_array_equal(ranking.db[q], cls.db[q])
    assert ranking.info["queries_without_votes"] == len(no_votes)


def test_vop_reranks_by_patch_overlap():
    rng = np.random.default_rng(2)
    n, m, d = 8, 16, 32
    patches = unit(rng.normal(size=(n, m, d)))
    patches[5, :10] = patches[0, :10]  # image 5 shares 10 patches with image 0
    patches[3, :4] = patches[0, 6:10]  # image 3 shares 4
    glob = np.ones((n, d), np.float32) + rng.normal(scale=1e-3, size=(n, d)).astype(np.float32)
    ranking = retrieval.retrieve_vop(vop_conf(k=2, prefilter=7, radius=0.2, tfidf=True), glob, patches)
    assert list(ranking.db[0]) == [5, 3]


def test_cls_excludes_query_and_sorts():
    glob = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.5, 0.5]], np.float32)
    r = retrieval.retrieve_cls(ClsConf(k=2), glob)
    assert list(r.db[0]) == [1, 3]
    assert list(r.db[2]) == [3, 1]


def test_ivf_prefilter_above_threshold_finds_the_exact_neighbours():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(60, 32))
    desc = unit(centres[rng.integers(0, 60, 3000)] + rng.normal(scale=0.4, size=(3000, 32)))
    assert isinstance(prefilter.build_index(desc, ivf_min_images=1000), __import__("faiss").IndexIVFFlat)
    exact, _ = prefilter.prefilter(desc[:200], desc, 10, exclude=np.arange(200))
    approx, sim = prefilter.prefilter(desc[:200], desc, 10, exclude=np.arange(200), ivf_min_images=1000, ivf_nprobe=16)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall > 0.95
    assert not (approx == np.arange(200)[:, None]).any()
    assert (np.diff(sim, axis=1) <= 1e-6).all()


def test_oracle_and_random():
    ov = np.array([[1, 0.2, 0.9], [0.2, 1, 0.1], [0.9, 0.1, 1]], np.float32)
    r = retrieval.retrieve_oracle(OracleConf(k=1), ov)
    assert [list(d) for d in r.db] == [[2], [0], [0]]
    a = retrieval.retrieve_random(RandomConf(k=3, seed=4), 10, scene="s")
    b = retrieval.retrieve_random(RandomConf(k=3, seed=4), 10, scene="s")
    c = retrieval.retrieve_random(RandomConf(k=3, seed=5), 10, scene="s")
    assert (a.db == b.db).all() and (a.db != c.db).any()
    assert all(q not in d for q, d in zip(a.queries, a.db))
    with pytest.raises(ValueError, match="no 3D points|none"):
        retrieval.retrieve_oracle(OracleConf(k=1), None, scene="x")


def test_retrieve_mode_oracle_and_random_use_the_database_only():
    ov = np.random.default_rng(0).uniform(size=(6, 6))
    queries, database = np.array([0, 1]), np.array([2, 3, 4, 5])
    r = retrieval.retrieve_oracle(OracleConf(k=2), ov, queries, database)
    assert [list(d) for d in r.db] == [list(database[np.argsort(-ov[q, database])[:2]]) for q in queries]
    rnd = retrieval.retrieve_random(RandomConf(k=4), 6, queries, database)
    assert all(sorted(d) == [2, 3, 4, 5] for d in rnd.db)


def test_k_and_prefilter_larger_than_scene_are_clamped_and_one_image_scene_fails():
    glob = unit(np.random.default_rng(0).normal(size=(3, 4)))
    r = retrieval.retrieve_cls(ClsConf(k=10), glob)
    assert r.db.shape == (3, 2) and r.info["k_clamped"] == 2
    patches = unit(np.random.default_rng(1).normal(size=(3, 5, 4)))
    v = retrieval.retrieve_vop(vop_conf(k=10, prefilter=20, radius=0.5), glob, patches)
    assert v.db.shape == (3, 2) and v.info["k_clamped"] == 2 and v.info["prefilter_clamped"] == 2
    with pytest.raises(ValueError, match="scene 'lonely' has 1 image"):
        retrieval.retrieve_cls(ClsConf(k=1), glob[:1], scene="lonely")
    with pytest.raises(ValueError, match="scene 'lonely' has 1 image"):
        retrieval.retrieve_vop(vop_conf(k=1, prefilter=1), glob[:1], patches[:1], scene="lonely")


def test_split_queries_by_glob():
    names = ["query/iphone7/a.jpg", "database/cutouts/b.jpg", "query/iphone7/c.jpg", "database/cutouts/d.jpg"]
    q, d = split_queries(names, "retrieve", "query/*")
    assert list(q) == [0, 2] and list(d) == [1, 3]
    q, d = split_queries(names, "register")
    assert list(q) == list(d) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="matches 0 of 4 images"):
        split_queries(names, "retrieve", "queries/*", scene="s")
    with pytest.raises(ValueError, match="needs the dataset's `queries`"):
        split_queries(names, "retrieve", None)


def test_auto_radius_is_rounded_median():
    rng = np.random.default_rng(3)
    patches = unit(rng.normal(size=(20, 16, 8)) + 2.0)
    radius, median = voting.auto_radius(store(patches), seed=0, num_samples=20000)
    assert radius == pytest.approx(round(median, 1))
    assert 0.1 <= radius <= 1.0


def write_scene(tmp_path, n=5, m=4, d=8):
    names = [f"img_{i}.jpg" for i in range(n)]
    rng = np.random.default_rng(0)
    ov = rng.uniform(size=(n, n)).astype(np.float32)
    gt = io.GroundTruth(names, np.tile(np.eye(3), (n, 1, 1)), np.tile(np.eye(4), (n, 1, 1)),
                        np.tile([64, 48], (n, 1)), (ov + ov.T) / 2)
    io.write_gt(tmp_path / "gt.h5", gt)
    io.write_image_groups(tmp_path / "emb.h5", {
        name: {"global_descriptor": rng.normal(size=d).astype(np.float32),
               "patch_descriptors": rng.normal(size=(m, d)).astype(np.float16)} for name in names})
    return names


def test_h5_store_streams_float16_chunks_and_matches_the_array(tmp_path):
    names = write_scene(tmp_path, n=11, m=6, d=8)
    h5_store = PatchStore.from_h5(tmp_path / "emb.h5", names, chunk_size=4)
    with h5py.File(tmp_path / "emb.h5") as f:
        raw = np.stack([f[n]["patch_descriptors"][()] for n in names])
        glob = np.stack([f[n]["global_descriptor"][()] for n in names])
    with h5py.File(tmp_path / "emb.h5") as f:
        assert f[names[0]]["patch_descriptors"].dtype == np.float16  # stored half precision, read as float32
    np.testing.assert_array_equal(h5_store.read(np.array([2, 3])), raw[[2, 3]].astype(np.float32))
    a = retrieval.retrieve_vop(vop_conf(k=3, prefilter=6, radius=0.6), glob, h5_store)
    b = retrieval.retrieve_vop(vop_conf(k=3, prefilter=6, radius=0.6), glob, raw.astype(np.float32))
    assert (a.db == b.db).all()
    np.testing.assert_allclose(a.score, b.score, rtol=1e-6)
    with pytest.raises(KeyError, match="missing"):
        PatchStore.from_h5(tmp_path / "emb.h5", [*names, "ghost.jpg"])


def test_run_method_writes_contract_files(tmp_path):
    names = write_scene(tmp_path)
    method = method_conf({"type": "vop", "k": 2, "prefilter": 3, "radius": "auto", "tfidf": True, "encoder": "e"})
    retrieval.run_method(method, "s", tmp_path / "gt.h5", tmp_path / "out", embeddings_h5=tmp_path / "emb.h5")
    pairs = io.read_pairs(tmp_path / "out" / "pairs.txt")
    assert [q for q, _ in pairs] == [n for n in names for _ in range(2)]
    info = json.loads((tmp_path / "out" / "retrieval.json").read_text())
    assert info["tau"] == pytest.approx(1 - info["radius"]) and info["prefilter"] == 3
    assert info["mode"] == "register" and info["num_queries"] == 5
    lines = (tmp_path / "out" / "scores.csv").read_text().splitlines()
    assert lines[0] == "query,db,rank,score,prefilter_score,enclosure,concentration" and len(lines) == 11
    # The independent check recomputes the same pairs from the files alone.
    (tmp_path / "embeddings-e.h5").symlink_to(tmp_path / "emb.h5")
    equal, message = reference.check_method_dir(tmp_path / "out")
    assert equal and "10 predicted NSO equal" in message, message
    # a predicted NSO the range search does not give is found out
    scores = (tmp_path / "out" / "scores.csv").read_text().splitlines()
    row = scores[1].split(",")
    row[-1] = f"{1.0 - float(row[-1]):.6g}"  # a concentration of c becomes 1 - c
    (tmp_path / "out" / "scores.csv").write_text("\n".join([scores[0], ",".join(row), *scores[2:]]) + "\n")
    equal, message = reference.check_method_dir(tmp_path / "out")
    assert not equal and "predicted NSO differs" in message


def test_run_method_retrieve_mode(tmp_path):
    write_scene(tmp_path, n=6)
    method = method_conf({"type": "cls", "k": 2})
    retrieval.run_method(method, "s", tmp_path / "gt.h5", tmp_path / "out", features_h5=tmp_path / "emb.h5",
                         mode="retrieve", queries="img_[01].jpg")
    pairs = io.read_pairs(tmp_path / "out" / "pairs.txt")
    assert [q for q, _ in pairs] == ["img_0.jpg"] * 2 + ["img_1.jpg"] * 2
    assert all(d not in ("img_0.jpg", "img_1.jpg") for _, d in pairs)
    info = json.loads((tmp_path / "out" / "retrieval.json").read_text())
    assert info["mode"] == "retrieve" and info["queries"] == "img_[01].jpg" and info["num_queries"] == 2
