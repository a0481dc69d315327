"""Scenes in shards (vop.shards): the plan, features linked from image shards, query shards that rank exactly
as one job, and the memory a shard's job asks for."""

import copy
import json
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest

from vop import io
from vop.prefilter import build_index, search
from vop.shards import job_memory_mb, link_features, plan, ranges


def test_ranges_cover_every_item_once_in_order():
    assert ranges(10, 3) == [[0, 3], [3, 6], [6, 9], [9, 10]]
    assert ranges(6, 3) == [[0, 3], [3, 6]] and ranges(2, 5) == [[0, 2]] and ranges(0, 4) == [[0, 0]]
    with pytest.raises(ValueError, match="images_per_job must be >= 1"):
        ranges(5, 0)
    shards = plan(10, 7, 4, "a.jpg")
    assert shards["images"] == [[0, 4], [4, 8], [8, 10]] and shards["queries"] == [[0, 4], [4, 7]]


def _write_features(path, names, rng):
    data = {}
    with h5py.File(path, "w") as f:
        for name in names:
            g = f.create_group(name)
            data[name] = rng.standard_normal((5, 8)).astype(np.float16)
            g["patch_descriptors"] = data[name]
            g["global_descriptor"] = rng.standard_normal(8).astype(np.float16)
    return data


def test_linked_features_read_as_one_file_and_move_with_the_results(tmp_path):
    rng = np.random.default_rng(0)
    scene = tmp_path / "results/d/s"
    (scene / "shards").mkdir(parents=True)
    data = _write_features(scene / "shards/features-0.h5", ["a.jpg", "sub/b.jpg"], rng)
    data |= _write_features(scene / "shards/features-1.h5", ["sub/c.jpg", "d.jpg"], rng)
    linked = scene / "features.h5"
    names = link_features([scene / "shards/features-0.h5", scene / "shards/features-1.h5"], linked)
    assert names == ["a.jpg", "sub/b.jpg", "d.jpg", "sub/c.jpg"]  # per shard, as it lists them
    assert linked.stat().st_size < 10_000  # links, not copies
    shutil.move(tmp_path / "results", tmp_path / "moved")  # relative links: the results move as a whole
    moved = tmp_path / "moved/d/s/features.h5"
    assert io.list_h5_names(moved) == sorted(data)
    stacked = io.read_stacked(moved, list(data), "patch_descriptors")
    np.testing.assert_array_equal(stacked, np.stack(list(data.values())))


def test_prefilter_scores_do_not_depend_on_how_many_queries_are_searched_together():
    # faiss's blocked products round differently for different query counts; a shard's scores must not
    rng = np.random.default_rng(1)
    db = rng.standard_normal((700, 96)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    queries = db[:300] + 0.05 * rng.standard_normal((300, 96)).astype(np.float32)
    queries[10] = queries[11]  # equal queries, and a database row duplicated: ties ordered by index
    db[5] = db[6]
    index = build_index(db)
    exclude = np.arange(300)
    whole_idx, whole_sim = search(index, queries, 20, exclude)
    for size in (1, 7, 128):
        parts = [search(index, queries[s:s + size], 20, exclude[s:s + size]) for s in range(0, 300, size)]
        np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), whole_idx)
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), whole_sim)
    assert not (whole_idx == exclude[:, None]).any()


def test_a_shard_job_asks_for_what_it_holds(tmp_path):
    features = tmp_path / "features.h5"
    with h5py.File(features, "w") as f:
        f["a.jpg/global_descriptor"] = np.zeros(384, np.float16)
        f["a.jpg/patch_descriptors"] = np.zeros((256, 128), np.float16)
    plan_path = tmp_path / "shards.json"
    io.write_json(plan_path, plan(10_000, 10_000, 500, "a.jpg"))
    mb = 2**20
    globals_bytes = 2 * 10_000 * 384 * 4
    assert job_memory_mb(features, plan_path, {"type": "cls", "k": 5}) == -(-globals_bytes // mb)
    vop = {"type": "vop", "k": 5, "encoder": "e", "prefilter": 50, "chunk_images": 2000}
    expected = globals_bytes + 2 * 2000 * 256 * 128 * 4 + 2 * 500 * 50 * 256 * 4
    assert job_memory_mb(features, plan_path, vop) == -(-expected // mb)
    with pytest.raises(FileNotFoundError) as missing:  # a dry run: Snakemake shows it as <TBD> for this file
        job_memory_mb(tmp_path / "none.h5", plan_path, {"type": "cls", "k": 5})
    assert missing.value.filename == str(tmp_path / "none.h5")
    # the scene's index job samples 1000 images' patches for vop's radius
    assert job_memory_mb(features, plan_path, None) == -(-(globals_bytes + 2 * 1000 * 256 * 128 * 4) // mb)


SHARDED_METHODS = ["vop_identity", "cls", "oracle", "random", "verify"]


@pytest.mark.workflow
def test_a_scene_in_shards_gives_the_same_results_as_one_job(tiny_run, tmp_path):
    # the tiny run's dataset again, in shards of 3 images (8 per scene: shards of 3, 3 and 2), for every
    # method that needs no training: every file it writes equals the one-job run's, byte for byte
    from test_workflow import TINY_CONFIG, job_counts, snakemake, write_config

    config = copy.deepcopy(TINY_CONFIG)
    config["datasets"]["tiny"] |= {"images_per_job": 3, "methods": SHARDED_METHODS}
    write_config(tmp_path, config)
    snakemake(tmp_path, "results/tiny/room_a/shards.json")  # the checkpoint: the dry run then sees the shards
    counts = job_counts(snakemake(tmp_path, "-n", "results/tiny/auc.csv"))
    # features: 3 shards per scene (room_b's plan is made during the run); retrieval: the index once per
    # (scene, method), vop_identity and cls ranked in 3 query shards each (verify's first stage in one job)
    assert counts["features_shard"] == 3 and counts["scene_index"] == 2 and counts["retrieve_shard"] == 6
    snakemake(tmp_path, "results/tiny/auc.csv")
    plans = [json.loads((tmp_path / f"results/tiny/{s}/shards.json").read_text()) for s in ("room_a", "room_b")]
    assert all(p["images"] == [[0, 3], [3, 6], [6, 8]] for p in plans)
    for scene in ("room_a", "room_b"):
        linked = tmp_path / f"results/tiny/{scene}/features-dense_sift.h5"
        with h5py.File(linked, "r") as f:
            assert all(isinstance(f.get(n, getlink=True), h5py.ExternalLink) for n in io.list_h5_names(linked))
        for method in SHARDED_METHODS:
            for name in ("pairs.txt", "scores.csv", "pose.csv"):
                ours = (tmp_path / f"results/tiny/{scene}/{method}/{name}").read_bytes()
                assert ours == (tiny_run / f"results/tiny/{scene}/{method}/{name}").read_bytes(), (scene, method, name)
            ours, one_job = (json.loads((run / f"results/tiny/{scene}/{method}/retrieval.json").read_text())
                             for run in (tmp_path, tiny_run))
            assert ours == one_job, (scene, method)
    table = pd.read_csv(tmp_path / "results/tiny/auc.csv").set_index(["method", "scene"])
    expected = pd.read_csv(tiny_run / "results/tiny/auc.csv").set_index(["method", "scene"]).loc[SHARDED_METHODS]
    pd.testing.assert_frame_equal(table.loc[SHARDED_METHODS], expected)
