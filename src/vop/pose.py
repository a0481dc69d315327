"""Relative pose of retrieved pairs: SIFT features, mutual-NN matching, essential matrix, pose errors.

The pose stage proves a retrieval: for every retrieved (query, db) pair it matches local features,
estimates the relative pose and scores it against the ground truth (DESIGN.md, `pose.csv`).

Features: OpenCV SIFT or COLMAP's SIFT (pycolmap), RootSIFT optional, a keypoint budget and a resize.
Estimators: OpenCV's USAC_MAGSAC, poselib and pycolmap (both LO-RANSAC with refinement). Every pair is
estimated at each RANSAC threshold of a sweep (the VOP paper's {0.5, 1.5, 2, 3} px) and the estimate with
the most inliers is kept; inliers are counted for every candidate with one yardstick (the Sampson error
against the smallest threshold of the sweep), so a loose threshold cannot win by its looseness alone.
Pairs run in a pool of single-threaded worker processes, one per thread of the job.

Local features are extracted once per image into an h5 laid out like hloc's local features, so hloc's
tools can read it: per image `keypoints` (N,2), `descriptors` (128,N), `scores` (N,), `image_size` [w,h].
Keypoints follow hloc's convention (the centre of the top-left pixel is (0,0)); the ground-truth K follows
COLMAP's (its corner is (0,0)), so `estimate_poses` shifts keypoints by half a pixel before normalising.

    python -m vop.pose extract --image_dir IMAGES --gt gt.h5 --output local-sift.h5
    python -m vop.pose estimate --pairs pairs.txt --gt gt.h5 --features local-sift.h5 --output pose.csv \
        --estimator poselib --thresholds 0.5 1.5 2 3 --workers 2
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import multiprocessing as mp
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import h5py
import numpy as np
import threadpoolctl

from vop.io import (
    GroundTruth,
    read_gt,
    read_names,
    read_pairs,
    write_csv,
    write_image_groups,
)
from vop.utils import l2_normalize
from vop.utils import root_sift as to_root_sift

logger = logging.getLogger(__name__)

POSE_COLUMNS = ["query", "db", "num_matches", "num_inliers", "threshold", "R_err_deg", "t_err_deg"]
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".webp"}


# ---------------------------------------------------------------------------------------------------
# Local features


def _read_gray(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: image not found; check --image_dir and that the names match the dataset's model"
        )
    # The raw pixel grid, as COLMAP sees it: the ground-truth intrinsics describe that grid, not the
    # EXIF-rotated one.
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise ValueError(f"{path}: OpenCV cannot decode this image (corrupt or unsupported format); "
                         "replace the file or remove it from the scene")
    return image


def _resize(image: np.ndarray, resize_max: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The image downscaled so that its longer side is at most resize_max, and the (x, y) scale back."""
    h, w = image.shape[:2]
    if not resize_max or max(w, h) <= resize_max:
        return image, np.ones(2)
    s = resize_max / max(w, h)
    new_w, new_h = max(1, round(w * s)), max(1, round(h * s))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
    return resized, np.array([w / new_w, h / new_h])


def _no_features(w: int, h: int) -> dict[str, np.ndarray]:
    # A textureless image is legal: its pairs are recorded as failed later.
    return {"keypoints": np.zeros((0, 2), np.float32), "descriptors": np.zeros((128, 0), np.float16),
            "scores": np.zeros((0,), np.float32), "image_size": np.array([w, h], np.int64)}


def _pack(kpts: np.ndarray, desc: np.ndarray, scores: np.ndarray, scale_xy: np.ndarray,
          w: int, h: int) -> dict[str, np.ndarray]:
    # Back to original pixels; pixel centres map onto pixel centres.
    kpts = ((kpts + 0.5) * scale_xy - 0.5).astype(np.float32)
    return {
        "keypoints": kpts,
        "descriptors": np.ascontiguousarray(desc.T).astype(np.float16),  # hloc stores D x N
        "scores": scores.astype(np.float32),
        "image_size": np.array([w, h], np.int64),
    }


