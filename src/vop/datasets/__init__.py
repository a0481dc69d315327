"""Dataset readers: one interface over every source the workflow reads.

A scene reader turns a scene in its native layout into what the stages need:

    scene = open_scene("megadepth", "resources/megadepth", "0015")
    scene.image_dir                 # image names are relative to it
    scene.ground_truth()            # GroundTruth: names, K, T_w2cam, image sizes, overlap (or None)
    scene.depth(name, (w, h))       # z-depth (h, w) float32 for training labels; NoDepthError without
    scene.has_poses                 # False: images only (pose metrics do not apply)

Sources: `synthetic` and `eth3d` (ETH3D undistorted layout), `megadepth` (glue-factory layout), `inloc`
(cutouts + iphone7 queries), `colmap` (any COLMAP model + an image folder) and `folder` (images only).

    python -m vop.datasets gt SOURCE ROOT SCENE OUT.h5 [--option images=images --option model=sparse]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from vop.io import GroundTruth, write_gt

SOURCES = ("synthetic", "eth3d", "megadepth", "inloc", "colmap", "folder")
WITH_DEPTH = ("synthetic", "eth3d", "megadepth")  # sources an encoder can be trained on
WITHOUT_POSES = ("inloc", "folder")  # no pose ground truth: retrieval only, no pose metrics


class NoDepthError(FileNotFoundError):
    """A scene (or an image of it) without the ground-truth depth that training labels need."""


class SceneReader:
    """Base of the readers: `root` is the dataset folder, `scene` one scene in it (None: root is the scene)."""

    source = ""
    has_poses = True

    def __init__(self, root: str | Path, scene: str | None = None):
        self.root = Path(root)
        self.scene = scene

    @property
    def scene_dir(self) -> Path:
        return self.root / self.scene if self.scene else self.root

    @property
    def image_dir(self) -> Path:
        raise NotImplementedError

    def ground_truth(self) -> GroundTruth:
        raise NotImplementedError

    def depth(self, name: str, size) -> np.ndarray:
        raise NoDepthError(
            f"{self.scene_dir}: image {name}: a `{self.source}` scene has no depth maps, and training labels need "
            f"ground-truth depth for every image; train encoders on {', '.join(WITH_DEPTH)} datasets"
        )

    def write_ground_truth(self, out_h5: str | Path) -> GroundTruth:
        gt = self.ground_truth()
        write_gt(out_h5, gt)
        return gt


def no_poses(names: list[str], sizes: np.ndarray) -> GroundTruth:
    """Ground truth of images without calibration or poses: NaN K and T_w2cam, no overlap."""
    n = len(names)
    return GroundTruth(list(names), np.full((n, 3, 3), np.nan), np.full((n, 4, 4), np.nan),
                       np.asarray(sizes, np.int64).reshape(n, 2), None)


def reader_class(source: str) -> type[SceneReader]:
    from vop.datasets import colmap, eth3d, folder, inloc, megadepth

    classes = {"synthetic": eth3d.Eth3dScene, "eth3d": eth3d.Eth3dScene, "megadepth": megadepth.MegaDepthScene,
               "inloc": inloc.InLocScene, "colmap": colmap.ColmapScene, "folder": folder.FolderScene}
    if source not in classes:
        raise ValueError(f"unknown dataset source {source!r}; expected one of {', '.join(SOURCES)}")
    return classes[source]


def open_scene(source: str, root: str | Path, scene: str | None = None, **options) -> SceneReader:
    """The reader of one scene; `options` are the source's own (colmap/folder: images, model)."""
    return reader_class(source)(root, scene, **options)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vop.datasets", description="Read a scene of any source.")
    sub = parser.add_subparsers(dest="command", required=True)
    gt = sub.add_parser("gt", help="write gt.h5 (names, K, T_w2cam, image sizes, overlap) of one scene")
    gt.add_argument("source", choices=SOURCES)
    gt.add_argument("root", type=Path, help="dataset folder")
    gt.add_argument("scene", help="scene name; '-' when root is the scene (colmap, folder)")
    gt.add_argument("out", type=Path)
    gt.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="reader option, e.g. images=images or model=sparse/0")
    args = parser.parse_args(argv)
    options = dict(o.split("=", 1) for o in args.option)
    scene = open_scene(args.source, args.root, None if args.scene == "-" else args.scene, **options)
    gt = scene.write_ground_truth(args.out)
    print(f"{args.out}: {len(gt.names)} images, overlap {'yes' if gt.overlap is not None else 'no'}")
