"""Ground-truth tracks for a posed model without 3D points: match SIFT, triangulate with the poses held fixed.

A model with calibrated poses but no 3D points (mary_rose, any "your own data" scene) has no co-visibility
overlap; `vop.geometry.pose_overlap` only approximates it. This recovers the 3D points the way COLMAP's
`point_triangulator` does: features matched over pose-neighbour pairs (vop.matching.match_descriptors), the
matches verified, a database written (vop.colmap_database), and `pycolmap.triangulate_points` run on a
Reconstruction holding the known cameras and poses: it triangulates, completes and merges tracks and
bundle-adjusts the points only (poses and intrinsics constant). The per-image sets of 3D point ids are what
`vop.geometry.covisibility_overlap` needs.

Verification: "poses" (default, as hloc's triangulation) keeps the matches within `max_error_px` of the
epipolar geometry of the known relative pose (Sampson distance); "ransac" runs COLMAP's two-view geometry
estimation instead (vop.colmap_database.verify), for poses too coarse for an epipolar test.

Failure is an exception, never a silent empty result: `TriangulationError` when fewer than `min_points`
points are triangulated; catch it to fall back to `vop.geometry.pose_overlap`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycolmap

from vop.colmap_database import (
    Pair,
    cameras_from_gt,
    make_camera,
    quiet_colmap,
    require_pycolmap4,
    to_colmap_keypoints,
    verification_options,
    verify,
    write_database,
)
from vop.geometry import covisibility_overlap, pose_overlap, sampson_error_px
from vop.io import GroundTruth, Tracks, check_pair_names
from vop.local_features import read_local_features
from vop.matching import match_descriptors

logger = logging.getLogger(__name__)

VERIFICATIONS = ("poses", "ransac")


class TriangulationError(RuntimeError):
    """Too few points triangulated to stand for the scene's co-visibility (fall back to pose_overlap)."""


@dataclass
class TriangulationResult:
    """Per image (in gt.names order) the observations of the triangulated points, and summary figures."""

    names: list[str]
    tracks: Tracks
    num_points: int
    mean_track_length: float
    mean_reprojection_error: float
    pairs_matched: int  # pairs with at least one raw match
    pairs_verified: int  # pairs whose verified matches reached the database's two-view geometries
    seconds: float
    model_dir: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def point_ids(self) -> list[np.ndarray]:
        """Per image the sorted ids of the 3D points it observes."""
        return self.tracks.point_sets()

    def overlap(self) -> np.ndarray:
        """Co-visibility overlap (N,N) of the triangulated tracks (vop.geometry.covisibility_overlap)."""
        return covisibility_overlap(self.point_ids)

    def summary(self) -> dict:
        return {"images": len(self.names), "images_with_points": int(sum(len(p) > 0 for p in self.point_ids)),
                "points": self.num_points, "mean_track_length": self.mean_track_length,
                "mean_reprojection_error": self.mean_reprojection_error, "pairs_matched": self.pairs_matched,
                "pairs_verified": self.pairs_verified, "seconds": self.seconds, **self.timings}


# ---------------------------------------------------------------------------------------------------
# Pairs


def pose_neighbour_pairs(gt: GroundTruth, num_neighbours: int = 20, min_score: float = 0.0) -> list[Pair]:
    """Pairs to match: all pairs when N <= num_neighbours + 1, else each image with its `num_neighbours`
    best by `vop.geometry.pose_overlap` (above `min_score`), as unordered pairs (i < j) in index order.

    pose_overlap costs N^2 grid projections (a second for a few hundred images, minutes for ~10k).
    """
    n = len(gt.names)
    if num_neighbours < 1:
        raise ValueError(f"num_neighbours must be >= 1, got {num_neighbours}")
    if n <= num_neighbours + 1:
        return [(gt.names[i], gt.names[j]) for i in range(n) for j in range(i + 1, n)]
    score = pose_overlap(gt.K, gt.T_w2cam, gt.image_size).astype(np.float64)
    np.fill_diagonal(score, -np.inf)
    best = np.argsort(-score, axis=1, kind="stable")[:, :num_neighbours]
    chosen = set()
    for i in range(n):
        for j in best[i]:
            if score[i, j] > min_score:
                chosen.add((min(i, int(j)), max(i, int(j))))
    return [(gt.names[i], gt.names[j]) for i, j in sorted(chosen)]


# ---------------------------------------------------------------------------------------------------
# Matching and verification