def _sift_opencv(image: np.ndarray, max_keypoints: int, root_sift: bool):
    # nfeatures=0 keeps all candidates so that the cut below sees every orientation duplicate.
    cv_kpts, desc = cv2.SIFT_create(nfeatures=0).detectAndCompute(image, None)
    if desc is None or len(cv_kpts) == 0:
        return None
    # OpenCV detects on the image upsampled x2 and halves the coordinates without the half-pixel
    # correction, so its keypoints sit 0.25 px right of and below the pixel-centre convention (measured
    # on Gaussian blobs: +0.23..+0.28 px at every scale; pycolmap's SIFT is exact there).
    kpts = np.array([k.pt for k in cv_kpts], np.float64) - 0.25
    scores = np.array([k.response for k in cv_kpts], np.float32)
    # OpenCV returns duplicates for multiple orientations; keep the strongest max_keypoints overall.
    order = np.argsort(-scores, kind="stable")[:max_keypoints]
    kpts, desc, scores = kpts[order], desc[order].astype(np.float32), scores[order]
    return kpts, l2_normalize(to_root_sift(desc) if root_sift else desc), scores


def _sift_colmap(image: np.ndarray, max_keypoints: int, root_sift: bool):
    import pycolmap

    options = pycolmap.FeatureExtractionOptions()
    options.num_threads = 1  # the images are spread over threads already
    options.sift.max_num_features = max_keypoints
    options.sift.normalization = (pycolmap.Normalization.L1_ROOT if root_sift else pycolmap.Normalization.L2)
    with warnings.catch_warnings():
        # pycolmap 4 deprecates Sift for FeatureExtractor, whose keypoints come back as Python objects.
        warnings.simplefilter("ignore", DeprecationWarning)
        sift = pycolmap.Sift(options, device=pycolmap.Device.cpu)
    kpts, desc = sift.extract(np.ascontiguousarray(image, dtype=np.float32) / 255.0)
    if len(kpts) == 0:
        return None
    # COLMAP applies the budget before adding extra orientations: cut again, keeping the largest scales
    # as COLMAP does, so the budget holds for both extractors.
    order = np.argsort(-kpts[:, 2], kind="stable")[:max_keypoints]
    kpts, desc = kpts[order], desc[order]
    # COLMAP puts the corner of the top-left pixel at (0, 0); hloc (and this file) its centre.
    return kpts[:, :2].astype(np.float64) - 0.5, l2_normalize(desc), kpts[:, 2]


SIFT_BACKENDS = {"opencv": _sift_opencv, "pycolmap": _sift_colmap}


def _sift_one(path: Path, max_keypoints: int, resize_max: int | None, root_sift: bool,
              backend: str = "opencv") -> dict[str, np.ndarray]:
    image = _read_gray(path)
    h, w = image.shape[:2]
    image, scale_xy = _resize(image, resize_max)
    found = SIFT_BACKENDS[backend](image, max_keypoints, root_sift)
    if found is None:
        return _no_features(w, h)
    return _pack(*found, scale_xy, w, h)


def extract_local_features(image_dir: str | Path, names: Sequence[str], out_h5: str | Path,
                           max_keypoints: int = 4096, resize_max: int | None = 1600,
                           root_sift: bool = True, num_workers: int = 2, extractor: str = "opencv") -> Path:
    """SIFT on every image of `names` (paths relative to `image_dir`), written to `out_h5` atomically.

    extractor: "opencv" (cv2.SIFT) or "pycolmap" (COLMAP's SIFT); both give RootSIFT when root_sift.
    """
    image_dir, out_h5 = Path(image_dir), Path(out_h5)
    if extractor not in SIFT_BACKENDS:
        raise ValueError(f"unknown extractor {extractor!r}; choose one of {sorted(SIFT_BACKENDS)}")
    if not image_dir.is_dir():
        raise FileNotFoundError(f"{image_dir}: image directory not found")
    if len(set(names)) != len(names):
        raise ValueError("extract_local_features: duplicate image names given")

    def run(name: str) -> dict[str, np.ndarray]:
        return _sift_one(image_dir / name, max_keypoints, resize_max, root_sift, extractor)

    if num_workers > 1 and len(names) > 1:
        with ThreadPoolExecutor(num_workers) as pool:  # OpenCV and COLMAP release the GIL
            features = list(pool.map(run, names))
    else:
        features = [run(n) for n in names]
    write_image_groups(out_h5, dict(zip(names, features)))
    logger.info("Extracted %s SIFT for %d images into %s", extractor, len(names), out_h5)
    return out_h5


