"""COLMAP databases from the pipeline's own features and matches, written with pycolmap; two-view verification.

This replaces `colmap feature_importer` + `colmap matches_importer` (hours on large pair lists): every row is
written from Python in one SQLite transaction, at tens of thousands of pairs per second
(benchmarks/colmap_database.py).

Ids are trivial and shared, as pycolmap's `add_camera_with_trivial_rig` / `add_image_with_trivial_frame`
expect: image i of `names` (0-based) gets image id = camera id = rig id = frame id = i + 1, so a
`pycolmap.Reconstruction` built with those helpers lines up with the database (vop.triangulation).

Conventions (the pitfalls of importing hloc-style features):
- keypoints: hloc puts the centre of the top-left pixel at (0, 0), COLMAP its corner: +0.5 px on import.
- descriptors: COLMAP stores SIFT descriptors as uint8; float descriptors are L2-normalised (SIFT and
  RootSIFT both are, in vop.local_features) and mapped as COLMAP maps its own, min(255, round(512 * x))
  (FeatureDescriptorsToUnsignedByte). `pycolmap.FeatureDescriptors.from_float` is not that conversion: it
  reinterprets the float32 bytes. Descriptors are only needed for COLMAP's own matchers; mapping and
  triangulation need keypoints and matches only.
- cameras: a known K becomes a PINHOLE camera with a prior focal length (verification then estimates an
  essential matrix); unknown intrinsics get one SIMPLE_RADIAL camera per image with COLMAP's guess
  f = 1.2 * max(w, h), principal point at the centre, k = 0, and no focal-length prior.
- matches: (M, 2) keypoint indices per unordered pair; COLMAP keeps one row per pair and swaps the
  columns itself when the first image has the larger id. A pair given in both orders is written once.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pycolmap

from vop.io import atomic_path, check_pair_names, write_pairs

logger = logging.getLogger(__name__)

CameraSpec = tuple  # (K (3,3) or None, [w, h]) per image
Pair = tuple[str, str]

DEFAULT_FOCAL_FACTOR = 1.2  # COLMAP's ImageReaderOptions.default_focal_length_factor


def require_pycolmap4() -> None:
    """Rigs, frames and DatabaseTransaction are pycolmap 4 API; 3.x fails later and less clearly."""
    if int(pycolmap.__version__.split(".")[0]) < 4:
        raise ImportError(f"pycolmap {pycolmap.__version__} is installed; the COLMAP database, triangulation "
                          "and reconstruction stages need pycolmap >= 4.2: pip install -U 'pycolmap>=4.2'")


@contextlib.contextmanager
def quiet_colmap(verbose: bool = False) -> Iterator[None]:
    """Keep COLMAP's INFO lines (several per image and pair) out of stderr unless `verbose`."""
    previous = pycolmap.logging.minloglevel
    if not verbose:
        pycolmap.logging.minloglevel = max(previous, int(pycolmap.logging.WARNING))
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = previous


# ---------------------------------------------------------------------------------------------------
# Cameras, keypoints, descriptors


def make_camera(K: np.ndarray | None, size: Sequence[int]) -> pycolmap.Camera:
    """A PINHOLE camera for a known K, else COLMAP's default SIMPLE_RADIAL guess; size is [w, h]."""
    w, h = (int(v) for v in np.asarray(size).ravel()[:2])
    if w <= 0 or h <= 0:
        raise ValueError(f"image size {[w, h]} [w,h] must be positive")
    if K is None:
        f = DEFAULT_FOCAL_FACTOR * max(w, h)
        camera = pycolmap.Camera(model="SIMPLE_RADIAL", width=w, height=h, params=[f, w / 2, h / 2, 0.0])
        camera.has_prior_focal_length = False
        return camera
    K = np.asarray(K, np.float64)
    if K.shape != (3, 3) or abs(K[0, 1]) > 1e-9 or not np.allclose(K[2], [0, 0, 1]):
        raise ValueError(f"K must be a (3,3) pinhole matrix [[fx,0,cx],[0,fy,cy],[0,0,1]], got {K.tolist()}")
    camera = pycolmap.Camera(model="PINHOLE", width=w, height=h, params=[K[0, 0], K[1, 1], K[0, 2], K[1, 2]])
    camera.has_prior_focal_length = True
    return camera


