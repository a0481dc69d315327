"""The sfm rules on the tiny workflow run: sfm.csv for every method and baseline, the sweep, caching, the export."""

import copy
import subprocess

import pandas as pd
import pycolmap
import pytest
from test_workflow import REPO, SNAKEMAKE, TINY_CONFIG, copy_run, job_counts, snakemake, write_config

from vop.colmap_database import read_counts
from vop.io import read_pairs
from vop.match_store import unique_pairs

pytestmark = pytest.mark.workflow

OWN = ["cls", "oracle", "random"]  # of the tiny run's methods: enough to compare, few reconstructions
METHODS = [*OWN, "exhaustive", "sequential"]


def sfm_config(sweep=(1, 3)):
    config = copy.deepcopy(TINY_CONFIG)
    config["datasets"]["tiny"]["methods"] = OWN
    config["methods"].update(exhaustive={"type": "exhaustive"}, sequential={"type": "sequential", "k": 3})
    config["sfm"] = {"sweep": list(sweep)}
    return config


@pytest.fixture(scope="module")
def sfm_run(tiny_run):
    workdir = copy_run(tiny_run, "tiny_sfm", sfm_config())
    snakemake(workdir, "results/tiny/sfm.csv", "results/tiny/room_a/cls/colmap/database.db")
    return workdir


def test_sfm_table_has_every_method_and_baseline(sfm_run):
    table = pd.read_csv(sfm_run / "results/tiny/sfm.csv")
    assert sorted(set(table["method"])) == sorted(METHODS)
    assert set(table["scene"]) == {"room_a", "room_b", "ALL"} and len(table) == 3 * len(METHODS)
    scenes = table[table["scene"] != "ALL"].set_index(["method", "scene"])
    exhaustive = scenes.loc["exhaustive"]
    assert (exhaustive["k"] == 7).all() and (exhaustive["pairs"] == 28).all()
    assert (exhaustive["pairs_per_image"] == 7).all()
    assert scenes["registered_pct"].between(0, 100).all() and scenes["num_models"].ge(0).all()
    # k = 3 per query: at most 3 x 8 unordered pairs, at least 8 x 3 / 2
    cls = scenes.loc["cls"]
    assert cls["pairs"].between(12, 24).all() and (cls["pairs_per_image"] == 2 * cls["pairs"] / 8).all()
    # room_a's reference model is aligned to the true poses (room_b's 8 views share too little for 3 cameras)
    assert exhaustive.loc["room_a", "registered"] >= 3 and exhaustive.loc["room_a", "rot_within_20deg_pct"] > 0
    assert exhaustive.loc["room_a", "median_center_err_rel"] >= 0
    model = pycolmap.Reconstruction(sfm_run / "results/tiny/room_a/exhaustive/sfm/models/0")
    assert model.num_reg_images() == scenes.loc[("exhaustive", "room_a"), "registered"]
    every = table[table["scene"] == "ALL"].set_index("method")
    assert every.loc["cls", "registered"] == pytest.approx(cls["registered"].mean())
    assert (sfm_run / "results/tiny/plots/sfm.png").stat().st_size > 0


def test_sweep_cuts_each_ranking_at_its_depths(sfm_run):
    sweep = pd.read_csv(sfm_run / "results/tiny/sfm_sweep.csv")
    assert "exhaustive" not in set(sweep["method"]) and set(sweep["k"]) == {1, 3}
    for (method, scene), rows in sweep.groupby(["method", "scene"]):
        rows = rows.sort_values("k")
        assert rows["pairs"].is_monotonic_increasing, (method, scene)
    table = pd.read_csv(sfm_run / "results/tiny/sfm.csv").set_index(["method", "scene"])
    k3 = sweep[sweep["k"] == 3].set_index(["method", "scene"])
    for key in [("cls", "room_a"), ("oracle", "room_b")]:  # depth 3 is the method's own pairs
        assert k3.loc[key, "pairs"] == table.loc[key, "pairs"]


def test_changing_the_sweep_reruns_only_the_sweep(sfm_run):
    workdir = copy_run(sfm_run, "tiny_sfm_sweep", sfm_config(sweep=(1, 2)))
    out = snakemake(workdir, "-n", "results/tiny/sfm.csv")
    assert job_counts(out) == {"sfm_sweep": 2 * (len(METHODS) - 1), "sfm_table": 1}


def test_export_rule_writes_the_methods_pairs(sfm_run):
    counts = read_counts(sfm_run / "results/tiny/room_a/cls/colmap/database.db")
    pairs = unique_pairs(read_pairs(sfm_run / "results/tiny/room_a/cls/pairs.txt"))
    assert counts["images"] == 8 and counts["matched_pairs"] == len(pairs)
    assert counts["descriptors"] == counts["keypoints"] > 0 and counts["verified_pairs"] == len(pairs)


def test_a_baseline_missing_from_methods_is_named(tmp_path):
    config = sfm_config()
    del config["methods"]["sequential"]
    write_config(tmp_path, config)
    proc = subprocess.run([*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path), "-n",
                           "results/tiny/sfm.csv"], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "sfm.baselines: 'sequential' is not under `methods:`" in proc.stdout + proc.stderr