def read_local_features(path: str | Path, names: Iterable[str]) -> dict[str, dict[str, np.ndarray]]:
    """{name: {keypoints (N,2) float64, descriptors (N,D) float32, image_size (2,)}} for `names`."""
    path = Path(path)
    out = {}
    with h5py.File(path, "r") as f:
        for name in names:
            if name not in f or "keypoints" not in f[name]:
                raise KeyError(f"{path}: no local features for image {name!r}; the file is stale or from "
                               "another scene: delete it and rerun the extraction")
            g = f[name]
            out[name] = {
                "keypoints": g["keypoints"][()].astype(np.float64).reshape(-1, 2),
                "descriptors": np.ascontiguousarray(g["descriptors"][()].astype(np.float32).T),
                "image_size": g["image_size"][()],
            }
    return out


# ---------------------------------------------------------------------------------------------------
# Matching and geometry


def match_descriptors(desc0: np.ndarray, desc1: np.ndarray, ratio: float = 0.8) -> np.ndarray:
    """Mutual nearest neighbours that pass Lowe's ratio test (0 -> 1 side, as hloc's NN matcher).

    desc0 (N0,D), desc1 (N1,D); returns (M,2) int64 indices [i0, i1]. One matmul of L2-normalised
    descriptors gives all similarities; distances follow from ||a-b||^2 = 2 - 2 a.b.
    """
    desc0 = np.asarray(desc0, np.float32)
    desc1 = np.asarray(desc1, np.float32)
    if len(desc0) == 0 or len(desc1) == 0:
        return np.zeros((0, 2), np.int64)
    desc0, desc1 = l2_normalize(desc0), l2_normalize(desc1)
    sim = desc0 @ desc1.T  # (N0,N1)

    rows = np.arange(len(desc0))
    nn01 = sim.argmax(axis=1)
    nn10 = sim.argmax(axis=0)
    best = sim[rows, nn01]
    if sim.shape[1] > 1:
        # Second best per row: mask the best in place (cheaper than a partition), then restore.
        sim[rows, nn01] = -np.inf
        second = sim.max(axis=1)
        sim[rows, nn01] = best
    else:
        second = np.full_like(best, -np.inf)  # no second neighbour: the ratio test cannot reject
    dist_best = np.sqrt(np.maximum(2.0 - 2.0 * best, 0.0))
    dist_second = np.sqrt(np.maximum(2.0 - 2.0 * second, 0.0))  # inf for -inf similarity

    keep = (nn10[nn01] == rows) & (dist_best < ratio * dist_second)
    return np.stack([rows[keep], nn01[keep]], axis=1).astype(np.int64)


