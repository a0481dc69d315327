"""Relative pose of retrieved pairs: SIFT features, mutual-NN matching, essential matrix, pose errors.

The pose stage proves a retrieval: for every retrieved (query, db) pair it matches local features,
estimates the relative pose with MAGSAC++ and scores it against the ground truth (DESIGN.md, `pose.csv`).

Local features are extracted once per image into an h5 laid out like hloc's local features, so hloc's
tools can read it: per image `keypoints` (N,2), `descriptors` (128,N), `scores` (N,), `image_size` [w,h].
Keypoints follow hloc's convention (the centre of the top-left pixel is (0,0)); the ground-truth K follows
COLMAP's (its corner is (0,0)), so `estimate_poses` shifts keypoints by half a pixel before normalising.

    python -m vop.pose extract --image_dir IMAGES --gt gt.h5 --output local-sift.h5
    python -m vop.pose estimate --pairs pairs.txt --gt gt.h5 --features local-sift.h5 --output pose.csv
"""

from __future__ import annotations

import argparse
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import h5py
import numpy as np

from vop.io import GroundTruth, read_gt, read_names, read_pairs, write_csv, write_image_groups
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


def _sift_one(path: Path, sift: cv2.SIFT, max_keypoints: int, resize_max: int | None,
              root_sift: bool) -> dict[str, np.ndarray]:
    image = _read_gray(path)
    h, w = image.shape[:2]
    scale_xy = np.ones(2)
    if resize_max and max(w, h) > resize_max:
        s = resize_max / max(w, h)
        new_w, new_h = max(1, round(w * s)), max(1, round(h * s))
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
        scale_xy = np.array([w / new_w, h / new_h])

    cv_kpts, desc = sift.detectAndCompute(image, None)
    if desc is None or len(cv_kpts) == 0:
        # A textureless image is legal: its pairs are recorded as failed later.
        kpts = np.zeros((0, 2), np.float32)
        desc = np.zeros((0, 128), np.float32)
        scores = np.zeros((0,), np.float32)
    else:
        kpts = np.array([k.pt for k in cv_kpts], np.float64)
        scores = np.array([k.response for k in cv_kpts], np.float32)
        # OpenCV returns duplicates for multiple orientations; keep the strongest max_keypoints overall.
        order = np.argsort(-scores, kind="stable")[:max_keypoints]
        kpts, desc, scores = kpts[order], desc[order].astype(np.float32), scores[order]
        # Back to original pixels; pixel centres map onto pixel centres.
        kpts = ((kpts + 0.5) * scale_xy - 0.5).astype(np.float32)
        desc = l2_normalize(to_root_sift(desc) if root_sift else desc)
    return {
        "keypoints": kpts,
        "descriptors": np.ascontiguousarray(desc.T).astype(np.float16),  # hloc stores D x N
        "scores": scores,
        "image_size": np.array([w, h], np.int64),
    }


def extract_local_features(image_dir: str | Path, names: Sequence[str], out_h5: str | Path,
                           max_keypoints: int = 4096, resize_max: int | None = 1600,
                           root_sift: bool = True, num_workers: int = 2) -> Path:
    """SIFT on every image of `names` (paths relative to `image_dir`), written to `out_h5` atomically."""
    image_dir, out_h5 = Path(image_dir), Path(out_h5)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"{image_dir}: image directory not found")
    if len(set(names)) != len(names):
        raise ValueError("extract_local_features: duplicate image names given")

    def run(name: str) -> dict[str, np.ndarray]:
        # One detector per image: cheap, and no state shared between threads. nfeatures=0 keeps all
        # candidates so that the cut in _sift_one sees every orientation duplicate.
        sift = cv2.SIFT_create(nfeatures=0)
        return _sift_one(image_dir / name, sift, max_keypoints, resize_max, root_sift)

    if num_workers > 1 and len(names) > 1:
        with ThreadPoolExecutor(num_workers) as pool:  # OpenCV releases the GIL
            features = list(pool.map(run, names))
    else:
        features = [run(n) for n in names]
    write_image_groups(out_h5, dict(zip(names, features)))
    logger.info("Extracted SIFT for %d images into %s", len(names), out_h5)
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