def cameras_from_gt(gt, known_intrinsics: bool = True) -> list[CameraSpec]:
    """(K or None, [w, h]) per image of a GroundTruth, in its order."""
    return [(gt.K[i] if known_intrinsics else None, gt.image_size[i]) for i in range(len(gt.names))]


def to_colmap_keypoints(keypoints: np.ndarray) -> np.ndarray:
    """hloc keypoints (N,2), pixel centre at (0,0), as COLMAP's (N,2) float32, pixel corner at (0,0)."""
    kpts = np.asarray(keypoints, np.float64).reshape(-1, 2)
    return np.ascontiguousarray(kpts + 0.5, dtype=np.float32)


def to_colmap_descriptors(descriptors: np.ndarray) -> np.ndarray:
    """(N,128) descriptors as COLMAP's uint8: float ones L2-normalised, then min(255, round(512 x))."""
    desc = np.asarray(descriptors)
    if desc.ndim != 2 or desc.shape[1] != 128:
        raise ValueError(f"descriptors must be (N,128) (read_local_features' layout), got {desc.shape}")
    if desc.dtype == np.uint8:
        return np.ascontiguousarray(desc)
    desc = desc.astype(np.float32)
    desc = desc / np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(np.clip(np.round(512.0 * desc), 0, 255).astype(np.uint8))


# ---------------------------------------------------------------------------------------------------
# Writing


@dataclass
class DatabaseStats:
    """What `write_database` wrote, and how fast."""

    path: str
    images: int
    keypoints: int
    descriptors: int
    pairs: int  # pairs written to the matches table
    matches: int
    verified_pairs: int  # pairs written as two-view geometries (inlier_matches)
    inlier_matches: int
    duplicate_pairs: int  # pairs given again (either order), skipped
    seconds: float
    rows_per_s: float = field(default=0.0)  # matches + two-view-geometry rows per second

    def as_dict(self) -> dict:
        return asdict(self)


def _check_pair(pair: Pair, index: Mapping[str, int], num_keypoints: Sequence[int], m: np.ndarray,
                where: str) -> np.ndarray:
    a, b = pair
    check_pair_names([pair], index, f"{where}: the database's names")
    if a == b:
        raise ValueError(f"{where}: pair ({a}, {b}) matches an image with itself; drop it from the pairs")
    m = np.asarray(m)
    if m.ndim != 2 or m.shape[1] != 2 or not (np.issubdtype(m.dtype, np.integer) or len(m) == 0):
        raise ValueError(f"{where}: matches of ({a}, {b}) must be (M,2) integer keypoint indices, "
                         f"got {m.dtype} {m.shape}")
    # One reduction: a negative index wraps to a huge uint32 and fails the same bound.
    m32 = np.ascontiguousarray(m, dtype=np.uint32)
    if len(m32):
        hi = m32.max(axis=0)
        na, nb = num_keypoints[index[a]], num_keypoints[index[b]]
        if hi[0] >= na or hi[1] >= nb:
            raise IndexError(f"{where}: matches of ({a}, {b}) index keypoints outside the images' {[na, nb]} "
                             "keypoints; the matches and features come from different extractions")
    return m32