def _normalize(kpts: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pixel coordinates to the normalised image plane of camera K."""
    K = np.asarray(K, np.float64)
    return (kpts - K[[0, 1], [2, 2]]) / K[[0, 1], [0, 1]]


def _opencv_pose(pts0, pts1, threshold, confidence, max_iters, seed):
    """USAC_MAGSAC on normalised coordinates; `threshold` in normalised units."""
    del seed  # USAC seeds itself with a fixed state
    try:
        E, mask = cv2.findEssentialMat(pts0, pts1, np.eye(3), method=cv2.USAC_MAGSAC,
                                       prob=confidence, threshold=threshold, maxIters=max_iters)
    except cv2.error as err:  # degenerate configurations can make the solver throw
        logger.debug("findEssentialMat failed: %s", err)
        return None
    if E is None or mask is None or E.shape[0] < 3 or E.shape[0] % 3:
        return None
    mask = mask.ravel().astype(bool)
    if mask.sum() < 5:
        return None
    # Some solvers return several candidates stacked (3k,3): keep the most cheirality-consistent one.
    best = None
    for E_candidate in np.split(E, E.shape[0] // 3):
        # The default overload drops points triangulated beyond 50 baselines: with a small baseline
        # (a 7 px shift at f = 300) that is every point and the pair failed. Count them all.
        n, R, t, _, _ = cv2.recoverPose(E_candidate, pts0, pts1, np.eye(3), distanceThresh=1e9,
                                        mask=mask.astype(np.uint8).copy())
        if best is None or n > best[0]:
            best = (n, R, t.ravel())
    n, R, t = best
    return (R, t, mask) if n > 0 else None


def _poselib_pose(pts0, pts1, threshold, confidence, max_iters, seed):
    import poselib

    # Identity cameras: the points are normalised already, so the threshold is in normalised units.
    camera = {"model": "PINHOLE", "width": 0, "height": 0, "params": [1.0, 1.0, 0.0, 0.0]}
    ransac = {"max_epipolar_error": threshold, "success_prob": confidence, "max_iterations": max_iters,
              "min_iterations": min(100, max_iters), "seed": seed}
    pose, info = poselib.estimate_relative_pose(pts0, pts1, camera, camera, ransac, {})
    mask = np.asarray(info.get("inliers", []), bool)
    if mask.shape != (len(pts0),):
        return None
    return np.asarray(pose.R), np.asarray(pose.t), mask


def _pycolmap_pose(pts0, pts1, threshold, confidence, max_iters, seed):
    import pycolmap

    options = pycolmap.RANSACOptions()
    options.max_error = threshold
    options.confidence = confidence
    options.max_num_trials = max_iters
    options.min_num_trials = min(100, max_iters)
    options.random_seed = seed
    # Identity cameras: the points are normalised already, so the error is in normalised units. (The
    # camera-ray overload measures another error and keeps 0.3 degree off on noiseless points.)
    camera = pycolmap.Camera(model="PINHOLE", width=1, height=1, params=[1.0, 1.0, 0.0, 0.0])
    result = pycolmap.estimate_relative_pose(camera, pts0, camera, pts1, options)
    if result is None:
        return None
    rigid = result["cam2_from_cam1"]
    return rigid.rotation.matrix(), np.asarray(rigid.translation), np.asarray(result["inlier_mask"], bool)


ESTIMATORS = {"opencv": _opencv_pose, "poselib": _poselib_pose, "pycolmap": _pycolmap_pose}
DEFAULT_THRESHOLDS_PX = (0.5, 1.5, 2.0, 3.0)


def _check_estimator(estimator: str) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {sorted(ESTIMATORS)} "
                         "(config: pose.estimator)")


def _mean_focal(K0: np.ndarray, K1: np.ndarray) -> float:
    return float(np.mean([K0[0, 0], K0[1, 1], K1[0, 0], K1[1, 1]]))


def estimate_relative_pose(kpts0: np.ndarray, kpts1: np.ndarray, K0: np.ndarray, K1: np.ndarray,
                           threshold_px: float = 1.0, confidence: float = 0.99999,
                           max_iters: int = 10000, estimator: str = "opencv", seed: int = 0):
    """Relative pose T_{0->1} from matched keypoints (M,2) of two calibrated images.

    Returns (R (3,3), t (3,) unit, inlier_mask (M,) bool) or None when fewer than 5 matches or no valid
    model. Coordinates are normalised by each image's own K, so the two cameras may differ; the pixel
    threshold is converted with the mean focal length, the same way for every estimator.
    """
    _check_estimator(estimator)
    kpts0 = np.asarray(kpts0, np.float64).reshape(-1, 2)
    kpts1 = np.asarray(kpts1, np.float64).reshape(-1, 2)
    if len(kpts0) != len(kpts1):
        raise ValueError(f"estimate_relative_pose: {len(kpts0)} vs {len(kpts1)} keypoints; pass matches")
    if len(kpts0) < 5:
        return None
    K0, K1 = np.asarray(K0, np.float64), np.asarray(K1, np.float64)
    pts0, pts1 = _normalize(kpts0, K0), _normalize(kpts1, K1)
    threshold = threshold_px / _mean_focal(K0, K1)
    try:
        result = ESTIMATORS[estimator](pts0, pts1, threshold, confidence, max_iters, seed)
    except (RuntimeError, ValueError) as err:  # a degenerate sample set is a failed pair, not a crash
        logger.debug("%s failed: %s", estimator, err)
        return None
    if result is None:
        return None
    R, t, mask = result
    R, t = np.asarray(R, np.float64), np.asarray(t, np.float64).ravel()
    norm = np.linalg.norm(t)
    if mask.sum() < 5 or norm == 0 or not (np.all(np.isfinite(R)) and np.all(np.isfinite(t))):
        return None
    return R, t / norm, mask


def sampson_error_px(kpts0: np.ndarray, kpts1: np.ndarray, K0: np.ndarray, K1: np.ndarray,
                     R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(M,) Sampson distance of each match to the epipolar geometry of (R, t), in pixels (mean focal)."""
    K0, K1 = np.asarray(K0, np.float64), np.asarray(K1, np.float64)
    x0 = np.c_[_normalize(np.asarray(kpts0, np.float64), K0), np.ones(len(kpts0))]
    x1 = np.c_[_normalize(np.asarray(kpts1, np.float64), K1), np.ones(len(kpts1))]
    t = np.asarray(t, np.float64).ravel()
    E = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]]) @ np.asarray(R, np.float64)
    Ex0 = x0 @ E.T  # epipolar lines in image 1
    Etx1 = x1 @ E  # epipolar lines in image 0
    num = np.einsum("ij,ij->i", x1, Ex0)
    den = Ex0[:, 0] ** 2 + Ex0[:, 1] ** 2 + Etx1[:, 0] ** 2 + Etx1[:, 1] ** 2
    return np.abs(num) / np.sqrt(np.maximum(den, 1e-300)) * _mean_focal(K0, K1)


