"""The data rules end to end: MegaDepth archives downloaded from a loopback server, extracted and read;
a folder of images through retrieval to a table that says "no ground truth"; a missing root or network
named clearly, and only for the dataset that needs it."""

import socket
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml
from test_datasets import write_megadepth
from test_download import ArchiveServer

from vop import labels
from vop.conf import LabelsConf
from vop.datasets import open_scene, synthetic
from vop.io import read_gt, write_pairs
from vop.labels import read_labels
from vop.metrics import SUMMARY_COLUMNS, summarize_without_ground_truth

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.workflow


def run_snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tar_folder(out: Path, root: Path, folder: str) -> bytes:
    with tarfile.open(out, "w:gz") as tf:
        tf.add(root / folder, arcname=folder)
    return out.read_bytes()


def test_data_rules_for_real_dataset_layouts(tmp_path):
    # MegaDepth scene 0015 in the glue-factory layout, served as the archives the config's url names
    synthetic.generate_scene(tmp_path / "eth3d" / "room", seed=5, num_images=5, width=96, height=72)
    md = tmp_path / "md_layout"
    ref = write_megadepth(tmp_path / "eth3d", md)
    photos = tmp_path / "photos"
    photos.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    with ArchiveServer() as server:
        for folder in ("scene_info", "Undistorted_SfM", "depth_undistorted"):
            server.files[f"megadepth/{folder}.tar.gz"] = tar_folder(tmp_path / f"{folder}.tar.gz", md, folder)
        eth3d_zip = tmp_path / "ETH3D_undistorted.zip"
        with zipfile.ZipFile(eth3d_zip, "w") as zf:
            for path in sorted((tmp_path / "eth3d" / "room").rglob("*")):
                if path.is_file():
                    zf.write(path, f"ETH3D_undistorted/{path.relative_to(tmp_path / 'eth3d').as_posix()}")
        server.files["eth3d/ETH3D_undistorted.zip"] = eth3d_zip.read_bytes()
        server.cut["megadepth/Undistorted_SfM.tar.gz"] = 2000  # the first response drops mid-way
        server.cut_times["megadepth/Undistorted_SfM.tar.gz"] = 1
        config = {
            "datasets": {
                "e": {"source": "eth3d", "url": f"{server.url}/eth3d/", "scenes": ["room"],
                      "backbone": "dense_sift", "methods": ["cls"]},
                "md": {"source": "megadepth", "url": f"{server.url}/megadepth/", "scenes": ["0015"],
                       "backbone": "dense_sift", "methods": ["cls"]},
                "md_offline": {"source": "megadepth", "url": f"http://127.0.0.1:{free_port()}/megadepth",
                               "scenes": ["0015"], "backbone": "dense_sift", "methods": ["cls"]},
                "photos": {"source": "folder", "root": str(photos), "backbone": "dense_sift",
                           "methods": ["cls", "random"]},
                "gone": {"source": "colmap", "root": "../no/such/folder", "backbone": "dense_sift",
                         "methods": ["cls"]},
            },
            "backbones": {"dense_sift": {"batch_size": 4}},
            "encoders": {"identity": {"type": "identity"},
                         "vop_md": {"type": "vop", "backbone": "dense_sift", "train": {"datasets": ["md"]}}},
            "methods": {"cls": {"type": "cls", "k": 2}, "random": {"type": "random", "k": 2, "seed": 0}},
            "labels": {"pairs_per_bin": 5, "num_negative": 2, "stride": 2},
        }
        (work / "config").mkdir()
        (work / "config" / "config.yaml").write_text(yaml.safe_dump(config))
        # md downloads (one connection drops), extracts and reads, depth included for the encoder's training
        # labels; md_offline has no server to talk to
        proc = run_snakemake(work, "--keep-going", "results/md/0015/labels.h5", "results/md_offline/0015/gt.h5",
                             "results/e/room/gt.h5")
        ranges = [r["range"] for r in server.requests if r["path"].endswith("Undistorted_SfM.tar.gz")]
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and (work / "results/md/0015/gt.h5").exists(), out[-4000:]
    assert ranges == [None, "bytes=2000-"]  # resumed after the dropped connection

    # ETH3D: the zip downloaded, one scene extracted, read as the same scene
    e_gt = read_gt(work / "results/e/room/gt.h5")
    np.testing.assert_allclose(e_gt.T_w2cam, ref.T_w2cam)
    assert (work / "resources/e/ETH3D_undistorted/room/images" / e_gt.names[0]).is_file()

    gt = read_gt(work / "results/md/0015/gt.h5")
    np.testing.assert_allclose(gt.T_w2cam, ref.T_w2cam)
    np.testing.assert_allclose(gt.overlap, ref.overlap, atol=1e-6)
    assert (work / "resources/md/Undistorted_SfM/0015/images" / gt.names[0]).is_file()
    assert sorted(p.name for p in (work / "resources/md/archives").iterdir()) == [
        "Undistorted_SfM.tar.gz", "depth_undistorted.tar.gz", "scene_info.tar.gz"]  # no .part left
    # MegaDepth as training data: the labels come from its depth maps, as from the same scene in ETH3D layout
    md_labels = read_labels(work / "results/md/0015/labels.h5")
    eth = open_scene("eth3d", tmp_path / "eth3d", "room")
    eth.write_ground_truth(tmp_path / "eth_gt.h5")
    eth_labels = labels.scene_labels(eth, tmp_path / "eth_gt.h5", tmp_path / "eth_labels.h5",
                                     LabelsConf(pairs_per_bin=5, num_negative=2, stride=2))
    assert len(md_labels["positives"]) > 0
    np.testing.assert_array_equal(md_labels["positives"], eth_labels["positives"])
    log = (work / "logs/md/download_Undistorted_SfM.tar.gz.log").read_text()
    assert "connection lost" in log and "resuming at" in log and "archive test passed" in log

    # No network: the download names the URL, the destination and the config key that skips it
    log = next((work / "logs/md_offline").glob("download_*.log")).read_text()
    assert "no network or server unreachable" in log and "resources/md_offline/archives/" in log
    assert "`datasets.md_offline.root`" in log and not list((work / "resources/md_offline").rglob("*.tar.gz*"))

    # A folder of images: retrieval and the table, no pose jobs; an empty one is refused at start
    proc = run_snakemake(work, "-n", "results/photos/auc.csv")
    assert proc.returncode != 0 and f"{photos}: no images" in proc.stdout + proc.stderr
    for name in ("a.jpg", "b.jpg"):
        cv2.imwrite(str(photos / name), np.full((24, 32, 3), 200, np.uint8))
    proc = run_snakemake(work, "-n", "results/photos/auc.csv")
    jobs = proc.stdout
    assert proc.returncode == 0 and "auc_table" in jobs and "retrieve" in jobs, proc.stderr[-3000:]
    assert "rule pose:" not in jobs and "local_features" not in jobs

    # A missing root fails when its dataset is requested, with the key to fix (other targets planned fine)
    proc = run_snakemake(work, "-n", "results/gone/auc.csv")
    assert proc.returncode != 0
    assert "datasets.gone.root" in proc.stdout + proc.stderr


