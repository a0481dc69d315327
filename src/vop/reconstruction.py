"""Incremental SfM from a method's pairs (pycolmap), and how well it went.

A retrieval method is proved by what its pairs let SfM build: the local features are matched over the
pairs (vop.matching.match_descriptors), written to a COLMAP database (vop.colmap_database), verified by COLMAP's
two-view geometry RANSAC, and mapped by `pycolmap.incremental_mapping`. The models are written like COLMAP's
mapper, in numbered sub-folders (binary), except that they are numbered by size: `models/0` is the largest.

Metrics (`ReconstructionResult.metrics`): images registered (largest model and all models, count and percent
of the scene), models, 3D points, mean track length and reprojection error (largest model), pairs given,
matched and verified, seconds per stage. With ground-truth poses, the largest model is aligned to them by a
similarity from camera centres (LO-RANSAC, `pycolmap.estimate_sim3d_robust`), and the registered cameras are
scored: percent within 5/10/20 degrees of rotation error, and the median camera-centre error relative to
the scene extent, the median distance of all ground-truth camera centres to their centroid.

    out_dir/database.db     matches and two-view geometries
    out_dir/models/0, 1...  models, largest first (cameras, images, points3D, rigs, frames .bin)
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycolmap

from vop.colmap_database import Pair, quiet_colmap, require_pycolmap4, verification_options, verify, write_database
from vop.io import GroundTruth, check_pair_names, list_h5_names, replace_dir
from vop.local_features import read_local_features
from vop.triangulation import match_pairs

logger = logging.getLogger(__name__)

MAX_EXHAUSTIVE_IMAGES = 150
ROTATION_THRESHOLDS_DEG = (5.0, 10.0, 20.0)


# ---------------------------------------------------------------------------------------------------
# Pairs


def exhaustive_pairs(names: Sequence[str], max_images: int = MAX_EXHAUSTIVE_IMAGES) -> list[Pair]:
    """Every unordered pair (i < j) of `names`; refused above `max_images` (N^2/2 pairs to match)."""
    names = list(names)
    if len(names) > max_images:
        raise ValueError(f"exhaustive pairs of {len(names)} images is {len(names) * (len(names) - 1) // 2} pairs, "
                         f"more than max_images={max_images} allows; use a retrieval method's pairs, "
                         "sequential_pairs, or raise max_images knowingly")
    return [(names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names))]


def sequential_pairs(names: Sequence[str], overlap: int = 10) -> list[Pair]:
    """Each image with the next `overlap` images in name order (COLMAP's sequential matcher without loop
    detection): for video frames or a walk-around capture named in order."""
    if overlap < 1:
        raise ValueError(f"overlap must be >= 1, got {overlap}")
    ordered = sorted(names)
    return [(ordered[i], ordered[j]) for i in range(len(ordered))
            for j in range(i + 1, min(i + 1 + overlap, len(ordered)))]


# ---------------------------------------------------------------------------------------------------
# Mapping


def mapping_options(known_intrinsics: bool, min_model_size: int = 3, num_threads: int = -1,
                    seed: int = 0) -> pycolmap.IncrementalPipelineOptions:
    """COLMAP's incremental mapper options, with intrinsics held fixed when they are known.

    min_model_size defaults to 3, not COLMAP's 10 (which it caps at 80% of the images): a pair list that
    splits the scene should show up as several models, not as images silently dropped.
    """
    options = pycolmap.IncrementalPipelineOptions()
    options.min_model_size = min_model_size
    options.num_threads = num_threads
    options.random_seed = seed
    options.mapper.random_seed = seed
    options.triangulation.random_seed = seed
    if known_intrinsics:
        options.ba_refine_focal_length = False
        options.ba_refine_principal_point = False
        options.ba_refine_extra_params = False
        options.mapper.abs_pose_refine_focal_length = False
        options.mapper.abs_pose_refine_extra_params = False
    return options


@dataclass
class ReconstructionResult:
    """The models (largest first), where they were written, and the metrics."""

    models: list[pycolmap.Reconstruction]
    models_dir: Path
    database: Path
    metrics: dict = field(default_factory=dict)

    @property
    def largest(self) -> pycolmap.Reconstruction | None:
        return self.models[0] if self.models else None


def reconstruct(pairs: Sequence[Pair], local_features_h5: str | Path, out_dir: str | Path,
                gt: GroundTruth | None = None, names: Sequence[str] | None = None, known_intrinsics: bool = True,
                image_dir: str | Path | None = None, ratio: float = 0.8,
                verify_options: pycolmap.TwoViewGeometryOptions | None = None,
                options: pycolmap.IncrementalPipelineOptions | None = None, min_model_size: int = 3,
                num_threads: int = -1, seed: int = 0, verbose: bool = False,
                matches: Mapping[Pair, np.ndarray] | None = None,
                features: Mapping[str, Mapping[str, np.ndarray]] | None = None,
                geometries: Mapping[Pair, pycolmap.TwoViewGeometry] | None = None) -> ReconstructionResult:
    """Incremental SfM of the scene from `pairs`; writes out_dir/database.db and out_dir/models/<k>.

    Images: gt.names, else `names`, else every image of the features file; an image in no pair is kept (it
    counts as not registered). Cameras: gt's K as fixed PINHOLE cameras when `known_intrinsics` and gt is
    given, else COLMAP's SIMPLE_RADIAL guess per image, refined. With gt, the metrics include the camera
    errors of the largest model after alignment (`camera_errors`). image_dir is only used to colour points
    (without it, `options.extract_colors` is turned off). No model at all is a result, not an error:
    `num_models` 0, nothing registered. `matches`: {(a, b): (M,2)} of the pairs, matched already (the
    scene's matches store, vop.sfm), else they are matched here; `features`: the local features, read already;
    `geometries`: {(a, b): TwoViewGeometry} of the pairs, verified already (`read_geometries` of a database that
    has them), written instead of verifying again (a pair without one has no verified matches).
    """
    require_pycolmap4()
    start = time.perf_counter()
    timings: dict[str, float] = {}
    local_features_h5, out_dir = Path(local_features_h5), Path(out_dir)
    if gt is not None:
        names = list(gt.names)
    elif names is None:
        names = list_h5_names(local_features_h5)
    names = list(names)
    index = {n: i for i, n in enumerate(names)}
    pairs = [tuple(p) for p in pairs]
    check_pair_names(pairs, index, f"the scene's {len(names)} images")
    features = features if features is not None else read_local_features(local_features_h5, names)
    known = known_intrinsics and gt is not None
    if known:
        cameras = [(gt.K[i], gt.image_size[i]) for i in range(len(names))]
    else:
        cameras = [(None, features[n]["image_size"]) for n in names]

    out_dir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    if matches is None:
        matches = match_pairs(features, pairs, ratio)
    else:
        missing = [p for p in pairs if p not in matches]
        if missing:
            raise KeyError(f"reconstruct: no matches given for {len(missing)} of the pairs, e.g. {missing[:2]}")
        matches = {p: matches[p] for p in pairs}
    timings["match_s"] = time.perf_counter() - t

    t = time.perf_counter()
    database = out_dir / "database.db"
    verify_options = verify_options or verification_options(seed=seed)
    if geometries is not None:  # verified already: written as they are, no RANSAC here
        geometries = {key: geometries[key] for a, b in pairs for key in ((a, b), (b, a)) if key in geometries}
    write_database(database, names, cameras, {n: f["keypoints"] for n, f in features.items()},
                   matches=matches, inlier_matches=geometries)
    timings["database_s"] = time.perf_counter() - t
    t = time.perf_counter()
    if geometries is None:
        verified_pairs = verify(database, None, verify_options, num_threads=num_threads,
                                verbose=verbose).verified_pairs
    else:
        verified_pairs = sum(len(g.inlier_matches) >= verify_options.min_num_inliers for g in geometries.values())
    timings["verify_s"] = time.perf_counter() - t

    t = time.perf_counter()
    options = options or mapping_options(known, min_model_size, num_threads, seed)
    if image_dir is None:
        options.extract_colors = False  # else COLMAP warns once per image it cannot read
    scratch = out_dir / ".mapping.tmp"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        with quiet_colmap(verbose):
            found = pycolmap.incremental_mapping(database, Path(image_dir or out_dir), scratch, options)
        models = sorted(found.values(), key=lambda r: (-r.num_reg_images(), -r.num_points3D()))
        staged = out_dir / ".models.tmp"
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir()
        for k, rec in enumerate(models):
            (staged / str(k)).mkdir()
            rec.write(staged / str(k))
        replace_dir(staged, out_dir / "models")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    timings["mapping_s"] = time.perf_counter() - t

    metrics = model_metrics(models, names)
    metrics.update(pairs=len(pairs), pairs_matched=sum(1 for m in matches.values() if len(m)),
                   pairs_verified=verified_pairs, **timings)
    if gt is not None:
        metrics.update(camera_errors(models[0] if models else None, gt))
    metrics["seconds"] = time.perf_counter() - start
    logger.info("Reconstructed %s: %d models, largest %d/%d images, %d points in %.1fs", out_dir,
                metrics["num_models"], metrics["registered"], len(names), metrics["points3D"], metrics["seconds"])
    return ReconstructionResult(models, out_dir / "models", database, metrics)


# ---------------------------------------------------------------------------------------------------
# Metrics


def model_metrics(models: Sequence[pycolmap.Reconstruction], names: Sequence[str]) -> dict:
    """Registration and structure figures of models sorted largest first: `registered`, `points3D`, track
    length and reprojection error describe the largest; `registered_any` counts images in any model
    (COLMAP lets models share up to max_model_overlap images, so model_sizes may sum to more)."""
    n = len(names)
    largest = models[0] if models else None
    in_any = {im.name for rec in models for im in rec.images.values() if im.has_pose}
    registered = largest.num_reg_images() if largest else 0
    has_points = largest is not None and largest.num_points3D() > 0
    return {
        "num_images": n,
        "num_models": len(models),
        "registered": registered,
        "registered_pct": 100.0 * registered / n if n else 0.0,
        "registered_any": len(in_any),
        "registered_any_pct": 100.0 * len(in_any) / n if n else 0.0,
        "model_sizes": [rec.num_reg_images() for rec in models],
        "points3D": largest.num_points3D() if largest else 0,
        "mean_track_length": float(largest.compute_mean_track_length()) if has_points else 0.0,
        "mean_reprojection_error": float(largest.compute_mean_reprojection_error()) if has_points else math.nan,
    }


def scene_extent(gt: GroundTruth) -> float:
    """The median distance of the ground-truth camera centres to their centroid (the error yardstick)."""
    centers = _gt_centers(gt)
    return float(np.median(np.linalg.norm(centers - centers.mean(axis=0), axis=1))) if len(centers) else 0.0


def _gt_centers(gt: GroundTruth) -> np.ndarray:
    T = np.asarray(gt.T_w2cam, np.float64)
    return -np.einsum("nji,nj->ni", T[:, :3, :3], T[:, :3, 3])


def _rotation_error_deg(R_a: np.ndarray, R_b: np.ndarray) -> float:
    cos = (np.trace(R_a @ R_b.T) - 1.0) / 2.0
    return math.degrees(math.acos(float(np.clip(cos, -1.0, 1.0))))


def camera_errors(rec: pycolmap.Reconstruction | None, gt: GroundTruth, max_error_rel: float = 0.1) -> dict:
    """Errors of the registered cameras of `rec` against gt, after a similarity alignment of the centres.

    The similarity (gt_from_model) is fit by LO-RANSAC with inliers within max_error_rel * extent, and by
    least squares on all cameras where RANSAC finds none; fewer than 3 registered cameras: no alignment,
    NaN errors; `alignment` says which: "ok", "too_few_cameras", "degenerate" (no similarity: collinear
    centres, e.g. a straight walk, leave the rotation about their line free). rot_within_X_pct is over the
    registered cameras (registered_pct says how many there are).
    """
    extent = scene_extent(gt)
    out = {"extent": extent, "alignment": "too_few_cameras", "aligned_cameras": 0, "alignment_inliers": 0,
           **{f"rot_within_{t:g}deg_pct": math.nan for t in ROTATION_THRESHOLDS_DEG},
           "median_rot_err_deg": math.nan, "median_center_err_rel": math.nan}
    if rec is None:
        return out
    index = gt.index()
    images = [im for im in rec.images.values() if im.has_pose and im.name in index]
    if len(images) < 3 or extent <= 0:
        return out
    gt_centers = _gt_centers(gt)
    src = np.stack([np.asarray(im.projection_center(), np.float64).ravel() for im in images])
    tgt = np.stack([gt_centers[index[im.name]] for im in images])
    ransac = pycolmap.RANSACOptions()
    ransac.max_error = max_error_rel * extent
    ransac.random_seed = 0
    robust = pycolmap.estimate_sim3d_robust(src, tgt, ransac)
    sim = robust["tgt_from_src"] if robust is not None else pycolmap.estimate_sim3d(src, tgt)
    if sim is None:
        logger.warning("camera alignment failed for %d cameras: their centres are degenerate (collinear?)",
                       len(images))
        return {**out, "alignment": "degenerate"}
    inliers = int(np.sum(robust["inlier_mask"])) if robust is not None else len(images)
    scale, R_sim, t_sim = float(sim.scale), sim.rotation.matrix(), np.asarray(sim.translation).ravel()
    aligned = scale * src @ R_sim.T + t_sim
    center_err = np.linalg.norm(aligned - tgt, axis=1) / extent
    rot_err = np.array([
        _rotation_error_deg(im.cam_from_world().rotation.matrix() @ R_sim.T,
                            np.asarray(gt.T_w2cam[index[im.name]][:3, :3]))
        for im in images])
    out.update(alignment="ok", aligned_cameras=len(images), alignment_inliers=inliers,
               median_rot_err_deg=float(np.median(rot_err)), median_center_err_rel=float(np.median(center_err)))
    for t in ROTATION_THRESHOLDS_DEG:
        out[f"rot_within_{t:g}deg_pct"] = 100.0 * float(np.mean(rot_err <= t))
    return out