def estimate_relative_pose_sweep(kpts0: np.ndarray, kpts1: np.ndarray, K0: np.ndarray, K1: np.ndarray,
                                 thresholds_px: Sequence[float] = DEFAULT_THRESHOLDS_PX,
                                 estimator: str = "opencv", **kwargs):
    """The best of one estimation per RANSAC threshold: (R, t, inlier_mask, threshold_px) or None.

    Every candidate's inliers are counted with one yardstick, the Sampson error below the smallest
    threshold of the sweep; the candidate with the most wins, ties to the smaller threshold. The
    returned mask is that yardstick's inlier set, so inlier counts compare across pairs.
    """
    thresholds = sorted(float(t) for t in thresholds_px)
    if not thresholds or thresholds[0] <= 0:
        raise ValueError(f"thresholds_px must be positive pixel values, got {list(thresholds_px)}")
    best = None
    for threshold in thresholds:
        result = estimate_relative_pose(kpts0, kpts1, K0, K1, threshold_px=threshold, estimator=estimator,
                                        **kwargs)
        if result is None:
            continue
        R, t, _ = result
        mask = sampson_error_px(kpts0, kpts1, K0, K1, R, t) <= thresholds[0]
        if best is None or mask.sum() > best[2].sum():
            best = (R, t, mask, threshold)
    return best


def _angle_deg(cos: float) -> float:
    return math.degrees(math.acos(float(np.clip(cos, -1.0, 1.0))))


def relative_pose_error(T_0to1: np.ndarray | None, R: np.ndarray | None, t: np.ndarray | None,
                        ignore_gt_t_norm: float = 0.0) -> tuple[float, float]:
    """(rotation error, translation-direction error) in degrees; (inf, inf) when R or t is None.

    The translation error is the angle between directions up to sign (min(a, 180-a)): an essential
    matrix fixes t only up to sign, as the SuperGlue/LoFTR evaluation accounts for. A ground-truth
    baseline of norm <= ignore_gt_t_norm has no direction, so its error is 0.
    """
    if R is None or t is None or T_0to1 is None:
        return math.inf, math.inf
    T_0to1 = np.asarray(T_0to1, np.float64)
    R_gt, t_gt = T_0to1[:3, :3], T_0to1[:3, 3]
    R = np.asarray(R, np.float64)
    t = np.asarray(t, np.float64).ravel()
    R_err = _angle_deg((np.trace(R_gt.T @ R) - 1.0) / 2.0)

    norm_gt, norm = np.linalg.norm(t_gt), np.linalg.norm(t)
    if norm_gt <= ignore_gt_t_norm or norm_gt == 0.0:
        t_err = 0.0
    elif norm == 0.0:
        t_err = math.inf
    else:
        t_err = _angle_deg(t @ t_gt / (norm * norm_gt))
        t_err = min(t_err, 180.0 - t_err)
    return R_err, t_err


# ---------------------------------------------------------------------------------------------------
# The pose stage


def _check_pairs(pairs: Sequence[tuple[str, str]], gt: GroundTruth, gt_path: str | Path) -> dict[str, int]:
    index = gt.index()
    for query, db in pairs:
        for name in (query, db):
            if name not in index:
                raise ValueError(f"pair ({query}, {db}): image {name!r} is not in {gt_path}; "
                               "the pairs file is from another scene or stale: rerun its retrieval rule")
    return index


