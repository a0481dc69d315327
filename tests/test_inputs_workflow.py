"""Inputs are what the jobs read, end to end: replacing an image reruns exactly the jobs of its scene that
read images and what depends on them (a dry run says why); a truncated JPEG fails the run naming the file;
a name that pairs files cannot hold fails where it enters, at the reader."""

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_workflow import REPO, job_counts, snakemake, write_config

from vop.datasets import colmap, open_scene, synthetic

pytestmark = pytest.mark.workflow


def colmap_scene(out: Path, seed: int, points: bool = True) -> None:
    """A synthetic scene as your own data: out/images/*.JPG and a COLMAP text model in out/sparse."""
    tmp = out.parent / f".{out.name}-eth3d"
    synthetic.generate_scene(tmp, seed=seed, num_images=6, width=128, height=96)
    room = open_scene("eth3d", tmp.parent, tmp.name)
    model = room.read_model()
    if not points:
        model.delete_all_points2D_and_points3D()
    (out / "sparse").mkdir(parents=True)
    model.write_text(str(out / "sparse"))
    shutil.copytree(room.image_dir, out / "images")
    shutil.rmtree(tmp)


def config(root: Path, nopoints: Path) -> dict:
    return {
        "datasets": {
            "own": {"source": "colmap", "root": str(root), "scenes": ["a", "b"], "backbone": "dense_sift",
                    "methods": ["cls", "oracle", "random"]},
            "nopoints": {"source": "colmap", "root": str(nopoints), "backbone": "dense_sift", "methods": ["cls"]},
            "photos": {"source": "folder", "root": str(root / "b" / "images"), "backbone": "dense_sift",
                       "methods": ["cls"]},  # scene b's images alone
        },
        "backbones": {"dense_sift": {"batch_size": 4}},
        "encoders": {"identity": {"type": "identity"}},
        "methods": {"cls": {"type": "cls", "k": 2}, "oracle": {"type": "oracle", "k": 2},
                    "random": {"type": "random", "k": 2, "seed": 0}},
        "local_features": {"max_keypoints": 512},
        "pose": {"threshold_px": 1.0},
    }


def run(work: Path, *args: str) -> tuple[int, str]:
    """A snakemake run that may fail: its exit status and output."""
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(work),
                           "--cores", "2", *args], capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


def replace_image(path: Path) -> None:
    """Write another picture of the same size (new content, new mtime), as a user replacing a photo."""
    image = cv2.imread(str(path))
    assert cv2.imwrite(str(path), np.ascontiguousarray(image[::-1]))


@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("own")
    for scene, seed in (("a", 11), ("b", 12)):
        colmap_scene(base / "data" / scene, seed)
    colmap_scene(base / "nopoints", 13, points=False)
    work = base / "work"
    write_config(work, config(base / "data", base / "nopoints"))
    snakemake(work, "results/own/auc.csv")
    return base, work


def dry_run_outputs(out: str) -> list[str]:
    lines = [line.split("output:", 1)[1] for line in out.splitlines() if line.strip().startswith("output:")]
    return [path.strip() for line in lines for path in line.split(",")]


def test_replacing_an_image_reruns_exactly_what_reads_it(own_run):
    base, work = own_run
    assert "Nothing to be done" in snakemake(work, "-n", "results/own/auc.csv")
    image = base / "data/a/images/dslr_images_undistorted/IMG_0003.JPG"
    replace_image(image)
    out = snakemake(work, "-n", "results/own/auc.csv")
    # the scene's two image readers, the retrieval that reads features (not oracle's or random's, which read
    # gt.h5 only), every method's poses (local features changed) and the table; nothing of scene b, no gt.h5
    assert job_counts(out) == {"features": 1, "local_features": 1, "retrieve": 1, "pose": 3, "auc_table": 1}, out
    outputs = dry_run_outputs(out)
    assert "results/own/a/features-dense_sift.h5" in outputs and "results/own/a/local_features.h5" in outputs
    assert "results/own/a/cls/pairs.txt" in outputs and not any("/b/" in o for o in outputs)
    assert f"reason: Updated input files: {image}" in out  # the dry run says why

    # a model without 3D points triangulates its ground truth from local features: its gt.h5 reruns too
    snakemake(work, "results/nopoints/nopoints/gt.h5")
    replace_image(base / "nopoints/images/dslr_images_undistorted/IMG_0001.JPG")
    counts = job_counts(snakemake(work, "-n", "results/nopoints/auc.csv"))
    assert counts["local_features"] == 1 and counts["ground_truth"] == 1 and counts["features"] == 1


def test_truncated_jpeg_fails_the_run_naming_the_file(own_run, tmp_path):
    base, work = own_run
    image = base / "data/b/images/dslr_images_undistorted/IMG_0002.JPG"
    data = image.read_bytes()
    image.write_bytes(data[: int(len(data) * 0.4)])
    try:
        status, out = run(work, "--keep-going", "results/own/auc.csv", "results/photos/auc.csv")
    finally:
        image.write_bytes(data)
    assert status != 0
    expected = f"{image}: truncated: ends before the JPEG end marker"
    for logs in ("logs/own/b", "logs/photos/photos"):  # a colmap and a folder dataset
        text = "".join(p.read_text() for p in (work / logs).glob("*features*.log"))
        assert expected in text, (logs, text[-3000:], out[-3000:])
    assert not (work / "results/photos/auc.csv").exists()
    assert "Premature end of JPEG file" not in out  # nothing unnamed on the terminal


def test_a_name_with_a_space_fails_at_the_reader(tmp_path):
    scene = tmp_path / "own"
    colmap_scene(scene, 14)
    model = colmap.read_model(scene / "sparse")
    image = next(im for im in model.images.values() if im.name.endswith("IMG_0002.JPG"))
    spaced = image.name.replace("IMG_0002", "IMG 0002 é")
    (scene / "images" / image.name).rename(scene / "images" / spaced)
    image.name = spaced
    shutil.rmtree(scene / "sparse")
    (scene / "sparse").mkdir()
    model.write_binary(str(scene / "sparse"))  # binary: a text model cannot even hold such a name
    folder = tmp_path / "photos"
    (folder / "trip").mkdir(parents=True)
    for name in ("a.jpg", "trip/b c.jpg"):
        cv2.imwrite(str(folder / name), np.full((32, 48, 3), 128, np.uint8))
    work = tmp_path / "work"
    cfg = {"datasets": {"own": {"source": "colmap", "root": str(scene), "backbone": "dense_sift", "methods": ["cls"]},
                        "photos": {"source": "folder", "root": str(folder), "backbone": "dense_sift",
                                   "methods": ["cls"]}},
           "backbones": {"dense_sift": {}}, "encoders": {"identity": {"type": "identity"}},
           "methods": {"cls": {"type": "cls", "k": 2}}}
    write_config(work, cfg)
    for target, name in (("results/own/auc.csv", spaced), ("results/photos/auc.csv", "trip/b c.jpg")):
        status, out = run(work, "-n", target)
        assert status != 0
        assert f"image name {name!r} contains whitespace (SPACE" in out and "rename the image" in out, out[-3000:]
        assert not (work / "results").exists()  # refused before any job ran