def test_table_without_ground_truth(tmp_path):
    for scene, queries in [("b", ["x.jpg", "y.jpg", "z.jpg"]), ("a", ["p.jpg", "q.jpg"])]:
        write_pairs(tmp_path / scene / "pairs.txt", [(q, d) for q in queries for d in queries if d != q])
    entries = [{"method": m, "scene": s, "pairs_txt": tmp_path / s / "pairs.txt", "k": 2}
               for m in ("cls", "random") for s in ("b", "a")]
    summarize_without_ground_truth(entries, tmp_path / "auc.csv")
    table = pd.read_csv(tmp_path / "auc.csv", dtype=str, keep_default_na=False)
    assert list(table.columns) == SUMMARY_COLUMNS
    assert table[["method", "scene", "num_queries"]].values.tolist() == [
        ["cls", "a", "2"], ["cls", "b", "3"], ["cls", "ALL", "5"],
        ["random", "a", "2"], ["random", "b", "3"], ["random", "ALL", "5"]]
    metrics = [c for c in SUMMARY_COLUMNS if c not in ("method", "scene", "num_queries", "k")]
    assert "mean_matches" in metrics and (table[metrics] == "no ground truth").all().all()  # every metric cell
    # k is what each query got: scene a's 2 images retrieve 1 each although k = 2 was asked
    assert table["k"].tolist() == ["1", "2", "1-2"] * 2
