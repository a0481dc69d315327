"""Relative pose of two calibrated views from matched keypoints: essential matrix with RANSAC.

Estimators (a registry, picked by `pose.estimator`): OpenCV's USAC_MAGSAC, poselib and pycolmap (both
LO-RANSAC with refinement). `estimate_relative_pose_sweep` estimates at each RANSAC threshold of a sweep
(the VOP paper's {0.5, 1.5, 2, 3} px) and keeps the estimate with the most inliers, counted for every
candidate with one yardstick (the Sampson error against the smallest threshold), so a loose threshold
cannot win by its looseness alone. Keypoints are in K's pixel convention (COLMAP's).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import cv2
import numpy as np

from vop.geometry import mean_focal, normalize_points, sampson_error_px

logger = logging.getLogger(__name__)


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


def _check_estimator(estimator: str) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {sorted(ESTIMATORS)} "
                         "(config: pose.estimator)")


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
    pts0, pts1 = normalize_points(kpts0, K0), normalize_points(kpts1, K1)
    threshold = threshold_px / mean_focal(K0, K1)
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


def estimate_relative_pose_sweep(kpts0: np.ndarray, kpts1: np.ndarray, K0: np.ndarray, K1: np.ndarray,
                                 thresholds_px: Sequence[float], estimator: str = "opencv", **kwargs):
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
