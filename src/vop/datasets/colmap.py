"""COLMAP sparse models (text or binary, read and written by pycolmap) and the `colmap` source.

What pycolmap does not do lives here: finding the model folder (`sparse` or its `0/`), refusing
distorted cameras (the ground-truth intrinsics must describe undistorted images), turning a model into
ground truth (K, world-to-camera poses, image sizes and the co-visibility overlap of its 3D points,
images sorted by name), and building a model from arrays (the synthetic generator writes one).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vop.conf import Conf
from vop.datasets import SceneReader
from vop.geometry import covisibility_overlap, pose_overlap
from vop.io import GroundTruth

logger = logging.getLogger(__name__)

MODEL_FILES = ("cameras", "images")  # what a model needs; points3D is optional (a model without points)
PINHOLE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")


class ModelError(ValueError):
    """A COLMAP model that cannot be read or used as it is."""


def model_files(path: str | Path) -> list[Path]:
    """The files of the complete model in `path` (text wins when both are there), points3D if present."""
    path = Path(path)
    for ext in (".txt", ".bin"):
        files = [path / f"{name}{ext}" for name in MODEL_FILES]
        if all(f.is_file() for f in files):
            points = path / f"points3D{ext}"
            return files + ([points] if points.is_file() else [])
    found = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    raise FileNotFoundError(
        f"{path}: no COLMAP model here (need cameras.txt and images.txt, or cameras.bin and images.bin; "
        f"found {found[:10]}); point to the sparse model folder, e.g. sparse/0"
    )


def read_model(path: str | Path):
    """A pycolmap.Reconstruction of the model in `path`, text or binary; errors name the folder."""
    import pycolmap

    path = Path(path)
    files = model_files(path)
    try:
        return pycolmap.Reconstruction(str(path))
    except (ValueError, RuntimeError) as err:
        raise ModelError(f"{path}: COLMAP cannot read this model ({err}); check {', '.join(f.name for f in files)} "
                         "(written by COLMAP, not edited by hand?)") from err


def camera_matrix(camera, where: str = "") -> np.ndarray:
    """K (3,3) of a pinhole camera; a distorted model is refused with the fix."""
    name = camera.model.name
    if name not in PINHOLE_MODELS:
        raise ModelError(
            f"{where}camera {camera.camera_id} uses the distorted model {name}; the model must be undistorted "
            "(SIMPLE_PINHOLE or PINHOLE): run `colmap image_undistorter` and use its sparse model, or use the "
            "dataset's undistorted release"
        )
    return np.asarray(camera.calibration_matrix(), np.float64)


def ground_truth_from_model(model, where: str | Path | None = None) -> GroundTruth:
    """Calibration, poses and co-visibility overlap of a pycolmap model, images sorted by name.

    P_i is the set of 3D point ids observed in image i; the overlap is None when the model has no 3D points.
    """
    prefix = f"{where}: " if where is not None else ""
    images = sorted(model.images.values(), key=lambda im: im.name)
    n = len(images)
    K = np.zeros((n, 3, 3))
    T = np.tile(np.eye(4), (n, 1, 1))
    size = np.zeros((n, 2), np.int64)
    for i, image in enumerate(images):
        camera = model.cameras[image.camera_id]
        K[i] = camera_matrix(camera, prefix)
        T[i, :3] = image.cam_from_world().matrix()
        size[i] = camera.width, camera.height
    overlap = None
    if model.num_points3D():
        point_sets = [np.array([p.point3D_id for p in image.points2D if p.has_point3D()], np.int64)
                      for image in images]
        overlap = covisibility_overlap(point_sets)
    return GroundTruth([im.name for im in images], K, T, size, overlap)


@dataclass
class ModelArrays:
    """A model as arrays: what `write_model` turns into COLMAP files. Ids are 1-based positions.

    Per image i: K[i] (PINHOLE), size[i] [w,h], qvec[i] (w,x,y,z) and tvec[i] world-to-camera, xys[i]
    (M_i,2) observations; per point p: xyz[p], rgb[p] and its track, (image index, observation index) pairs.
    """

    names: list[str]
    K: np.ndarray
    size: np.ndarray
    qvec: np.ndarray
    tvec: np.ndarray
    xys: list[np.ndarray]
    xyz: np.ndarray
    rgb: np.ndarray
    tracks: list[np.ndarray]


def write_model(arrays: ModelArrays, path: str | Path, binary: bool = False) -> None:
    """Write a model (one PINHOLE camera per image) in COLMAP's text or binary format."""
    import pycolmap

    model = pycolmap.Reconstruction()
    for i, name in enumerate(arrays.names):
        fx, fy, cx, cy = arrays.K[i][0, 0], arrays.K[i][1, 1], arrays.K[i][0, 2], arrays.K[i][1, 2]
        w, h = (int(v) for v in arrays.size[i])
        model.add_camera_with_trivial_rig(pycolmap.Camera(model="PINHOLE", width=w, height=h,
                                                          params=[fx, fy, cx, cy], camera_id=i + 1))
        w_, x, y, z = arrays.qvec[i]
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(np.array([x, y, z, w_])), np.asarray(arrays.tvec[i], np.float64))
        points2D = [pycolmap.Point2D(np.asarray(xy, np.float64)) for xy in arrays.xys[i]]
        model.add_image_with_trivial_frame(pycolmap.Image(name=name, points2D=points2D, camera_id=i + 1,
                                                          image_id=i + 1), pose)
    for p in range(len(arrays.xyz)):
        track = pycolmap.Track()
        for image, index in arrays.tracks[p]:
            track.add_element(int(image) + 1, int(index))
        model.add_point3D(np.asarray(arrays.xyz[p], np.float64), track, np.asarray(arrays.rgb[p], np.uint8))
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (model.write_binary if binary else model.write_text)(str(path))