def estimate_relative_pose(kpts0: np.ndarray, kpts1: np.ndarray, K0: np.ndarray, K1: np.ndarray,
                           threshold_px: float = 1.0, confidence: float = 0.99999,
                           max_iters: int = 10000):
    """Relative pose T_{0->1} from matched keypoints (M,2) of two calibrated images.

    Returns (R (3,3), t (3,) unit, inlier_mask (M,) bool) or None when fewer than 5 matches or no valid
    model. Coordinates are normalised by each image's own K, so the two cameras may differ; the pixel
    threshold is converted with the mean focal length.
    """
    kpts0 = np.asarray(kpts0, np.float64).reshape(-1, 2)
    kpts1 = np.asarray(kpts1, np.float64).reshape(-1, 2)
    if len(kpts0) != len(kpts1):
        raise ValueError(f"estimate_relative_pose: {len(kpts0)} vs {len(kpts1)} keypoints; pass matches")
    if len(kpts0) < 5:
        return None
    K0, K1 = np.asarray(K0, np.float64), np.asarray(K1, np.float64)
    pts0, pts1 = _normalize(kpts0, K0), _normalize(kpts1, K1)
    mean_focal = np.mean([K0[0, 0], K0[1, 1], K1[0, 0], K1[1, 1]])
    threshold = threshold_px / mean_focal

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
        n, R, t, _ = cv2.recoverPose(E_candidate, pts0, pts1, np.eye(3), mask=mask.astype(np.uint8).copy())
        if best is None or n > best[0]:
            best = (n, R, t.ravel())
    n, R, t = best
    if n == 0 or not (np.all(np.isfinite(R)) and np.all(np.isfinite(t))):
        return None
    return R, t / np.linalg.norm(t), mask


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


def estimate_poses(pairs: Sequence[tuple[str, str]], gt: GroundTruth | str | Path,
                   local_features_h5: str | Path, out_csv: str | Path, threshold_px: float = 1.0,
                   ratio: float = 0.8, num_workers: int = 2,
                   gt_path: str | Path | None = None) -> list[list]:
    """Match, estimate and score every (query, db) pair, in order; write `pose.csv` atomically.

    `gt` is a GroundTruth or the path of a gt.h5 (`gt_path` only names the file in error messages).
    The ground truth is T_{query->db} = gt.relative_pose(i_query, i_db). Every pair gets a row: a pair
    whose estimation failed (too few matches, e.g. a textureless image) has 0 inliers and inf errors.
    Returns the rows.
    """
    if not isinstance(gt, GroundTruth):
        gt_path, gt = gt, read_gt(gt)
    gt_path = gt_path or "the ground truth (gt.h5)"
    pairs = [tuple(p) for p in pairs]
    index = _check_pairs(pairs, gt, gt_path)
    names = list(dict.fromkeys(n for pair in pairs for n in pair))
    # Read once up front: h5py serialises access anyway, and each image is shared by many pairs.
    features = read_local_features(local_features_h5, names)
    _check_image_sizes(features, gt, index, local_features_h5, gt_path)

    def run(pair: tuple[str, str]) -> list:
        query, db = pair
        f0, f1 = features[query], features[db]
        matches = match_descriptors(f0["descriptors"], f1["descriptors"], ratio=ratio)
        i, j = index[query], index[db]
        # hloc keypoints -> COLMAP pixel convention of K.
        kpts0 = f0["keypoints"][matches[:, 0]] + 0.5
        kpts1 = f1["keypoints"][matches[:, 1]] + 0.5
        result = estimate_relative_pose(kpts0, kpts1, gt.K[i], gt.K[j], threshold_px=threshold_px)
        if result is None:
            num_inliers, (R_err, t_err) = 0, (math.inf, math.inf)
        else:
            R, t, inliers = result
            num_inliers = int(inliers.sum())
            R_err, t_err = relative_pose_error(gt.relative_pose(i, j), R, t)
        return [query, db, len(matches), num_inliers, threshold_px, R_err, t_err]

    if num_workers > 1 and len(pairs) > 1:
        with ThreadPoolExecutor(num_workers) as pool:  # map keeps the input order
            rows = list(pool.map(run, pairs))
    else:
        rows = [run(p) for p in pairs]
    write_csv(out_csv, POSE_COLUMNS, rows)
    failed = sum(1 for r in rows if not math.isfinite(r[5]))
    logger.info("Estimated %d relative poses (%d failed) into %s", len(rows), failed, out_csv)
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
    ext.add_argument("--workers", type=int, default=2)

    est = sub.add_parser("estimate", help="relative pose of every retrieved pair -> pose.csv")
    est.add_argument("--pairs", type=Path, required=True, help="hloc pairs.txt")
    est.add_argument("--gt", type=Path, required=True, help="gt.h5 of the scene")
    est.add_argument("--features", type=Path, required=True, help="local-features h5 from `extract`")
    est.add_argument("--output", type=Path, required=True, help="pose.csv to write")
    est.add_argument("--threshold", type=float, default=1.0, help="RANSAC threshold in pixels")
    est.add_argument("--ratio", type=float, default=0.8, help="Lowe ratio test")
    est.add_argument("--workers", type=int, default=2)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.command == "extract":
        if args.gt:
            names = read_names(args.gt)
        elif args.image_list:
            names = [line.strip() for line in open(args.image_list) if line.strip()]
        else:
            names = _list_images(args.image_dir)
        extract_local_features(args.image_dir, names, args.output, max_keypoints=args.max_keypoints,
                               resize_max=args.resize_max or None, root_sift=not args.no_root_sift,
                               num_workers=args.workers)
    else:
        estimate_poses(read_pairs(args.pairs), args.gt, args.features, args.output,
                       threshold_px=args.threshold, ratio=args.ratio, num_workers=args.workers)


if __name__ == "__main__":
    main()
