"""ETH3D high-res multi-view, undistorted: the archive used by glue-factory and the VOP reference code.

Layout of one scene (ETH3D_undistorted.zip holds the 13 training scenes)::

    {root}/{scene}/images/dslr_images_undistorted/DSC_0286.JPG
    {root}/{scene}/dslr_calibration_undistorted/{cameras,images,points3D}.txt    COLMAP text, PINHOLE
    {root}/{scene}/ground_truth_depth/dslr_images_undistorted/DSC_0286.JPG      raw depth (see below)

Image names in images.txt (`dslr_images_undistorted/DSC_0286.JPG`) are relative to `{root}/{scene}/images`
and are used unchanged as the image names of every later stage.

Depth maps follow ETH3D's raw convention: despite the .JPG name, the file is a headerless array of
little-endian float32 in row-major order, shape (height, width) of the image, holding the z-depth in
metres; pixels without ground truth are +inf. `read_depth` checks the file size against the image size.

    python -m vop.datasets.eth3d gt ROOT courtyard results/eth3d/courtyard/gt.h5

Download and extraction of the archive: `vop.download` (resumable, verified, safe extraction).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from vop.datasets import NoDepthError, SceneReader, colmap
from vop.io import write_gt

SCENES = (
    "courtyard", "delivery_area", "electro", "facade", "kicker", "meadow", "office", "pipes", "playground",
    "relief", "relief_2", "terrace", "terrains",
)
DEFAULT_URL = "https://cvg-data.inf.ethz.ch/SOLD2_ETH3D_undistorted/ETH3D_undistorted.zip"

IMAGES_SUBDIR = "images"
MODEL_SUBDIR = "dslr_calibration_undistorted"
DEPTH_SUBDIR = "ground_truth_depth/dslr_images_undistorted"


def scene_paths(root: str | Path, scene: str) -> tuple[Path, Path, Path]:
    """(images dir, model dir, depth dir) of a scene. Image names are relative to the images dir."""
    base = Path(root) / scene
    return base / IMAGES_SUBDIR, base / MODEL_SUBDIR, base / DEPTH_SUBDIR


def read_scene_model(root: str | Path, scene: str) -> colmap.Model:
    """The scene's COLMAP model, after checking that every image it lists is on disk."""
    images_dir, model_dir, _ = scene_paths(root, scene)
    if not model_dir.is_dir():
        raise FileNotFoundError(
            f"{model_dir}: calibration of scene {scene!r} not found; is {root} the extracted ETH3D_undistorted "
            f"directory (it holds one folder per scene: {', '.join(SCENES[:3])}, ...)?"
        )
    model = colmap.read_model(model_dir)
    missing = [im.name for im in model.images.values() if not (images_dir / im.name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{images_dir / missing[0]}: image listed in {model_dir / 'images.txt'} is missing "
            f"({len(missing)} missing in all); the archive is incomplete: download and extract it again"
        )
    return model


def write_ground_truth(root: str | Path, scene: str, out_h5: str | Path) -> None:
    """gt.h5 of one scene: K, T_w2cam, image_size per image (names as in images.txt) and the overlap."""
    model = read_scene_model(root, scene)
    write_gt(out_h5, colmap.ground_truth_from_model(model))


def read_depth(path: str | Path, width: int, height: int) -> np.ndarray:
    """A raw ETH3D depth map as float32 (height, width); +inf where there is no ground truth."""
    path = Path(path)
    expected = width * height * 4
    size = path.stat().st_size
    if size != expected:
        raise ValueError(
            f"{path}: {size} bytes, but a raw float32 depth map of a {width}x{height} image has {expected}; "
            "the file is truncated or belongs to another image size (re-extract the archive)"
        )
    return np.fromfile(path, dtype="<f4").reshape(height, width)


class Eth3dScene(SceneReader):
    """Reader of a scene in the ETH3D undistorted layout (ETH3D and the synthetic scenes)."""

    source = "eth3d"

    def __init__(self, root: str | Path, scene: str | None = None):
        if not scene:
            raise ValueError(f"{root}: an ETH3D dataset holds one folder per scene; name the scene")
        super().__init__(root, scene)

    @property
    def image_dir(self) -> Path:
        return scene_paths(self.root, self.scene)[0]

    def ground_truth(self):
        return colmap.ground_truth_from_model(read_scene_model(self.root, self.scene))

    def depth(self, name: str, size) -> np.ndarray:
        depth_dir = scene_paths(self.root, self.scene)[2]
        path = depth_dir / Path(name).name  # depth maps are found by the image's basename
        if not path.is_file():
            raise NoDepthError(
                f"{path}: depth map of image {name} not found; training labels need ground-truth depth for every "
                f"image, so use a dataset that provides it (ETH3D ground_truth_depth, synthetic scenes, MegaDepth "
                f"depth_undistorted) or check that {self.scene_dir} is the scene folder holding {DEPTH_SUBDIR}"
            )
        width, height = (int(s) for s in size)
        return read_depth(path, width, height)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vop.datasets.eth3d",
                                     description="ETH3D undistorted: ground truth of a scene.")
    sub = parser.add_subparsers(dest="command", required=True)
    gt = sub.add_parser("gt", help="write gt.h5 of one scene")
    gt.add_argument("root", type=Path, help="directory holding the scene folders")
    gt.add_argument("scene", help=f"one of {', '.join(SCENES)} (or any scene in this layout)")
    gt.add_argument("out", type=Path, help="output gt.h5")
    args = parser.parse_args(argv)
    write_ground_truth(args.root, args.scene, args.out)


if __name__ == "__main__":
    main()