def write_database(path: str | Path, names: Sequence[str], cameras: Sequence[CameraSpec] | None,
                   keypoints: Mapping[str, np.ndarray], descriptors: Mapping[str, np.ndarray] | None = None,
                   matches: Mapping[Pair, np.ndarray] | Iterable[tuple[Pair, np.ndarray]] | None = None,
                   inlier_matches: Mapping[Pair, np.ndarray | pycolmap.TwoViewGeometry] | None = None,
                   image_sizes: Sequence[Sequence[int]] | None = None) -> DatabaseStats:
    """Write a fresh COLMAP database at `path` (replaced atomically): images, cameras, keypoints, matches.

    names: image names (relative to the image folder), ids 1..N in this order. cameras: (K or None, [w, h])
    per image, or None for COLMAP's default guess from `image_sizes`. keypoints: {name: (N,2)} in hloc's
    convention. descriptors: {name: (N,128)}, optional. matches: {(a, b): (M,2)} raw matches, or an
    iterable of ((a, b), matches) so that huge lists need not sit in memory. inlier_matches: {(a, b): (M,2)
    or a pycolmap.TwoViewGeometry} written as verified two-view geometries, skipping verification; arrays get
    config CALIBRATED where both images have a known K, else UNCALIBRATED. pycolmap 4.2 skips geometries of
    config UNDEFINED when it loads a database (what hloc's skip-verification writes), so one is always set.
    """
    require_pycolmap4()
    start = time.perf_counter()
    path = Path(path)
    names = list(names)
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate image names given")
    if cameras is None:
        if image_sizes is None:
            raise ValueError("write_database: give `cameras` or `image_sizes`")
        cameras = [(None, size) for size in image_sizes]
    if len(cameras) != len(names):
        raise ValueError(f"{path}: {len(cameras)} cameras for {len(names)} images")
    missing = [n for n in names if n not in keypoints]
    if missing:
        raise KeyError(f"{path}: no keypoints for {len(missing)} image(s), e.g. {missing[:3]}")
    index = {n: i for i, n in enumerate(names)}
    num_keypoints = [len(np.asarray(keypoints[n]).reshape(-1, 2)) for n in names]
    items = matches.items() if isinstance(matches, Mapping) else (matches or ())

    num_desc = num_pairs = num_matches = num_verified = num_inliers = duplicates = 0
    with atomic_path(path) as tmp, pycolmap.Database.open(tmp) as db:
        with pycolmap.DatabaseTransaction(db):
            for i, (name, spec) in enumerate(zip(names, cameras, strict=True)):
                image_id = i + 1
                K, size = spec
                camera = make_camera(K, size)
                camera.camera_id = image_id
                db.write_camera(camera, use_camera_id=True)
                sensor = pycolmap.sensor_t(type=pycolmap.SensorType.CAMERA, id=image_id)
                rig = pycolmap.Rig(rig_id=image_id)
                rig.add_ref_sensor(sensor)
                db.write_rig(rig, use_rig_id=True)
                db.write_image(pycolmap.Image(name=name, camera_id=image_id, image_id=image_id), use_image_id=True)
                frame = pycolmap.Frame(frame_id=image_id, rig_id=image_id)
                frame.add_data_id(pycolmap.data_t(sensor_id=sensor, id=image_id))
                db.write_frame(frame, use_frame_id=True)
                db.write_keypoints(image_id, to_colmap_keypoints(keypoints[name]))
                if descriptors is not None:
                    desc = to_colmap_descriptors(descriptors[name])
                    if len(desc) != num_keypoints[i]:
                        raise ValueError(f"{path}: image {name!r} has {num_keypoints[i]} keypoints but "
                                         f"{len(desc)} descriptors")
                    db.write_descriptors(image_id, pycolmap.FeatureDescriptors(
                        type=pycolmap.FeatureExtractorType.SIFT, data=desc))
                    num_desc += len(desc)

            done: set[tuple[int, int]] = set()
            for pair, m in items:
                m = _check_pair(pair, index, num_keypoints, m, str(path))
                ids = (index[pair[0]] + 1, index[pair[1]] + 1)
                key = (min(ids), max(ids))
                if key in done:
                    duplicates += 1
                    continue
                done.add(key)
                db.write_matches(ids[0], ids[1], m)
                num_pairs += 1
                num_matches += len(m)

            done.clear()
            calibrated = [spec[0] is not None for spec in cameras]
            for pair, geometry in (inlier_matches or {}).items():
                if isinstance(geometry, pycolmap.TwoViewGeometry):
                    geometry.inlier_matches = _check_pair(pair, index, num_keypoints, geometry.inlier_matches,
                                                          str(path))
                    if geometry.config == pycolmap.TwoViewGeometryConfiguration.UNDEFINED:
                        raise ValueError(f"{path}: two-view geometry of {pair} has config UNDEFINED, which "
                                         "pycolmap 4.2 ignores; set its config")
                else:
                    m = _check_pair(pair, index, num_keypoints, geometry, str(path))
                    both = calibrated[index[pair[0]]] and calibrated[index[pair[1]]]
                    config = (pycolmap.TwoViewGeometryConfiguration.CALIBRATED if both
                              else pycolmap.TwoViewGeometryConfiguration.UNCALIBRATED)
                    geometry = pycolmap.TwoViewGeometry(inlier_matches=m, config=config)
                ids = (index[pair[0]] + 1, index[pair[1]] + 1)
                key = (min(ids), max(ids))
                if key in done:
                    continue
                done.add(key)
                db.write_two_view_geometry(ids[0], ids[1], geometry)
                num_verified += 1
                num_inliers += len(geometry.inlier_matches)
    seconds = time.perf_counter() - start
    stats = DatabaseStats(str(path), len(names), int(sum(num_keypoints)), num_desc, num_pairs, num_matches,
                          num_verified, num_inliers, duplicates, seconds,
                          (num_pairs + num_verified) / seconds if seconds > 0 else 0.0)
    logger.info("Wrote %s: %d images, %d pairs (%d matches), %d verified pairs in %.2fs", path, len(names),
                num_pairs, num_matches, num_verified, seconds)
    return stats