def _check_image_sizes(features: dict, gt: GroundTruth, index: dict[str, int],
                       features_path: str | Path, gt_path: str | Path) -> None:
    """K only applies to the pixel grid it was calibrated on."""
    for name, feats in features.items():
        size, gt_size = np.asarray(feats["image_size"]).ravel(), np.asarray(gt.image_size[index[name]]).ravel()
        if not np.array_equal(size.astype(np.int64), gt_size.astype(np.int64)):
            raise ValueError(
                f"{features_path}: image {name!r} is {size.tolist()} [w,h] but {gt_path} calibrates it at "
                f"{gt_size.tolist()}; extract the local features from the images the ground truth describes")


# What the pose workers read. Set in the parent before the pool forks, so the features reach the workers
# by copy-on-write instead of being pickled to each of them.
_TASK: dict = {}


@contextlib.contextmanager
def _one_thread():
    """OpenCV and BLAS on one thread here, and in the workers forked meanwhile: parallelism comes from
    the pairs. Set before the fork, never in a worker: cv2.setNumThreads in a forked child waits for
    the parent's OpenCV threads, which do not exist there (it hung the test process)."""
    previous = cv2.getNumThreads()
    with threadpoolctl.threadpool_limits(1):
        cv2.setNumThreads(1)
        try:
            yield
        finally:
            cv2.setNumThreads(previous)


def _pose_of_pair(query: str, db: str) -> list:
    task = _TASK
    f0, f1 = task["features"][query], task["features"][db]
    gt, index = task["gt"], task["index"]
    matches = match_descriptors(f0["descriptors"], f1["descriptors"], ratio=task["ratio"])
    i, j = index[query], index[db]
    # hloc keypoints -> COLMAP pixel convention of K.
    kpts0 = f0["keypoints"][matches[:, 0]] + 0.5
    kpts1 = f1["keypoints"][matches[:, 1]] + 0.5
    result = estimate_relative_pose_sweep(kpts0, kpts1, gt.K[i], gt.K[j], task["thresholds_px"],
                                          estimator=task["estimator"])
    if result is None:
        # A failed pair still gets its row: no query is ever dropped.
        return [query, db, len(matches), 0, math.nan, math.inf, math.inf]
    R, t, inliers, threshold = result
    R_err, t_err = relative_pose_error(gt.relative_pose(i, j), R, t)
    return [query, db, len(matches), int(inliers.sum()), threshold, R_err, t_err]


def _pose_of_chunk(chunk: Sequence[tuple[str, str]]) -> list[list]:
    return [_pose_of_pair(q, d) for q, d in chunk]


def _run_pairs(pairs: Sequence[tuple[str, str]], num_workers: int) -> list[list]:
    """Rows of every pair, in order: here, or in a pool of single-threaded worker processes."""
    with _one_thread():
        if num_workers <= 1 or len(pairs) < 2:
            return _pose_of_chunk(pairs)
        num_workers = min(num_workers, len(pairs))
        # Small chunks keep the workers busy to the end (pairs differ in cost), few enough to cost nothing.
        size = max(1, math.ceil(len(pairs) / (num_workers * 8)))
        chunks = [pairs[k:k + size] for k in range(0, len(pairs), size)]
        # Forked workers share the features read here by copy-on-write: no pickling, no re-import (a
        # spawned worker would spend seconds importing torch through vop.utils).
        with mp.get_context("fork").Pool(num_workers) as pool:
            return [row for rows in pool.imap(_pose_of_chunk, chunks) for row in rows]


