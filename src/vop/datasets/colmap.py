"""COLMAP sparse models (text or binary, read and written by pycolmap) and the `colmap` source.

What pycolmap does not do lives here: finding the model folder (`sparse` or its `0/`), refusing
distorted cameras (the ground-truth intrinsics must describe undistorted images), turning a model into
ground truth (K, world-to-camera poses, image sizes and the co-visibility overlap of its 3D points,
images sorted by name), and building a model from arrays (the synthetic generator writes one).
"""

from __future__ import annotations

import fnmatch
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vop.conf import Conf
from vop.datasets import SceneReader
from vop.geometry import covisibility_overlap
from vop.io import GroundTruth, Tracks

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


def model_image_names(path: str | Path) -> list[str]:
    """The image names of the model in `path`, sorted, read from images.txt/.bin alone (no pycolmap: the
    workflow asks at start, for a model of any size). A text line's name is the rest of the line after the
    camera id, so that a name with a space is seen whole (COLMAP would read its first word)."""
    images = model_files(path)[1]
    names = []
    if images.suffix == ".txt":
        with open(images, encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                fields = line.split(maxsplit=9)
                if len(fields) < 10:
                    raise ModelError(f"{images}: image line {line[:80]!r} has {len(fields)} fields, expected "
                                     "IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME")
                names.append(fields[9])
                next(f, None)  # its POINTS2D line, possibly empty
    else:
        data = images.read_bytes()
        try:
            (count,), pos = struct.unpack_from("<Q", data, 0), 8
            for _ in range(count):
                pos += 64  # image id, qvec, tvec, camera id
                end = data.index(b"\0", pos)
                names.append(data[pos:end].decode("utf-8", "surrogateescape"))
                (num_points,), pos = struct.unpack_from("<Q", data, end + 1), end + 9
                pos += 24 * num_points
        except (struct.error, ValueError) as err:
            raise ModelError(f"{images}: truncated or not a COLMAP images.bin ({err}); write the model again") from err
    return sorted(names)


def has_points3D(path: str | Path) -> bool:
    """Whether the model in `path` has 3D points (a points3D file with at least one point)."""
    files = model_files(path)
    if len(files) < 3:
        return False
    points = files[2]
    if points.suffix == ".bin":
        head = points.read_bytes()[:8]
        return len(head) == 8 and struct.unpack("<Q", head)[0] > 0
    with open(points, encoding="utf-8", errors="replace") as f:
        return any(line.strip() and not line.lstrip().startswith("#") for line in f)


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

    P_i is the set of 3D point ids observed in image i; the observations are kept as `tracks` (where each
    point is seen, for labels from tracks). Overlap and tracks are None when the model has no 3D points.
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
    if not model.num_points3D():
        return GroundTruth([im.name for im in images], K, T, size, None)
    tracks = Tracks([], [])
    for image in images:
        seen = [p for p in image.points2D if p.has_point3D()]
        tracks.xy.append(np.array([p.xy for p in seen], np.float32).reshape(-1, 2))
        tracks.point_ids.append(np.array([p.point3D_id for p in seen], np.int64))
    return GroundTruth([im.name for im in images], K, T, size, covisibility_overlap(tracks.point_sets()),
                       tracks=tracks, overlap_source="points3D")


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
    select: tuple[str, ...] | None = None  # globs over image names: only the images matching one (a split)


class ColmapScene(SceneReader):
    """Your own data: a COLMAP model (text or binary) and its image folder, in one scene folder.

    Without `scenes`, the dataset's root is the scene. When `model` holds no model but `model/0` does
    (COLMAP's mapper output), that one is used. `select` keeps the images whose names match one of its
    globs (a dataset of part of a capture: a split). A model without 3D points `needs_tracks`: the ground-truth
    stage triangulates its SIFT matches with the poses held fixed (vop.ground_truth). Image names are as in
    the model, relative to the image folder.
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

    def image_names(self) -> list[str]:
        self.input_files()
        names = model_image_names(self.model_dir)
        if self.options.select is None:
            return names
        chosen = [n for n in names if any(fnmatch.fnmatchcase(n, glob) for glob in self.options.select)]
        if not chosen:
            raise ValueError(f"{self.model_dir}: `select` {list(self.options.select)} matches none of its "
                             f"{len(names)} images (e.g. {names[:2]}); fix the globs")
        return chosen

    def needs_tracks(self) -> bool:
        return not has_points3D(self.model_dir)

    def ground_truth(self) -> GroundTruth:
        names = self.checked_image_names()  # before pycolmap, which reads a text name up to its first space
        missing = [name for name in names if not (self.image_dir / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{self.image_dir / missing[0]}: image of {self.model_dir} not found "
                                    f"({len(missing)} missing in all); check the dataset's `images` key")
        gt = ground_truth_from_model(read_model(self.model_dir), self.model_dir)
        return gt if len(names) == len(gt.names) else gt.subset([gt.index()[n] for n in names])