# ---------------------------------------------------------------------------------------------------
# Verification


@dataclass
class VerifyStats:
    """Outcome of two-view verification over a database."""

    pairs_checked: int  # pairs with raw matches that verification looked at
    verified_pairs: int  # pairs of the database with at least `min_num_inliers` inliers
    inlier_matches: int
    configs: dict[str, int]  # COLMAP's TwoViewGeometry configuration of the verified pairs
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def verification_options(max_error_px: float = 4.0, min_num_inliers: int = 15, max_num_trials: int = 10000,
                         min_inlier_ratio: float = 0.25, seed: int = 0, **overrides) -> pycolmap.TwoViewGeometryOptions:
    """COLMAP's TwoViewGeometryOptions with its defaults named here; extra keyword arguments set fields."""
    options = pycolmap.TwoViewGeometryOptions()
    options.min_num_inliers = min_num_inliers
    options.ransac.max_error = max_error_px
    options.ransac.max_num_trials = max_num_trials
    options.ransac.min_inlier_ratio = min_inlier_ratio
    options.ransac.random_seed = seed
    for key, value in overrides.items():
        if not hasattr(options, key):
            raise AttributeError(f"TwoViewGeometryOptions has no field {key!r}; see its summary()")
        setattr(options, key, value)
    return options


def verify(database_path: str | Path, pairs: str | Path | Sequence[Pair] | None = None,
           options: pycolmap.TwoViewGeometryOptions | None = None, num_threads: int = -1,
           verbose: bool = False) -> VerifyStats:
    """RANSAC two-view verification (E for calibrated pairs, else F/H) of the raw matches, in place.

    pairs: None verifies every pair with matches (pycolmap.geometric_verification, multi-threaded);
    a pairs file or list verifies those (pycolmap.verify_matches). Pairs that already have a two-view
    geometry are skipped by COLMAP, so a rerun verifies only what is new.
    """
    require_pycolmap4()
    start = time.perf_counter()
    database_path = Path(database_path)
    if not database_path.is_file():
        raise FileNotFoundError(f"{database_path}: database not found; write it with write_database first")
    options = options or verification_options()
    with pycolmap.Database.open(database_path) as db:
        pairs_checked = db.num_matched_image_pairs()
    with quiet_colmap(verbose):
        if pairs is None:
            verifier = pycolmap.GeometricVerifierOptions()
            verifier.num_threads = num_threads
            pycolmap.geometric_verification(database_path, verifier_options=verifier,
                                            two_view_geometry_options=options)
        elif isinstance(pairs, (str, Path)):
            if not Path(pairs).is_file():
                raise FileNotFoundError(f"{pairs}: pairs file not found")
            pycolmap.verify_matches(database_path, Path(pairs), options)
        else:
            pairs = list(pairs)
            pairs_checked = len(pairs)
            with tempfile.TemporaryDirectory(prefix="vop-verify-") as tmp:
                write_pairs(Path(tmp) / "pairs.txt", pairs)
                pycolmap.verify_matches(database_path, Path(tmp) / "pairs.txt", options)
    counts = read_counts(database_path)
    with pycolmap.Database.open(database_path) as db:
        _, geometries = db.read_two_view_geometries()
    min_inliers = options.min_num_inliers
    good = [g for g in geometries if len(g.inlier_matches) >= min_inliers]
    configs = Counter(pycolmap.TwoViewGeometryConfiguration(int(g.config)).name for g in good)
    stats = VerifyStats(pairs_checked, len(good), int(counts["inlier_matches"]), dict(configs),
                        time.perf_counter() - start)
    logger.info("Verified %s: %d of %d pairs kept, %d inlier matches in %.2fs", database_path,
                stats.verified_pairs, pairs_checked, stats.inlier_matches, stats.seconds)
    return stats


