"""The workflow end to end: snakemake on a tiny synthetic dataset, caching, and reruns after a config change."""

import copy
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from vop import io, reference
from vop.cli import main as vop_main

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

pytestmark = pytest.mark.workflow

TINY_CONFIG = {
    "datasets": {
        "tiny": {
            "source": "synthetic",
            "scenes": ["room_a", "room_b"],
            "synthetic": {"seed": 3, "num_images": 8, "width": 320, "height": 240},
            "backbone": "dense_sift",
            "methods": ["vop", "vop_identity", "cls", "oracle", "random", "verify"],
        },
        "tiny_train": {
            "source": "synthetic",
            "scenes": ["train_a", "train_b"],
            "synthetic": {"seed": 4, "num_images": 8, "width": 320, "height": 240, "textures": "train"},
            "backbone": "dense_sift",
            "methods": [],
        },
    },
    "backbones": {"dense_sift": {"batch_size": 4}},
    "encoders": {
        "identity": {"type": "identity"},
        "vop_tiny": {"type": "vop", "backbone": "dense_sift", "train": {"datasets": ["tiny_train"], "epochs": 3}},
    },
    "labels": {"pairs_per_bin": 5, "num_negative": 5, "stride": 4},
    "methods": {
        "vop": {"type": "vop", "encoder": "vop_tiny", "k": 3, "prefilter": 5, "radius": 0.2, "tfidf": True},
        "vop_identity": {"type": "vop", "encoder": "identity", "k": 3, "prefilter": 5, "radius": "auto"},
        "cls": {"type": "cls", "k": 3},
        "oracle": {"type": "oracle", "k": 3},
        "random": {"type": "random", "k": 3, "seed": 0},
        "verify": {"type": "verify", "first_stage": "cls", "shortlist": 5, "k": 3, "min_inliers": 15},
    },
    "local_features": {"max_keypoints": 2048},
    "matching": {"ratio": 0.8},
    "pose": {"threshold_px": 1.0},
    "metrics": {"overlap_tau": 0.1},
}


