"""The installed `vop` command, and a dataset source added from outside the package running through the
workflow with nothing but config."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from vop.cli import COMMANDS, build_parser
from vop.datasets import open_scene, synthetic

REPO = Path(__file__).resolve().parents[1]
VOP = Path(sys.executable).parent / "vop"


@pytest.mark.skipif(not VOP.exists(), reason="the package is not installed in this interpreter's environment")
def test_installed_console_script_answers_help():
    out = subprocess.run([str(VOP), "--help"], capture_output=True, text=True, check=True).stdout
    for stage in COMMANDS:
        assert stage in out
    pose = subprocess.run([str(VOP), "pose", "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--estimator", "--threshold-px", "--ratio", "--local-features"):
        assert flag in pose
    retrieve = subprocess.run([str(VOP), "retrieve", "vop", "--help"], capture_output=True, text=True,
                              check=True).stdout
    assert "--prefilter" in retrieve and "--chunk-images" in retrieve and "--tfidf, --no-tfidf" in retrieve
    module = subprocess.run([sys.executable, "-m", "vop", "--help"], capture_output=True, text=True, check=True)
    assert module.stdout == out


def test_flags_are_the_conf_fields_with_their_defaults():
    parser = build_parser()
    args = parser.parse_args(["local-features", "--image-dir", "i", "--names-from", "n", "--out", "o"])
    assert (args.extractor, args.max_keypoints, args.resize_max, args.root_sift) == ("opencv", 4096, 1600, True)
    args = parser.parse_args(["retrieve", "vop", "--gt", "g", "--embeddings", "e", "--out-dir", "o", "--k", "3",
                              "--encoder", "x", "--prefilter", "9", "--radius", "auto", "--no-tfidf"])
    assert (args.k, args.prefilter, args.radius, args.tfidf, args.ivf_nprobe) == (3, 9, "auto", False, 32)
    assert parser.parse_args(["retrieve", "vop", "--gt", "g", "--embeddings", "e", "--out-dir", "o", "--k", "3",
                              "--encoder", "x", "--prefilter", "9", "--radius", "0.25"]).radius == 0.25
    with pytest.raises(SystemExit):
        parser.parse_args(["pose", "--pairs", "p", "--gt", "g", "--local-features", "l", "--out", "o",
                           "--estimator", "magsac"])


TOY_SOURCE = '''
"""A toy dataset layout: {root}/{scene}/pics/*.JPG and {root}/{scene}/cameras.json (K, T_w2cam, size)."""
import json
from pathlib import Path

import numpy as np

from vop.datasets import SceneReader
from vop.geometry import pose_overlap
from vop.io import GroundTruth


class ToyScene(SceneReader):
    source = "toy"

    @property
    def image_dir(self) -> Path:
        return self.scene_dir / "pics"

    def input_files(self) -> list[Path]:
        return [self.scene_dir / "cameras.json", self.image_dir]

    def ground_truth(self) -> GroundTruth:
        cameras = json.loads((self.scene_dir / "cameras.json").read_text())
        names = sorted(cameras)
        K = np.array([cameras[n]["K"] for n in names])
        T = np.array([cameras[n]["T_w2cam"] for n in names])
        size = np.array([cameras[n]["size"] for n in names])
        return GroundTruth(names, K, T, size, pose_overlap(K, T, size))
'''


@pytest.mark.workflow
def test_a_source_registered_at_run_time_runs_through_the_workflow(tmp_path):
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "toy_source.py").write_text(textwrap.dedent(TOY_SOURCE))
    data = tmp_path / "toy_data" / "hall"
    synthetic.generate_scene(tmp_path / "render", seed=9, num_images=6, width=160, height=120)
    gt = open_scene("synthetic", tmp_path, "render").ground_truth()
    (data / "pics").mkdir(parents=True)
    cameras = {}
    for i, name in enumerate(gt.names):
        flat = Path(name).name
        shutil.copy(tmp_path / "render" / "images" / name, data / "pics" / flat)
        cameras[flat] = {"K": gt.K[i].tolist(), "T_w2cam": gt.T_w2cam[i].tolist(), "size": gt.image_size[i].tolist()}
    (data / "cameras.json").write_text(json.dumps(cameras))

    config = {
        "datasets": {"toy": {"source": "toy_source:ToyScene", "root": str(tmp_path / "toy_data"), "scenes": ["hall"],
                             "backbone": "dense_sift", "methods": ["cls", "oracle", "random"]}},
        "backbones": {"dense_sift": {"batch_size": 4}},
        "encoders": {"identity": {"type": "identity"}},
        "methods": {"cls": {"type": "cls", "k": 2}, "oracle": {"type": "oracle", "k": 2},
                    "random": {"type": "random", "k": 2}},
        "local_features": {"max_keypoints": 1024},
        "pose": {"threshold_px": 1.0},
    }
    work = tmp_path / "work"
    (work / "config").mkdir(parents=True)
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(work),
                           "--cores", "2", "results/toy/auc.csv"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    table = pd.read_csv(work / "results/toy/auc.csv").set_index(["method", "scene"])
    assert table.loc[("oracle", "ALL"), "recall@k"] == pytest.approx(100.0)
    assert table.loc[("cls", "hall"), "num_queries"] == 6
    assert np.isfinite(table["auc@20"]).all()