# ---------------------------------------------------------------------------------------------------
# Reading back


def read_counts(database_path: str | Path) -> dict[str, int]:
    """Row counts of a database: images, cameras, rigs, frames, keypoints, descriptors, matched pairs,
    matches, verified pairs (two-view geometry rows: COLMAP writes one for a failed pair too, with no
    inliers) and inlier matches."""
    database_path = Path(database_path)
    if not database_path.is_file():
        raise FileNotFoundError(f"{database_path}: database not found")
    with pycolmap.Database.open(database_path) as db:
        return {
            "images": db.num_images(), "cameras": db.num_cameras(), "rigs": db.num_rigs(),
            "frames": db.num_frames(), "keypoints": db.num_keypoints(), "descriptors": db.num_descriptors(),
            "matched_pairs": db.num_matched_image_pairs(), "matches": db.num_matches(),
            "verified_pairs": db.num_verified_image_pairs(), "inlier_matches": db.num_inlier_matches(),
        }


def image_ids(database_path: str | Path) -> dict[str, int]:
    """{image name: image id} of a database."""
    with pycolmap.Database.open(database_path) as db:
        return {image.name: image.image_id for image in db.read_all_images()}


def read_matches(database_path: str | Path, a: str, b: str, verified: bool = False) -> np.ndarray:
    """Matches (M,2) of images a and b as stored, columns in the order (a, b); inliers when `verified`."""
    ids = image_ids(database_path)
    for name in (a, b):
        if name not in ids:
            raise KeyError(f"{database_path}: no image {name!r}")
    with pycolmap.Database.open(database_path) as db:
        if verified:
            if not db.exists_two_view_geometry(ids[a], ids[b]):
                return np.zeros((0, 2), np.int64)
            m = np.asarray(db.read_two_view_geometry(ids[a], ids[b]).inlier_matches)
        else:
            if not db.exists_matches(ids[a], ids[b]):
                return np.zeros((0, 2), np.int64)
            m = np.asarray(db.read_matches(ids[a], ids[b]))
    return m.reshape(-1, 2).astype(np.int64)


def read_geometries(database_path: str | Path, min_num_inliers: int = 1) -> dict[Pair, pycolmap.TwoViewGeometry]:
    """{(a, b): two-view geometry} of the verified pairs with at least `min_num_inliers` inliers, a and b in
    image-id order (the geometry's inlier columns are theirs): what `write_database(inlier_matches=...)` writes
    back into a database with the same ids, without verifying again."""
    names = {image_id: name for name, image_id in image_ids(database_path).items()}
    with pycolmap.Database.open(database_path) as db:
        pair_ids, geometries = db.read_two_view_geometries()
    out = {}
    for pair_id, geometry in zip(pair_ids, geometries):
        if len(geometry.inlier_matches) < min_num_inliers:
            continue
        id1, id2 = pycolmap.pair_id_to_image_pair(pair_id)
        out[(names[id1], names[id2])] = geometry
    return out