def match_pairs(features: Mapping[str, Mapping[str, np.ndarray]], pairs: Sequence[Pair],
                ratio: float = 0.8) -> dict[Pair, np.ndarray]:
    """Mutual-NN + ratio matches (M,2) of every pair (vop.matching.match_descriptors), the first of a pair
    given in both orders kept."""
    out: dict[Pair, np.ndarray] = {}
    for a, b in pairs:
        if (a, b) in out or (b, a) in out:
            continue
        out[(a, b)] = match_descriptors(features[a]["descriptors"], features[b]["descriptors"], ratio=ratio)
    return out


def epipolar_inliers(gt: GroundTruth, features: Mapping[str, Mapping[str, np.ndarray]],
                     matches: Mapping[Pair, np.ndarray], max_error_px: float = 4.0,
                     min_num_inliers: int = 15) -> dict[Pair, pycolmap.TwoViewGeometry]:
    """The matches of each pair within `max_error_px` (Sampson, mean focal) of the known epipolar
    geometry, as CALIBRATED two-view geometries holding the known relative pose and its E; pairs left
    with fewer than `min_num_inliers` are dropped (COLMAP's verification minimum)."""
    index = gt.index()
    out = {}
    for (a, b), m in matches.items():
        if len(m) < min_num_inliers:
            continue
        i, j = index[a], index[b]
        T = gt.relative_pose(i, j)
        # hloc keypoints -> the pixel convention of K (COLMAP's).
        k0 = features[a]["keypoints"][m[:, 0]] + 0.5
        k1 = features[b]["keypoints"][m[:, 1]] + 0.5
        keep = sampson_error_px(k0, k1, gt.K[i], gt.K[j], T[:3, :3], T[:3, 3]) <= max_error_px
        if keep.sum() >= min_num_inliers:
            cam2_from_cam1 = pycolmap.Rigid3d(np.asarray(T[:3, :4], np.float64))
            out[(a, b)] = pycolmap.TwoViewGeometry(
                inlier_matches=np.ascontiguousarray(m[keep], np.uint32),
                config=pycolmap.TwoViewGeometryConfiguration.CALIBRATED, cam2_from_cam1=cam2_from_cam1,
                E=pycolmap.essential_matrix_from_pose(cam2_from_cam1))
    return out


# ---------------------------------------------------------------------------------------------------
# Triangulation


def posed_reconstruction(gt: GroundTruth, keypoints: Mapping[str, np.ndarray] | None = None) -> pycolmap.Reconstruction:
    """A Reconstruction of gt's cameras and poses (ids as vop.colmap_database writes them), no points.

    pycolmap 4 needs a rig per camera and a frame per image: `add_camera_with_trivial_rig` and
    `add_image_with_trivial_frame` (frame id = image id, rig id = camera id) register the given pose.
    """
    rec = pycolmap.Reconstruction()
    for i, name in enumerate(gt.names):
        camera = make_camera(gt.K[i], gt.image_size[i])
        camera.camera_id = i + 1
        rec.add_camera_with_trivial_rig(camera)
        points = (to_colmap_keypoints(keypoints[name]).astype(np.float64) if keypoints is not None
                  else np.zeros((0, 2)))
        image = pycolmap.Image(name=name, keypoints=points, camera_id=i + 1, image_id=i + 1)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(np.asarray(gt.T_w2cam[i][:3, :4], np.float64)))
    return rec


def tracks_per_image(rec: pycolmap.Reconstruction, num_images: int) -> Tracks:
    """The observations of 3D points in each image i (image id i + 1): COLMAP pixels and point ids."""
    tracks = Tracks([np.zeros((0, 2), np.float32)] * num_images, [np.zeros(0, np.int64)] * num_images)
    for image_id, image in rec.images.items():
        seen = [p for p in image.points2D if p.has_point3D()]
        tracks.xy[image_id - 1] = np.array([p.xy for p in seen], np.float32).reshape(-1, 2)
        tracks.point_ids[image_id - 1] = np.array([p.point3D_id for p in seen], np.int64)
    return tracks


def _check_image_sizes(features, gt: GroundTruth, features_path: Path) -> None:
    for i, name in enumerate(gt.names):
        size = np.asarray(features[name]["image_size"]).ravel().astype(np.int64)
        if not np.array_equal(size, np.asarray(gt.image_size[i]).ravel().astype(np.int64)):
            raise ValueError(f"{features_path}: image {name!r} is {size.tolist()} [w,h] but the ground truth "
                             f"calibrates it at {np.asarray(gt.image_size[i]).tolist()}; extract the features "
                             "from the images the ground truth describes")