def snakemake(workdir: Path, *args: str) -> str:
    cmd = [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{out[-6000:]}"
    return out


def job_counts(dry_run_output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}."""
    table = dry_run_output.split("Job stats:")[1]
    counts = {}
    for line in table.splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    counts.pop("total", None)
    return counts


def write_config(workdir: Path, config: dict) -> None:
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def test_table_has_every_method_scene_and_all_row(tiny_run):
    table = pd.read_csv(tiny_run / "results/tiny/auc.csv")
    methods = ["vop", "vop_identity", "cls", "oracle", "random", "verify"]
    expected = [(m, s) for m in methods for s in ["room_a", "room_b", "ALL"]]
    assert list(zip(table["method"], table["scene"])) == expected
    numeric = table.drop(columns=["method", "scene"])
    assert all(math.isfinite(v) for v in numeric.to_numpy().ravel())
    all_rows = table[table.scene == "ALL"].set_index("method")
    assert all_rows.loc["oracle", "recall@k"] == pytest.approx(100.0)
    assert all_rows.loc["oracle", "recall@k"] >= all_rows.loc["random", "recall@k"]
    assert (all_rows["num_queries"] == 16).all()  # 2 scenes x 8 images, no query dropped
    # the ETH3D layout the synthetic generator writes, read back by the ETH3D reader
    scene = tiny_run / "resources/tiny/room_a"
    assert len(list((scene / "images/dslr_images_undistorted").glob("*.JPG"))) == 8
    pairs = (tiny_run / "results/tiny/room_a/vop/pairs.txt").read_text().splitlines()
    assert len(pairs) == 8 * 3 and all(p.split()[0] != p.split()[1] for p in pairs)


def test_encoder_is_trained_once_on_the_training_scenes(tiny_run):
    history = pd.read_csv(tiny_run / "results/encoders/vop_tiny/history.csv")
    assert list(history["epoch"]) == [1, 2, 3] and history["train_loss"].notna().all()
    assert (tiny_run / "results/tiny_train/train_a/labels.h5").exists()
    assert not (tiny_run / "results/tiny_train/auc.csv").exists()  # a training-only dataset has no table
    # the trained head's embeddings: 256-d, unit length
    embeddings = tiny_run / "results/tiny/room_a/embeddings-vop_tiny.h5"
    names = io.list_h5_names(embeddings)
    assert len(names) == 8
    with h5py.File(embeddings, "r") as f:
        patches = f[names[0]]["patch_descriptors"][()].astype(np.float32)
    assert patches.shape == (256, 256)
    np.testing.assert_allclose(np.linalg.norm(patches, axis=1), 1.0, atol=1e-2)


def test_rerun_does_nothing(tiny_run):
    out = snakemake(tiny_run, "results/tiny/auc.csv")
    assert "Nothing to be done" in out


def copy_run(tiny_run, name, config):
    workdir = tiny_run.parent / name
    shutil.copytree(tiny_run, workdir, symlinks=True)  # keeps mtimes and .snakemake metadata
    write_config(workdir, config)
    return workdir


def test_reordering_config_keys_reruns_nothing(tiny_run):
    reordered = yaml.safe_load(yaml.safe_dump(TINY_CONFIG, sort_keys=True))
    out = snakemake(copy_run(tiny_run, "tiny_sorted", reordered), "-n", "results/tiny/auc.csv")
    assert "Nothing to be done" in out


def test_changing_vop_prefilter_reruns_only_vop(tiny_run):
    config = copy.deepcopy(TINY_CONFIG)
    config["methods"]["vop"]["prefilter"] = 4
    out = snakemake(copy_run(tiny_run, "tiny_changed", config), "-n", "results/tiny/auc.csv")
    # vop's shards of the scenes' matches stores update (for its new pairs); no other method's pose reruns
    assert job_counts(out) == {"retrieve": 2, "matches": 2, "pose": 2, "auc_table": 1}
    outputs = " ".join(line for line in out.splitlines() if line.strip().startswith("output:"))
    assert "results/tiny/room_a/vop/pairs.txt" in outputs and "results/tiny/room_b/vop/pose.csv" in outputs
    assert all(f"/{m}/" not in outputs for m in ["vop_identity", "cls", "oracle", "random", "verify"])


def _config_error(workdir: Path, config: dict) -> list[str]:
    """Snakemake's output on a bad config, from the line that starts the error."""
    write_config(workdir, config)
    cmd = [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "-n"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = (proc.stdout + proc.stderr).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Config error: "))
    assert all("Using workflow specific profile" in line for line in lines[:start])  # nothing before the error
    return lines[start:]


def test_config_typo_is_reported_on_the_first_line_with_the_fix(tmp_path):
    config = copy.deepcopy(TINY_CONFIG)
    config["methods"]["vop"]["prefiltr"] = config["methods"]["vop"].pop("prefilter")
    lines = _config_error(tmp_path, config)
    assert lines[0] == "Config error: methods.vop.prefiltr: unknown key; did you mean 'prefilter'?"
    assert lines[1].startswith("  allowed here: type, k, encoder, prefilter, radius")
    assert lines[-1] == "  (in config/config.yaml)" and len(lines) == 3  # no schema dump, no traceback
    # The checks across blocks (vop.workflow) lead the same way.
    config["methods"]["vop"]["prefilter"] = config["methods"]["vop"].pop("prefiltr")
    config["methods"]["vop"]["encoder"] = "vop_tiyn"
    lines = _config_error(tmp_path, config)
    assert lines == ["Config error: methods.vop.encoder: 'vop_tiyn' is not under `encoders:`; did you mean 'vop_tiny'?",
                     "  under `encoders:` now: identity, vop_tiny; name one of them or add 'vop_tiyn' there"]


def test_vop_pairs_equal_the_independent_reference(tiny_run, capsys):
    # Every scene's vop pairs, recomputed from embeddings-*.h5 and retrieval.json by vop.reference
    # (exact prefilter, a faiss range search per query and loops over patches).
    assert vop_main(["check", str(tiny_run / "results/tiny")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all("24 pairs equal" in line for line in lines)


def test_retrieve_mode_ranks_queries_against_the_other_images(tiny_run):
    config = copy.deepcopy(TINY_CONFIG)
    config["datasets"]["tiny"].update(mode="retrieve", queries="*/IMG_000[0-2].JPG")
    workdir = copy_run(tiny_run, "tiny_retrieve", config)
    out = snakemake(workdir, "-n", "results/tiny/auc.csv")
    # features and encoders are reused; verify's first stage, the stores and every method rerun
    assert job_counts(out) == {"retrieve": 12, "first_stage": 2, "matches": 12, "pose": 12, "auc_table": 1}
    snakemake(workdir, "results/tiny/auc.csv")
    for method in ("vop", "oracle", "verify"):
        pairs = io.read_pairs(workdir / f"results/tiny/room_a/{method}/pairs.txt")
        queries = sorted({q for q, _ in pairs})
        assert queries == [f"dslr_images_undistorted/IMG_000{i}.JPG" for i in range(3)]
        assert len(pairs) == 3 * 3 and not {d for _, d in pairs} & set(queries)
    assert reference.check_method_dir(workdir / "results/tiny/room_a/vop")[0]
    # Relevance counts database images only: the oracle, which ranks the database by overlap, gets 100.
    table = pd.read_csv(workdir / "results/tiny/auc.csv").set_index(["method", "scene"])
    assert table.loc[("oracle", "ALL"), "recall@k"] == pytest.approx(100.0)
    assert table.loc[("oracle", "ALL"), "mAP@k"] == pytest.approx(100.0)
    assert (table.xs("ALL", level="scene")["num_queries"] == 6).all()  # 3 queries x 2 scenes
    shortlist = io.read_pairs(workdir / "results/tiny/room_a/verify/shortlist.txt")
    verified = io.read_pairs(workdir / "results/tiny/room_a/verify/pairs.txt")
    assert len(shortlist) == 3 * 5 and len(verified) == 3 * 3 and set(verified) <= set(shortlist)


PROGRESS = re.compile(r" INFO vop\.[\w.]+: (?P<desc>[\w -]+): (?P<done>\d+)/(?P<total>\d+) \((?P<percent>\d+)%\) "
                      r"(?:(?P<rate>[\d.]+) (?P<unit>[\w ]+)/s, (?P<left>\w+) left"
                      r"|in \w+, (?P<final>[\d.]+) [\w ]+/s)$")


@pytest.mark.parametrize("log, desc, unit", [
    ("logs/tiny/room_a/generate_scene.log", "render", "images"),
    ("logs/tiny/room_a/features-dense_sift.log", "features", "images"),
    ("logs/tiny_train/train_a/patch_labels.log", "labels", "pairs"),
    ("logs/encoders/vop_tiny/train_encoder.log", "training", "batches"),
    ("logs/tiny/room_a/embeddings-vop_tiny.log", "embeddings", "images"),
    ("logs/tiny/room_a/vop/retrieve.log", "voting", "image pairs"),
    ("logs/tiny/room_a/local_features.log", "local features", "images"),
    ("logs/tiny/room_a/*/pose.log", "pose", "pairs"),
])
def test_long_stages_log_progress_with_a_rate_and_time_left(tiny_run, log, desc, unit):
    if "*" in log:  # a scene's methods share their pose estimates: whichever method's job runs first estimates
        logs = sorted(tiny_run.glob(log))  # the most pairs (the later ones only theirs not seen yet)
        assert len(logs) > 1
        log = max(logs, key=lambda p: sum(map(bool, map(PROGRESS.search, p.read_text().splitlines()))))
        log = log.relative_to(tiny_run)
    text = (tiny_run / log).read_text()
    assert "\r" not in text  # log lines, not a bar's carriage returns
    found = [m for m in map(PROGRESS.search, text.splitlines()) if m and m["desc"] == desc]
    assert found, f"{log}: no progress lines of {desc!r}:\n{text[-2000:]}"
    *steps, last = found
    assert steps and len(found) <= 21  # every 5% (the tiny run takes seconds: no 30 s lines), and the end
    for step in steps:
        assert step["unit"] == unit and float(step["rate"]) > 0 and step["left"]
    assert [int(m["done"]) for m in found] == sorted({int(m["done"]) for m in found})  # counts only go up
    assert last["done"] == last["total"] and last["percent"] == "100" and float(last["final"]) > 0
    if desc == "pose":  # the unordered pairs this job estimated (others' estimates are shared), counted in the
        assert 0 < int(last["total"]) <= 8 * 3  # parent as the workers' rows come back