def estimate_poses(pairs: Sequence[tuple[str, str]], gt: GroundTruth | str | Path,
                   local_features_h5: str | Path, out_csv: str | Path,
                   thresholds_px: float | Sequence[float] = DEFAULT_THRESHOLDS_PX, ratio: float = 0.8,
                   estimator: str = "opencv", num_workers: int = 2,
                   gt_path: str | Path | None = None) -> list[list]:
    """Match, estimate and score every (query, db) pair, in order; write `pose.csv` atomically.

    `gt` is a GroundTruth or the path of a gt.h5 (`gt_path` only names the file in error messages).
    The ground truth is T_{query->db} = gt.relative_pose(i_query, i_db). Each pair is estimated at every
    threshold of `thresholds_px` (one number: no sweep) and the `threshold` column records the one kept.
    Every pair gets a row: a pair whose estimation failed (too few matches, e.g. a textureless image,
    or a degenerate configuration) has 0 inliers, no threshold and inf errors. Returns the rows.
    `num_workers` processes share the pairs, each single-threaded; 1 runs them here on one thread.
    """
    _check_estimator(estimator)
    thresholds = [float(thresholds_px)] if np.isscalar(thresholds_px) else [float(t) for t in thresholds_px]
    if not isinstance(gt, GroundTruth):
        gt_path, gt = gt, read_gt(gt)
    gt_path = gt_path or "the ground truth (gt.h5)"
    pairs = [tuple(p) for p in pairs]
    index = _check_pairs(pairs, gt, gt_path)
    names = list(dict.fromkeys(n for pair in pairs for n in pair))
    # Read once up front: h5py serialises access anyway, and each image is shared by many pairs.
    features = read_local_features(local_features_h5, names)
    _check_image_sizes(features, gt, index, local_features_h5, gt_path)

    _TASK.update(features=features, gt=gt, index=index, ratio=ratio, thresholds_px=thresholds,
                 estimator=estimator)
    try:
        rows = _run_pairs(pairs, num_workers)
    finally:
        _TASK.clear()
    write_csv(out_csv, POSE_COLUMNS, rows)
    failed = sum(1 for r in rows if not math.isfinite(r[5]))
    logger.info("Estimated %d relative poses with %s at thresholds %s px (%d failed) into %s",
                len(rows), estimator, thresholds, failed, out_csv)
    return rows


# ---------------------------------------------------------------------------------------------------
# CLI


def _list_images(image_dir: Path) -> list[str]:
    return sorted(p.relative_to(image_dir).as_posix() for p in image_dir.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vop.pose", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    ext = sub.add_parser("extract", help="SIFT local features for the images of a scene")
    ext.add_argument("--image_dir", type=Path, required=True)
    ext.add_argument("--output", type=Path, required=True, help="local-features h5 to write")
    which = ext.add_mutually_exclusive_group()
    which.add_argument("--gt", type=Path, help="take the image names from this gt.h5 (default: all images)")
    which.add_argument("--image_list", type=Path, help="text file with one image name per line")
    ext.add_argument("--max_keypoints", type=int, default=4096)
    ext.add_argument("--resize_max", type=int, default=1600, help="0: never downscale")
    ext.add_argument("--no_root_sift", action="store_true")
    ext.add_argument("--extractor", choices=sorted(SIFT_BACKENDS), default="opencv")
    ext.add_argument("--workers", type=int, default=2)

    est = sub.add_parser("estimate", help="relative pose of every retrieved pair -> pose.csv")
    est.add_argument("--pairs", type=Path, required=True, help="hloc pairs.txt")
    est.add_argument("--gt", type=Path, required=True, help="gt.h5 of the scene")
    est.add_argument("--features", type=Path, required=True, help="local-features h5 from `extract`")
    est.add_argument("--output", type=Path, required=True, help="pose.csv to write")
    est.add_argument("--thresholds", type=float, nargs="+", default=list(DEFAULT_THRESHOLDS_PX),
                     help="RANSAC thresholds in pixels, the best of them is kept per pair")
    est.add_argument("--estimator", choices=sorted(ESTIMATORS), default="opencv")
    est.add_argument("--ratio", type=float, default=0.8, help="Lowe ratio test")
    est.add_argument("--workers", type=int, default=2)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.command == "extract":
        if args.gt:
            names = read_names(args.gt)
        elif args.image_list:
            names = [line.strip() for line in args.image_list.read_text().splitlines() if line.strip()]
        else:
            names = _list_images(args.image_dir)
        extract_local_features(args.image_dir, names, args.output, max_keypoints=args.max_keypoints,
                               resize_max=args.resize_max or None, root_sift=not args.no_root_sift,
                               num_workers=args.workers, extractor=args.extractor)
    else:
        estimate_poses(read_pairs(args.pairs), args.gt, args.features, args.output,
                       thresholds_px=args.thresholds, ratio=args.ratio, estimator=args.estimator,
                       num_workers=args.workers)


if __name__ == "__main__":
    main()
