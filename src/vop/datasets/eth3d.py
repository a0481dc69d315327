"""ETH3D high-res multi-view, undistorted: the archive used by glue-factory and the VOP reference code.

Layout of one scene (ETH3D_undistorted.zip holds the 13 training scenes, one folder each)::

    {root}/{scene}/images/dslr_images_undistorted/DSC_0286.JPG
    {root}/{scene}/dslr_calibration_undistorted/{cameras,images,points3D}.txt    COLMAP text, PINHOLE
    {root}/{scene}/ground_truth_depth/dslr_images_undistorted/DSC_0286.JPG      raw depth (see below)

Image names in images.txt (`dslr_images_undistorted/DSC_0286.JPG`) are relative to `{root}/{scene}/images`
and are used unchanged as the image names of every later stage.

Depth maps follow ETH3D's raw convention: despite the .JPG name, the file is a headerless array of
little-endian float32 in row-major order, shape (height, width) of the image, holding the z-depth in
metres; pixels without ground truth are +inf. `read_depth` checks the file size against the image size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vop.datasets import ArchivePart, NoDepthError, SceneReader, colmap

SCENES = (
    "courtyard", "delivery_area", "electro", "facade", "kicker", "meadow", "office", "pipes", "playground",
    "relief", "relief_2", "terrace", "terrains",
)
DEFAULT_URL = "https://cvg-data.inf.ethz.ch/SOLD2_ETH3D_undistorted/"
ARCHIVE = "ETH3D_undistorted.zip"
ARCHIVE_ROOT = "ETH3D_undistorted"  # the archive's top-level folder: one folder per scene

IMAGES_SUBDIR = "images"
MODEL_SUBDIR = "dslr_calibration_undistorted"
DEPTH_SUBDIR = "ground_truth_depth/dslr_images_undistorted"


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
    """A scene in the ETH3D undistorted layout."""

    source = "eth3d"
    has_depth = True
    url = DEFAULT_URL
    resources_root = ARCHIVE_ROOT
    default_scenes = SCENES

    def __init__(self, root: str | Path, scene: str | None = None, **options):
        if not scene:
            raise ValueError(f"{root}: an ETH3D-layout dataset holds one folder per scene; name the scene")
        super().__init__(root, scene, **options)

    @classmethod
    def archive_parts(cls, scene: str) -> list[ArchivePart]:
        return [ArchivePart(scene, ARCHIVE, f"{ARCHIVE_ROOT}/{scene}/", "", "ground_truth")]

    @property
    def image_dir(self) -> Path:
        return self.scene_dir / IMAGES_SUBDIR

    @property
    def model_dir(self) -> Path:
        return self.scene_dir / MODEL_SUBDIR

    @property
    def depth_dir(self) -> Path:
        return self.scene_dir / DEPTH_SUBDIR

    def input_files(self) -> list[Path]:
        return [self.model_dir / f"{name}.txt" for name in ("cameras", "images", "points3D")]

    def depth_files(self) -> list[Path]:
        return [self.depth_dir]

    def read_model(self):
        """The scene's COLMAP model, after checking that every image it lists is on disk."""
        if not self.model_dir.is_dir():
            raise FileNotFoundError(
                f"{self.model_dir}: calibration of scene {self.scene!r} not found; is {self.root} the extracted "
                f"{ARCHIVE_ROOT} folder (it holds one folder per scene: {', '.join(SCENES[:3])}, ...)?"
            )
        model = colmap.read_model(self.model_dir)
        missing = sorted(im.name for im in model.images.values() if not (self.image_dir / im.name).is_file())
        if missing:
            raise FileNotFoundError(
                f"{self.image_dir / missing[0]}: image listed in {self.model_dir / 'images.txt'} is missing "
                f"({len(missing)} missing in all); the archive is incomplete: download and extract it again"
            )
        return model

    def image_names(self) -> list[str]:
        if not self.model_dir.is_dir():
            self.read_model()  # the error that says what the root must hold
        return colmap.model_image_names(self.model_dir)

    def ground_truth(self):
        self.checked_image_names()  # before pycolmap, which reads a text name up to its first space
        return colmap.ground_truth_from_model(self.read_model(), self.model_dir)

    def depth(self, name: str, size) -> np.ndarray:
        path = self.depth_dir / Path(name).name  # depth maps are found by the image's basename
        if not path.is_file():
            raise NoDepthError(
                f"{path}: depth map of image {name} not found; training labels need ground-truth depth for every "
                f"image, so use a dataset that provides it (ETH3D ground_truth_depth, synthetic scenes, MegaDepth "
                f"depth_undistorted) or check that {self.scene_dir} is the scene folder holding {DEPTH_SUBDIR}"
            )
        width, height = (int(s) for s in size)
        return read_depth(path, width, height)
