"""The ground-truth stage: gt.h5 of one scene, from its reader, saying how its overlap was made.

The reader gives names, calibration, poses, image sizes and, where the dataset ships them, the overlap and
the tracks (every observation of a 3D point). A posed scene without 3D points (`reader.needs_tracks()`: a
COLMAP model without points3D, e.g. the poses of a NeRF/LLFF capture) gets real tracks here, the way
COLMAP's `point_triangulator` makes them: the scene's SIFT (its local_features.h5) matched over pose-neighbour
pairs, verified against the known epipolar geometry, and triangulated with poses and intrinsics held fixed
(vop.triangulation). The overlap is then the co-visibility of those tracks, computed exactly as for shipped
points (vop.geometry.covisibility_overlap), and the tracks are stored for labels from tracks (vop.labels).

Where triangulation fails (fewer than `min_points` points), the overlap falls back to the estimate from the
poses alone (vop.geometry.pose_overlap: no occlusion, no relief), with a warning in the job's log. gt.h5
records which: the attribute `overlap_source` (vop.io.OVERLAP_SOURCES) and `overlap_info` (JSON: the
triangulation's figures, or why it fell back).

    vop ground-truth --source colmap --root photos --local-features local_features.h5 --out gt.h5
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path

from vop.conf import NsoConf, TriangulationConf
from vop.datasets import SceneReader
from vop.geometry import covisibility_overlap, pose_overlap
from vop.io import GroundTruth, check_image_name, write_gt

logger = logging.getLogger(__name__)


def check_scene(reader: SceneReader, gt: GroundTruth) -> None:
    """What every later stage assumes, refused here with the fix: names a pairs file can hold, 2+ images."""
    for name in gt.names:
        check_image_name(name, reader.image_dir)
    if len(gt.names) < 2:
        where = reader.model_dir if hasattr(reader, "model_dir") else reader.image_dir
        if reader.scene is None:  # the root is the dataset's one scene: there is no `scenes` to edit
            fix = f"add images to {reader.image_dir}" + (f" (and to the model {where})" if where != reader.image_dir
                                                         else "")
        else:
            fix = f"add images, or remove scene {reader.scene!r} from the dataset's `scenes` in config/config.yaml"
        raise ValueError(f"{where}: {len(gt.names)} image(s); retrieval and the metrics need at least 2: {fix}")


def tracks_ground_truth(gt: GroundTruth, local_features: str | Path, conf: TriangulationConf = TriangulationConf(),
                        image_dir: str | Path | None = None, work_dir: str | Path | None = None,
                        num_threads: int = -1) -> GroundTruth:
    """`gt` (posed, no overlap) with tracks triangulated from `local_features` and their overlap; the pose-only
    overlap where triangulation fails. `image_dir` colours the points; `work_dir` keeps COLMAP's database and
    model (default: a temporary folder)."""
    from vop.triangulation import TriangulationError, pose_neighbour_pairs, triangulate

    pairs = pose_neighbour_pairs(gt, conf.neighbours)
    settings = conf.to_dict()
    with tempfile.TemporaryDirectory(prefix="vop-triangulation-") as tmp:
        try:
            result = triangulate(gt, local_features, pairs, Path(work_dir or tmp), verification=conf.verification,
                                 ratio=conf.ratio, max_error_px=conf.max_error_px, min_angle_deg=conf.min_angle_deg,
                                 min_points=conf.min_points, image_dir=image_dir, num_threads=num_threads)
        except TriangulationError as err:
            logger.warning("%s; the overlap falls back to the estimate from the camera poses alone "
                           "(vop.geometry.pose_overlap: no occlusion, no relief)", err)
            return dataclasses.replace(
                gt, overlap=pose_overlap(gt.K, gt.T_w2cam, gt.image_size), tracks=None, overlap_source="poses",
                overlap_info={"fallback_reason": str(err), "pairs": len(pairs), **settings})
    info = {key: value for key, value in result.summary().items() if not key.endswith("_s")}
    info.update(pairs=len(pairs), seconds=round(result.seconds, 2), **settings)
    logger.info("%d of %d images observe %d triangulated points (mean track %.2f, mean reprojection error "
                "%.2f px); overlap from their co-visibility", info["images_with_points"], len(gt.names),
                result.num_points, result.mean_track_length, result.mean_reprojection_error)
    return dataclasses.replace(gt, overlap=covisibility_overlap(result.tracks.point_sets()), tracks=result.tracks,
                               overlap_source="tracks", overlap_info=info)


def scene_ground_truth(reader: SceneReader, local_features: str | Path | None = None,
                       conf: TriangulationConf = TriangulationConf(), num_threads: int = -1) -> GroundTruth:
    """The ground truth of one scene: the reader's, checked, with triangulated tracks where it needs them."""
    gt = reader.ground_truth()
    check_scene(reader, gt)
    if gt.overlap is None and reader.has_poses and reader.needs_tracks():
        if local_features is None:
            raise ValueError(f"{reader.scene_dir}: posed images without 3D points; their ground truth triangulates "
                             "the scene's local features: extract them first (vop local-features) and pass "
                             "--local-features")
        gt = tracks_ground_truth(gt, local_features, conf, reader.image_dir, num_threads=num_threads)
    return gt


def with_nso(gt: GroundTruth, reader: SceneReader | None, conf: NsoConf = NsoConf()) -> GroundTruth:
    """`gt` with its normalized surface overlap of every ordered pair (vop.nso), where depth or tracks allow."""
    from vop.nso import ground_truth_nso

    nso, source = ground_truth_nso(gt, reader, conf.geometry, conf.stride, conf.depth_tol)
    return dataclasses.replace(gt, nso=nso, nso_source=source)


def write_scene_ground_truth(reader: SceneReader, out_h5: str | Path, local_features: str | Path | None = None,
                             conf: TriangulationConf = TriangulationConf(), num_threads: int = -1,
                             nso: NsoConf = NsoConf()) -> GroundTruth:
    """Write gt.h5 of one scene (atomically) and return it."""
    gt = with_nso(scene_ground_truth(reader, local_features, conf, num_threads), reader, nso)
    write_gt(out_h5, gt)
    logger.info("%s: %d images, overlap: %s, nso: %s", out_h5, len(gt.names), gt.overlap_source or "none",
                gt.nso_source or "none")
    return gt