@dataclass(frozen=True, kw_only=True)
class ColmapOptions(Conf):
    """`datasets.<name>` keys of a colmap dataset: folders relative to the scene folder."""

    images: str = "images"
    model: str = "sparse"


class ColmapScene(SceneReader):
    """Your own data: a COLMAP model (text or binary) and its image folder, in one scene folder.

    Without `scenes`, the dataset's root is the scene. When `model` holds no model but `model/0` does
    (COLMAP's mapper output), that one is used. Without 3D points the overlap is estimated from the poses
    (`vop.geometry.pose_overlap`). Image names are as in the model, relative to the image folder.
    """

    source = "colmap"
    Options = ColmapOptions
    single_scene = True

    @property
    def image_dir(self) -> Path:
        return self.scene_dir / self.options.images

    @property
    def model_dir(self) -> Path:
        path = self.scene_dir / self.options.model
        if not any((path / f"cameras{ext}").is_file() for ext in (".txt", ".bin")) and (path / "0").is_dir():
            return path / "0"
        return path

    def input_files(self) -> list[Path]:
        if not self.scene_dir.is_dir():
            raise FileNotFoundError(f"{self.scene_dir}: folder not found; it must hold {self.options.images}/ and "
                                    f"{self.options.model}/")
        return model_files(self.model_dir)

    def ground_truth(self) -> GroundTruth:
        self.input_files()
        model = read_model(self.model_dir)
        missing = sorted(im.name for im in model.images.values() if not (self.image_dir / im.name).is_file())
        if missing:
            raise FileNotFoundError(f"{self.image_dir / missing[0]}: image of {self.model_dir} not found "
                                    f"({len(missing)} missing in all); check the dataset's `images` key")
        gt = ground_truth_from_model(model, self.model_dir)
        if gt.overlap is None and len(gt.names):
            logger.warning("%s: no 3D points; overlap estimated from the camera poses", self.model_dir)
            gt.overlap = pose_overlap(gt.K, gt.T_w2cam, gt.image_size)
        return gt
