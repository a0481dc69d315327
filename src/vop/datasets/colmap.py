"""COLMAP sparse models: read (text or binary), write (text), and turn into ground truth.

The in-memory model mirrors COLMAP's own: cameras, images with their 2D observations, and 3D points
with their tracks, each a dict keyed by id. Poses are world-to-camera (qvec is w, x, y, z), pixel
coordinates follow COLMAP (the centre of the top-left pixel is at (0.5, 0.5)).

    python -m vop.datasets.colmap gt MODEL_DIR OUT.h5     # ground truth of a model
    python -m vop.datasets.colmap convert MODEL_DIR OUT   # any model -> text model
"""

from __future__ import annotations

import argparse
import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse

from vop.datasets import SceneReader
from vop.io import GroundTruth, atomic_path, write_gt

logger = logging.getLogger(__name__)

# COLMAP's camera models: id -> (name, parameter names). The first entries of every model are the
# pinhole part (f or fx, fy, then cx, cy); what follows is distortion.
CAMERA_MODELS = {
    0: ("SIMPLE_PINHOLE", ("f", "cx", "cy")),
    1: ("PINHOLE", ("fx", "fy", "cx", "cy")),
    2: ("SIMPLE_RADIAL", ("f", "cx", "cy", "k")),
    3: ("RADIAL", ("f", "cx", "cy", "k1", "k2")),
    4: ("OPENCV", ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2")),
    5: ("OPENCV_FISHEYE", ("fx", "fy", "cx", "cy", "k1", "k2", "k3", "k4")),
    6: ("FULL_OPENCV", ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6")),
    7: ("FOV", ("fx", "fy", "cx", "cy", "omega")),
    8: ("SIMPLE_RADIAL_FISHEYE", ("f", "cx", "cy", "k")),
    9: ("RADIAL_FISHEYE", ("f", "cx", "cy", "k1", "k2")),
    10: ("THIN_PRISM_FISHEYE", ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3", "k4", "sx1", "sy1")),
    11: ("RAD_TAN_THIN_PRISM_FISHEYE",
         ("fx", "fy", "cx", "cy", "k0", "k1", "k2", "k3", "k4", "k5", "p0", "p1", "s0", "s1", "s2", "s3")),
    12: ("SIMPLE_DIVISION", ("f", "cx", "cy", "k")),
    13: ("DIVISION", ("fx", "fy", "cx", "cy", "k")),
    14: ("SIMPLE_FISHEYE", ("f", "cx", "cy")),
    15: ("FISHEYE", ("fx", "fy", "cx", "cy")),
    16: ("EUCM", ("fx", "fy", "cx", "cy", "alpha", "beta")),
}
MODEL_NAME_TO_ID = {name: model_id for model_id, (name, _) in CAMERA_MODELS.items()}
PINHOLE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")
# COLMAP stores "no 3D point" as the largest uint64 in binary files and as -1 in text files.
INVALID_POINT3D_ID = -1
_UINT64_MAX = 2**64 - 1


@dataclass
class Camera:
    id: int
    model: str
    width: int
    height: int
    params: np.ndarray  # (P,) float64, in COLMAP's order for the model


@dataclass
class Image:
    id: int
    name: str
    qvec: np.ndarray  # (4,) w, x, y, z: rotation world -> camera
    tvec: np.ndarray  # (3,) translation world -> camera
    camera_id: int
    xys: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # (M,2) float64
    point3D_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))  # (M,), -1: none

    def rotmat(self) -> np.ndarray:
        return qvec_to_rotmat(self.qvec)

    def T_w2cam(self) -> np.ndarray:
        T = np.eye(4)
        T[:3, :3] = self.rotmat()
        T[:3, 3] = self.tvec
        return T


@dataclass
class Point3D:
    id: int
    xyz: np.ndarray  # (3,) float64
    rgb: np.ndarray  # (3,) uint8
    error: float
    image_ids: np.ndarray  # (L,) int64
    point2D_idxs: np.ndarray  # (L,) int64


@dataclass
class Model:
    cameras: dict[int, Camera]
    images: dict[int, Image]
    points3D: dict[int, Point3D]
    path: Path | None = None  # where it was read from, for error messages


class ModelError(ValueError):
    """A COLMAP model that cannot be read or used as it is."""


# ---------------------------------------------------------------------------------------------
# Rotations and intrinsics


def qvec_to_rotmat(qvec) -> np.ndarray:
    """Unit quaternion (w, x, y, z) -> rotation matrix (3,3). The quaternion is normalised first."""
    w, x, y, z = np.asarray(qvec, np.float64) / np.linalg.norm(qvec)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def rotmat_to_qvec(R) -> np.ndarray:
    """Rotation matrix (3,3) -> unit quaternion (w, x, y, z) with w >= 0.

    The quaternion is the eigenvector of the largest eigenvalue of Bar-Itzhack's symmetric 4x4
    matrix, which stays accurate for every rotation (no division by a small trace).
    """
    R = np.asarray(R, np.float64)
    (r00, r01, r02), (r10, r11, r12), (r20, r21, r22) = R
    K = np.array([
        [r00 - r11 - r22, 0, 0, 0],
        [r01 + r10, r11 - r00 - r22, 0, 0],
        [r02 + r20, r12 + r21, r22 - r00 - r11, 0],
        [r21 - r12, r02 - r20, r10 - r01, r00 + r11 + r22],
    ]) / 3.0
    eigvals, eigvecs = np.linalg.eigh(K)  # uses the lower triangle
    x, y, z, w = eigvecs[:, np.argmax(eigvals)]
    qvec = np.array([w, x, y, z])
    return -qvec if w < 0 else qvec


def camera_matrix(camera: Camera, allow_distortion: bool = False) -> np.ndarray:
    """Intrinsic matrix K (3,3) of a pinhole camera (SIMPLE_PINHOLE or PINHOLE).

    Distorted models are refused unless `allow_distortion`, in which case their pinhole part is used and
    the distortion is ignored (only sensible when it is known to be negligible).
    """
    if camera.model not in MODEL_NAME_TO_ID:
        raise ModelError(f"camera {camera.id}: unknown camera model {camera.model!r}")
    names = CAMERA_MODELS[MODEL_NAME_TO_ID[camera.model]][1]
    if camera.model not in PINHOLE_MODELS and not allow_distortion:
        raise ModelError(
            f"camera {camera.id} uses the distorted model {camera.model}; the model must be undistorted "
            "(SIMPLE_PINHOLE or PINHOLE): run `colmap image_undistorter` and use its sparse model, or "
            "use the dataset's undistorted release"
        )
    if names[:3] == ("f", "cx", "cy"):
        f, cx, cy = camera.params[:3]
        fx = fy = f
    elif names[:4] == ("fx", "fy", "cx", "cy"):
        fx, fy, cx, cy = camera.params[:4]
    else:
        raise ModelError(f"camera {camera.id}: model {camera.model} has no pinhole intrinsics")
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


# ---------------------------------------------------------------------------------------------
# Reading


def _data_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of every line that is not a comment; empty lines are kept."""
    with open(path) as f:
        return [(n, line.rstrip("\r\n")) for n, line in enumerate(f, 1) if not line.startswith("#")]


def read_cameras_text(path: Path) -> dict[int, Camera]:
    cameras = {}
    for lineno, line in _data_lines(path):
        parts = line.split()
        if not parts:
            continue
        try:
            camera_id, model, width, height = int(parts[0]), parts[1], int(parts[2]), int(parts[3])
            params = np.array([float(p) for p in parts[4:]])
        except (IndexError, ValueError) as e:
            raise ModelError(f"{path}:{lineno}: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS...' ({e})")
        if model not in MODEL_NAME_TO_ID:
            raise ModelError(f"{path}:{lineno}: unknown camera model {model!r}")
        expected = len(CAMERA_MODELS[MODEL_NAME_TO_ID[model]][1])
        if len(params) != expected:
            raise ModelError(f"{path}:{lineno}: {model} has {expected} parameters, found {len(params)}")
        cameras[camera_id] = Camera(camera_id, model, width, height, params)
    return cameras


def read_images_text(path: Path) -> dict[int, Image]:
    lines = _data_lines(path)
    images = {}
    i = 0
    while i < len(lines):
        lineno, line = lines[i]
        i += 1
        parts = line.split()
        if not parts:  # blank line where an image line is expected: trailing newline(s)
            continue
        if len(parts) < 10:
            raise ModelError(
                f"{path}:{lineno}: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME', got {line!r}"
            )
        # The points line always follows; it is empty for an image without observations, and may be
        # missing altogether at the end of the file.
        points = lines[i][1].split() if i < len(lines) else []
        i += 1
        if len(points) % 3:
            raise ModelError(f"{path}:{lineno + 1}: POINTS2D must be triples 'X Y POINT3D_ID'")
        try:
            obs = np.array(points, dtype=np.float64).reshape(-1, 3)  # ids < 2**53 are exact
            image_id = int(parts[0])
            qvec = np.array([float(v) for v in parts[1:5]])
            tvec = np.array([float(v) for v in parts[5:8]])
            camera_id = int(parts[8])
            xys = obs[:, :2].copy()
            point3D_ids = obs[:, 2].astype(np.int64)
        except ValueError as e:
            raise ModelError(f"{path}:{lineno}: malformed image entry ({e})")
        # Names may hold spaces: everything after the camera id.
        name = line.split(maxsplit=9)[9].strip()
        images[image_id] = Image(image_id, name, qvec, tvec, camera_id, xys, point3D_ids)
    return images


def read_points3D_text(path: Path) -> dict[int, Point3D]:
    points = {}
    for lineno, line in _data_lines(path):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 8 or (len(parts) - 8) % 2:
            raise ModelError(
                f"{path}:{lineno}: expected 'POINT3D_ID X Y Z R G B ERROR (IMAGE_ID POINT2D_IDX)...'"
            )
        try:
            point_id = int(parts[0])
            track = np.array(parts[8:], dtype=np.int64).reshape(-1, 2)
            points[point_id] = Point3D(
                point_id,
                np.array([float(v) for v in parts[1:4]]),
                np.array([int(v) for v in parts[4:7]], np.uint8),
                float(parts[7]),
                track[:, 0].copy(),
                track[:, 1].copy(),
            )
        except ValueError as e:
            raise ModelError(f"{path}:{lineno}: malformed 3D point ({e})")
    return points


class _Reader:
    """Sequential little-endian reader over the bytes of one binary model file."""

    def __init__(self, path: Path):
        self.path = path
        self.data = path.read_bytes()
        self.pos = 0

    def read(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            raise ModelError(f"{self.path}: file ends early (truncated or not a COLMAP binary model)")
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return values

    def array(self, dtype: np.dtype, count: int) -> np.ndarray:
        dtype = np.dtype(dtype)
        end = self.pos + dtype.itemsize * count
        if end > len(self.data):
            raise ModelError(f"{self.path}: file ends early (truncated or not a COLMAP binary model)")
        out = np.frombuffer(self.data, dtype, count, self.pos)
        self.pos = end
        return out

    def string(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise ModelError(f"{self.path}: unterminated image name")
        out = self.data[self.pos:end].decode()
        self.pos = end + 1
        return out


def read_cameras_binary(path: Path) -> dict[int, Camera]:
    r = _Reader(path)
    cameras = {}
    for _ in range(r.read("Q")[0]):
        camera_id, model_id, width, height = r.read("iiQQ")
        if model_id not in CAMERA_MODELS:
            raise ModelError(f"{path}: camera {camera_id} has unknown model id {model_id}")
        name, param_names = CAMERA_MODELS[model_id]
        params = r.array("<f8", len(param_names)).astype(np.float64)
        cameras[camera_id] = Camera(camera_id, name, width, height, params)
    return cameras


def read_images_binary(path: Path) -> dict[int, Image]:
    r = _Reader(path)
    images = {}
    obs_dtype = np.dtype([("xy", "<f8", 2), ("id", "<u8")])
    for _ in range(r.read("Q")[0]):
        image_id, qw, qx, qy, qz, tx, ty, tz, camera_id = r.read("i7di")
        name = r.string()
        obs = r.array(obs_dtype, r.read("Q")[0])
        ids = obs["id"].astype(np.uint64)
        point3D_ids = np.where(ids == _UINT64_MAX, INVALID_POINT3D_ID, ids.astype(np.int64))
        images[image_id] = Image(
            image_id, name, np.array([qw, qx, qy, qz]), np.array([tx, ty, tz]), camera_id,
            obs["xy"].astype(np.float64).reshape(-1, 2), point3D_ids.astype(np.int64),
        )
    return images


def read_points3D_binary(path: Path) -> dict[int, Point3D]:
    r = _Reader(path)
    points = {}
    for _ in range(r.read("Q")[0]):
        point_id, x, y, z, red, green, blue, error = r.read("Q3d3Bd")
        track = r.array("<i4", 2 * r.read("Q")[0]).reshape(-1, 2).astype(np.int64)
        points[point_id] = Point3D(
            point_id, np.array([x, y, z]), np.array([red, green, blue], np.uint8), error,
            track[:, 0].copy(), track[:, 1].copy(),
        )
    return points


def detect_model_format(path: str | Path) -> str:
    """'.txt' or '.bin': which complete model the directory holds (text wins when both do)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: COLMAP model directory not found")
    for ext in (".txt", ".bin"):
        if all((path / f"{name}{ext}").exists() for name in ("cameras", "images")):
            return ext
    found = sorted(p.name for p in path.iterdir())
    raise FileNotFoundError(
        f"{path}: no COLMAP model here (need cameras.txt and images.txt, or cameras.bin and images.bin; "
        f"found {found[:10]}); point to the sparse model directory, e.g. sparse/0"
    )


def read_model(path: str | Path, ext: str | None = None) -> Model:
    """Read a COLMAP model directory, text or binary (detected unless `ext` is given).

    A missing points3D file reads as a model without 3D points. Every image's camera must exist.
    """
    path = Path(path)
    ext = ext or detect_model_format(path)
    if ext == ".txt":
        cameras = read_cameras_text(path / "cameras.txt")
        images = read_images_text(path / "images.txt")
        points_file = path / "points3D.txt"
        points3D = read_points3D_text(points_file) if points_file.exists() else {}
    elif ext == ".bin":
        cameras = read_cameras_binary(path / "cameras.bin")
        images = read_images_binary(path / "images.bin")
        points_file = path / "points3D.bin"
        points3D = read_points3D_binary(points_file) if points_file.exists() else {}
    else:
        raise ValueError(f"unknown model extension {ext!r}: use '.txt' or '.bin'")
    for image in images.values():
        if image.camera_id not in cameras:
            raise ModelError(
                f"{path / ('images' + ext)}: image {image.id} ({image.name}) uses camera {image.camera_id}, "
                f"which is missing from {path / ('cameras' + ext)}; the model is incomplete or its files "
                "come from different reconstructions"
            )
    return Model(cameras, images, points3D, path)


# ---------------------------------------------------------------------------------------------
# Writing


def _fmt(values) -> str:
    """Numbers as text that reads back bit-exactly (shortest round-trip repr)."""
    return " ".join(repr(float(v)) for v in values)


def write_model_text(model: Model, path: str | Path) -> None:
    """Write cameras.txt, images.txt, points3D.txt in COLMAP's text format, each file atomically."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)

    with atomic_path(path / "cameras.txt") as tmp, open(tmp, "w") as f:
        f.write("# Camera list with one line of data per camera:\n")
        f.write("#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n")
        f.write(f"# Number of cameras: {len(model.cameras)}\n")
        for cam in sorted(model.cameras.values(), key=lambda c: c.id):
            f.write(f"{cam.id} {cam.model} {cam.width} {cam.height} {_fmt(cam.params)}\n")

    num_obs = sum(int(np.count_nonzero(im.point3D_ids != INVALID_POINT3D_ID)) for im in model.images.values())
    mean_obs = num_obs / len(model.images) if model.images else 0.0
    with atomic_path(path / "images.txt") as tmp, open(tmp, "w") as f:
        f.write("# Image list with two lines of data per image:\n")
        f.write("#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n")
        f.write("#   POINTS2D[] as (X, Y, POINT3D_ID)\n")
        f.write(f"# Number of images: {len(model.images)}, mean observations per image: {mean_obs!r}\n")
        for im in sorted(model.images.values(), key=lambda i: i.id):
            f.write(f"{im.id} {_fmt(im.qvec)} {_fmt(im.tvec)} {im.camera_id} {im.name}\n")
            f.write(" ".join(
                f"{x!r} {y!r} {pid}"
                for x, y, pid in zip(im.xys[:, 0].tolist(), im.xys[:, 1].tolist(), im.point3D_ids.tolist())
            ) + "\n")

    track_len = sum(len(p.image_ids) for p in model.points3D.values())
    mean_track = track_len / len(model.points3D) if model.points3D else 0.0
    with atomic_path(path / "points3D.txt") as tmp, open(tmp, "w") as f:
        f.write("# 3D point list with one line of data per point:\n")
        f.write("#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n")
        f.write(f"# Number of points: {len(model.points3D)}, mean track length: {mean_track!r}\n")
        for p in sorted(model.points3D.values(), key=lambda p: p.id):
            r, g, b = (int(c) for c in p.rgb)
            track = " ".join(f"{i} {j}" for i, j in zip(p.image_ids.tolist(), p.point2D_idxs.tolist()))
            f.write(f"{p.id} {_fmt(p.xyz)} {r} {g} {b} {float(p.error)!r} {track}\n".replace(" \n", "\n"))


# ---------------------------------------------------------------------------------------------
# Ground truth


def covisibility_overlap(point_sets: list[np.ndarray]) -> np.ndarray:
    """Overlap (N,N) float32 = |P_i & P_j| / min(|P_i|, |P_j|) of N sets of point ids.

    The D2-Net/MegaDepth co-visibility score. The diagonal is 1; a pair where either image sees no point
    has overlap 0. Intersections come from one sparse product of the image-by-point incidence matrix.
    """
    n = len(point_sets)
    if n == 0:
        return np.zeros((0, 0), np.float32)
    sets = [np.unique(np.asarray(s, np.int64)) for s in point_sets]
    rows = np.repeat(np.arange(n), [len(s) for s in sets])
    ids = np.concatenate(sets)
    _, cols = np.unique(ids, return_inverse=True)
    incidence = scipy.sparse.csr_matrix(
        (np.ones(len(ids), np.float64), (rows, cols.ravel())), shape=(n, int(cols.max(initial=-1)) + 1)
    )
    common = (incidence @ incidence.T).toarray()
    counts = np.diag(common).copy()
    smaller = np.minimum(counts[:, None], counts[None, :])
    overlap = np.divide(common, smaller, out=np.zeros_like(common), where=smaller > 0)
    np.fill_diagonal(overlap, 1.0)
    return overlap.astype(np.float32)


def ground_truth_from_model(model: Model, allow_distortion: bool = False) -> GroundTruth:
    """Calibration, poses and co-visibility overlap of a model, images sorted by name.

    P_i is the set of 3D point ids observed in image i (observations of ids absent from points3D are
    ignored). The overlap is None when the model has no 3D points at all.
    """
    images = sorted(model.images.values(), key=lambda im: im.name)
    where = f"{model.path}: " if model.path is not None else ""
    Ks = []
    for im in images:
        if im.camera_id not in model.cameras:
            raise ModelError(f"{where}image {im.name} uses camera {im.camera_id}, missing from cameras")
        try:
            Ks.append(camera_matrix(model.cameras[im.camera_id], allow_distortion))
        except ModelError as e:
            raise ModelError(f"{where}{e}") from None
    n = len(images)
    K = np.stack(Ks) if n else np.zeros((0, 3, 3))
    T = np.stack([im.T_w2cam() for im in images]) if n else np.zeros((0, 4, 4))
    size = np.array([[model.cameras[im.camera_id].width, model.cameras[im.camera_id].height] for im in images],
                    np.int64).reshape(n, 2)
    overlap = None
    if model.points3D:
        known = np.fromiter(model.points3D.keys(), np.int64, len(model.points3D))
        point_sets = [im.point3D_ids[np.isin(im.point3D_ids, known)] for im in images]
        overlap = covisibility_overlap(point_sets)
    return GroundTruth([im.name for im in images], K, T, size, overlap)


def _scene_depths(centers: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """A typical scene depth per camera (N,), from where its optical axis passes closest to the others'.

    For cameras i, j the points of closest approach of their axes lie at depths s_i, s_j; pairs whose axes
    meet in front of both cameras (gap below half the depth) vote, the median vote is camera i's depth.
    Cameras without a vote take the median of all votes (or twice the median baseline).
    """
    n = len(centers)
    w = centers[:, None, :] - centers[None, :, :]  # c_i - c_j
    b = axes @ axes.T
    d = np.einsum("ik,ijk->ij", axes, w)
    e = np.einsum("jk,ijk->ij", axes, w)
    denom = 1.0 - b**2
    with np.errstate(divide="ignore", invalid="ignore"):  # parallel axes: inf/nan, rejected below
        s = (b * e - d) / denom
        u = (e - b * d) / denom
        gap = np.linalg.norm(w + s[..., None] * axes[:, None, :] - u[..., None] * axes[None, :, :], axis=-1)
    ok = (denom > 1e-4) & (s > 0) & (u > 0) & (gap < 0.5 * np.minimum(s, u)) & ~np.eye(n, dtype=bool)
    votes = np.where(ok, s, np.nan)
    depths = np.full(n, np.nan)
    has_vote = ok.any(axis=1)
    depths[has_vote] = np.nanmedian(votes[has_vote], axis=1)
    if has_vote.any():
        fallback = float(np.median(depths[has_vote]))
    else:
        baselines = np.linalg.norm(w, axis=-1)[~np.eye(n, dtype=bool)]
        fallback = 2.0 * float(np.median(baselines)) if baselines.size and np.median(baselines) > 0 else 1.0
    depths[~has_vote] = fallback
    return depths


def pose_overlap(K: np.ndarray, T_w2cam: np.ndarray, image_size: np.ndarray, grid: int = 16,
                 max_angle: float = 60.0) -> np.ndarray:
    """Overlap (N,N) float32 estimated from calibrated poses alone, for models without 3D points.

    Each camera's scene is taken as a plane facing it at its typical depth (`_scene_depths`); a grid of
    grid x grid pixels of i is lifted onto it and projected into j. A point counts where it lands inside j,
    weighted by how squarely j sees i's plane: 1 when the rays from i and j to the point agree, falling
    linearly to 0 at `max_angle` degrees (a surface seen from the side or behind shares no features).
    f_ij is the mean weight; as the co-visibility |P_i & P_j| / min(|P_i|, |P_j|), overlap = max(f_ij, f_ji).
    An approximation (no occlusion, no relief) used only when a model has no 3D points.
    """
    K, T = np.asarray(K, np.float64), np.asarray(T_w2cam, np.float64)
    size = np.asarray(image_size, np.float64).reshape(-1, 2)
    n = len(K)
    if n == 0:
        return np.zeros((0, 0), np.float32)
    R, t = T[:, :3, :3], T[:, :3, 3]
    centers = -np.einsum("nji,nj->ni", R, t)
    axes = R[:, 2, :]  # the camera z axis in world coordinates
    depths = _scene_depths(centers, axes)
    min_cos = np.cos(np.radians(max_angle))
    frac = (np.arange(grid) + 0.5) / grid
    seen = np.zeros((n, n))
    for i in range(n):
        u, v = np.meshgrid(frac * size[i, 0], frac * size[i, 1])
        pix = np.stack([u.ravel(), v.ravel(), np.ones(u.size)])
        X = R[i].T @ (np.linalg.solve(K[i], pix) * depths[i] - t[i][:, None])  # (3,G) world points
        cam = np.einsum("nij,jg->nig", R, X) + t[:, :, None]  # (N,3,G) in every camera
        z = cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            proj = np.einsum("nij,njg->nig", K, cam)
            x, y = proj[:, 0] / proj[:, 2], proj[:, 1] / proj[:, 2]
        inside = (z > 0) & (x >= 0) & (x < size[:, :1]) & (y >= 0) & (y < size[:, 1:])
        ray_i = X - centers[i][:, None]  # (3,G)
        ray_j = X[None] - centers[:, :, None]  # (N,3,G)
        cos = np.einsum("kg,nkg->ng", ray_i, ray_j) / (
            np.linalg.norm(ray_i, axis=0) * np.linalg.norm(ray_j, axis=1) + 1e-12)
        weight = np.clip((cos - min_cos) / (1.0 - min_cos), 0.0, 1.0)
        seen[i] = (inside * weight).mean(axis=1)
    overlap = np.maximum(seen, seen.T)
    np.fill_diagonal(overlap, 1.0)
    return overlap.astype(np.float32)


class ColmapScene(SceneReader):
    """Your own data: a COLMAP model (text or binary) and its image folder, in one scene folder.

    `images` and `model` are relative to the scene folder; when `model` holds no model but `model/0` does
    (COLMAP's mapper output), that one is used. Without 3D points the overlap is estimated from the poses
    (`pose_overlap`). Image names are as in the model, relative to the image folder.
    """

    source = "colmap"

    def __init__(self, root: str | Path, scene: str | None = None, images: str = "images", model: str = "sparse"):
        super().__init__(root, scene)
        self.images, self.model = images, model

    @property
    def image_dir(self) -> Path:
        return self.scene_dir / self.images

    @property
    def model_dir(self) -> Path:
        path = self.scene_dir / self.model
        if path.is_dir() and not any((path / f"cameras{ext}").exists() for ext in (".txt", ".bin")) \
                and (path / "0").is_dir():
            return path / "0"
        return path

    def ground_truth(self) -> GroundTruth:
        if not self.scene_dir.is_dir():
            raise FileNotFoundError(f"{self.scene_dir}: folder not found; set the dataset's `root` to the folder "
                                    f"holding {self.images}/ and {self.model}/")
        model = read_model(self.model_dir)
        missing = [im.name for im in model.images.values() if not (self.image_dir / im.name).is_file()]
        if missing:
            raise FileNotFoundError(f"{self.image_dir / missing[0]}: image of {self.model_dir} not found "
                                    f"({len(missing)} missing in all); check the dataset's `images` key")
        gt = ground_truth_from_model(model)
        if gt.overlap is None and len(gt.names):
            logger.warning("%s: no 3D points; overlap estimated from the camera poses", self.model_dir)
            gt.overlap = pose_overlap(gt.K, gt.T_w2cam, gt.image_size)
        return gt


# ---------------------------------------------------------------------------------------------
# CLI


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vop.datasets.colmap", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gt = sub.add_parser("gt", help="write gt.h5 (K, poses, sizes, co-visibility overlap) of a model")
    gt.add_argument("model", type=Path, help="model directory (text or binary)")
    gt.add_argument("out", type=Path, help="output gt.h5")
    gt.add_argument("--allow-distortion", action="store_true",
                    help="use the pinhole part of distorted cameras (ignores distortion)")
    conv = sub.add_parser("convert", help="write any model as a text model")
    conv.add_argument("model", type=Path)
    conv.add_argument("out", type=Path, help="output directory")
    args = parser.parse_args(argv)

    model = read_model(args.model)
    if args.command == "gt":
        write_gt(args.out, ground_truth_from_model(model, args.allow_distortion))
    else:
        write_model_text(model, args.out)


if __name__ == "__main__":
    main()