def triangulation_options(min_angle_deg: float = 1.5, max_reproj_error_px: float = 4.0,
                          num_threads: int = -1, seed: int = 0) -> pycolmap.IncrementalPipelineOptions:
    """COLMAP's point_triangulator options with the ones that matter named: the minimum triangulation
    angle and the reprojection error bound of track creation, merging, completion and filtering."""
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = num_threads
    options.random_seed = seed
    options.triangulation.min_angle = min_angle_deg
    options.triangulation.merge_max_reproj_error = max_reproj_error_px
    options.triangulation.complete_max_reproj_error = max_reproj_error_px
    options.mapper.filter_max_reproj_error = max_reproj_error_px
    options.mapper.filter_min_tri_angle = min_angle_deg
    return options


def triangulate(gt: GroundTruth, local_features_h5: str | Path, pairs: Sequence[Pair], work_dir: str | Path,
                verification: str = "poses", ratio: float = 0.8, max_error_px: float = 4.0,
                min_angle_deg: float = 1.5, min_points: int = 100, image_dir: str | Path | None = None,
                options: pycolmap.IncrementalPipelineOptions | None = None, num_threads: int = -1,
                verbose: bool = False) -> TriangulationResult:
    """3D points of a posed scene from SIFT matched over `pairs`, the poses and intrinsics held fixed.

    Writes `work_dir/database.db` and the triangulated model `work_dir/model` (COLMAP binary).
    Returns per image (gt.names order) the observations of 3D points (xy and point ids). Raises TriangulationError when
    fewer than `min_points` points come out (too few or wrong matches, or poses that disagree with them).
    image_dir (optional) is only used to colour the points; without it `options.extract_colors` is turned off.
    """
    require_pycolmap4()
    if verification not in VERIFICATIONS:
        raise ValueError(f"unknown verification {verification!r}; choose one of {VERIFICATIONS}")
    start = time.perf_counter()
    timings = {}
    local_features_h5, work_dir = Path(local_features_h5), Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    index = gt.index()
    pairs = [tuple(p) for p in pairs]
    check_pair_names(pairs, index, "the ground truth")
    features = read_local_features(local_features_h5, gt.names)
    _check_image_sizes(features, gt, local_features_h5)
    keypoints = {n: f["keypoints"] for n, f in features.items()}

    t = time.perf_counter()
    matches = match_pairs(features, pairs, ratio)
    timings["match_s"] = time.perf_counter() - t
    pairs_matched = sum(1 for m in matches.values() if len(m))

    t = time.perf_counter()
    database = work_dir / "database.db"
    if verification == "poses":
        inliers = epipolar_inliers(gt, features, matches, max_error_px)
        write_database(database, gt.names, cameras_from_gt(gt), keypoints, matches=matches, inlier_matches=inliers)
        pairs_verified = len(inliers)
    else:
        write_database(database, gt.names, cameras_from_gt(gt), keypoints, matches=matches)
        pairs_verified = verify(database, None, verification_options(max_error_px=max_error_px),
                                num_threads=num_threads, verbose=verbose).verified_pairs
    timings["verify_s"] = time.perf_counter() - t

    t = time.perf_counter()
    model_dir = work_dir / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    options = options or triangulation_options(min_angle_deg, max_error_px, num_threads)
    if image_dir is None:
        options.extract_colors = False  # else COLMAP warns once per image it cannot read
    with quiet_colmap(verbose):
        rec = pycolmap.triangulate_points(posed_reconstruction(gt), database, Path(image_dir or work_dir),
                                          model_dir, clear_points=True, options=options, refine_intrinsics=False)
    timings["triangulate_s"] = time.perf_counter() - t

    result = TriangulationResult(
        list(gt.names), tracks_per_image(rec, len(gt.names)), rec.num_points3D(),
        float(rec.compute_mean_track_length()) if rec.num_points3D() else 0.0,
        float(rec.compute_mean_reprojection_error()) if rec.num_points3D() else float("nan"),
        pairs_matched, pairs_verified, time.perf_counter() - start, model_dir, timings)
    logger.info("Triangulated %d points (mean track %.2f, %.2f px) over %d verified pairs in %.1fs into %s",
                result.num_points, result.mean_track_length, result.mean_reprojection_error, pairs_verified,
                result.seconds, model_dir)
    if result.num_points < min_points:
        raise TriangulationError(
            f"{model_dir}: only {result.num_points} points triangulated (< min_points={min_points}) from "
            f"{pairs_matched} matched and {pairs_verified} verified pairs of {len(pairs)}; the features may be "
            "too few, the pairs may not overlap, or the poses disagree with the matches (try "
            "verification='ransac' or a larger max_error_px); fall back to vop.geometry.pose_overlap")
    return result
