"""The pose stage: relative pose of every retrieved pair, scored against the ground truth (`pose.csv`).

Each unordered pair is estimated once, in its canonical orientation (vop.match_store): its matches come from
the scene's matches store (or are matched here, batched, when no store is given: vop.matching), its pose is
estimated at every RANSAC threshold of the sweep (vop.estimation), and each retrieved (query, db) row is
scored (vop.geometry) with that estimate, inverted where the query is the pair's second image; so (a,b) and
(b,a) cost one estimation. The pairs run in a pool of single-threaded worker processes, one per thread of
the job. Local features follow hloc's pixel convention and the ground-truth K COLMAP's, so keypoints are
shifted by half a pixel before estimation.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing as mp
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import threadpoolctl

from vop.conf import MatchingConf, PoseConf
from vop.estimates import estimate_key, read_estimates, write_estimates
from vop.estimation import ESTIMATORS, estimate_relative_pose_sweep
from vop.geometry import relative_pose_error
from vop.io import POSE_COLUMNS, GroundTruth, check_pair_names, read_gt, write_csv
from vop.local_features import read_local_features
from vop.match_store import Pair, canonical_pair, feature_digest, read_matches, scene_lock, unique_pairs
from vop.matching import match_pairs
from vop.progress import Progress

logger = logging.getLogger(__name__)

MAX_CHUNK_PAIRS = 32  # pairs a worker gets at once (a few seconds of work at most)


def _check_pairs(pairs: Sequence[tuple[str, str]], gt: GroundTruth, gt_path: str | Path) -> dict[str, int]:
    index = gt.index()
    check_pair_names(pairs, index, gt_path, ValueError)
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


def image_name(key) -> str:
    """The image of a features key: its name, or a (name, scale bucket) variant's (vop.scale_aware)."""
    return key if isinstance(key, str) else key[0]


@dataclass
class PoseTask:
    """What every pair needs: handed once to each worker by the pool's initializer (copy-on-write).

    Features are keyed by image name, or by (name, scale bucket) for pose.scale_aware (vop.scale_aware):
    the ground truth is looked up by the image's name either way."""

    features: dict
    gt: GroundTruth
    index: dict[str, int]
    conf: PoseConf
    matches: dict  # canonical pair of features keys -> (M,2) matches

    def pair(self, key0, key1) -> tuple:
        """(num_matches, R, t, num_inliers, threshold) of T_{key0->key1}; R and t None when it failed."""
        matches = self.matches[(key0, key1)]
        f0, f1 = self.features[key0], self.features[key1]
        i, j = self.index[image_name(key0)], self.index[image_name(key1)]
        # hloc keypoints -> COLMAP pixel convention of K.
        kpts0 = f0["keypoints"][matches[:, 0]] + 0.5
        kpts1 = f1["keypoints"][matches[:, 1]] + 0.5
        result = estimate_relative_pose_sweep(kpts0, kpts1, self.gt.K[i], self.gt.K[j], self.conf.thresholds,
                                              estimator=self.conf.estimator)
        if result is None:
            return len(matches), None, None, 0, math.nan
        R, t, inliers, threshold = result
        return len(matches), R, t, int(inliers.sum()), threshold

    def pairs(self, chunk: Sequence[tuple]) -> list[tuple]:
        return [self.pair(a, b) for a, b in chunk]


def pose_row(query: str, db: str, estimate: tuple, gt: GroundTruth, index: dict[str, int]) -> list:
    """The pose.csv row of (query, db) from the estimate of its canonical pair."""
    num_matches, R, t, num_inliers, threshold = estimate
    if R is None:
        # A failed pair still gets its row: no query is ever dropped.
        return [query, db, num_matches, 0, math.nan, math.inf, math.inf]
    if canonical_pair(query, db) != (query, db):  # estimated as T_{db->query}: invert it
        R, t = R.T, -R.T @ t
    R_err, t_err = relative_pose_error(gt.relative_pose(index[query], index[db]), R, t)
    return [query, db, num_matches, num_inliers, threshold, R_err, t_err]


_WORKER_TASK: PoseTask | None = None  # the task of this worker process, set by its initializer


def _init_worker(task: PoseTask) -> None:
    global _WORKER_TASK
    _WORKER_TASK = task


def _worker_pairs(chunk: Sequence[tuple[str, str]]) -> list:
    return _WORKER_TASK.pairs(chunk)


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


def run_pairs(task, pairs: Sequence[tuple[str, str]], num_workers: int, desc: str = "pose") -> list:
    """`task.pairs(pairs)`, in order: here, or in a pool of single-threaded worker processes (pose, verify).
    Progress is counted here, in the parent, as the rows come back."""
    rows: list = []
    with _one_thread(), Progress(len(pairs), desc, "pairs", logger=logger) as bar:
        if num_workers <= 1 or len(pairs) < 2:
            for pair in pairs:
                rows += task.pairs([pair])
                bar.update()
            return rows
        num_workers = min(num_workers, len(pairs))
        # Small chunks keep the workers busy to the end (pairs differ in cost) and the progress current,
        # few enough to cost nothing.
        size = max(1, min(math.ceil(len(pairs) / (num_workers * 8)), MAX_CHUNK_PAIRS))
        chunks = [pairs[k:k + size] for k in range(0, len(pairs), size)]
        # Forked workers receive the task through the initializer without pickling (the fork copies it)
        # and without re-importing (a spawned worker would spend seconds importing torch).
        with mp.get_context("fork").Pool(num_workers, initializer=_init_worker, initargs=(task,)) as pool:
            for chunk_rows in pool.imap(_worker_pairs, chunks):
                rows += chunk_rows
                bar.update(len(chunk_rows))
            pool.close()  # let the workers exit: leaving the block would SIGTERM them (pycolmap's glog prints
            pool.join()  # a stack trace for each)
    return rows

def pair_matches(pairs: Sequence[Pair], features: dict[str, dict[str, np.ndarray]], matching: MatchingConf,
                 matches_h5: str | Path | None = None, local_features_h5: str | Path | None = None,
                 device: str | None = None) -> dict[Pair, np.ndarray]:
    """{canonical pair: (M,2) matches} of the unordered `pairs`: read from the scene's store (checked against
    `features` and `matching`) or, without one, matched here (vop.matching.match_pairs)."""
    unique = unique_pairs(pairs)
    if matches_h5 is not None:
        return read_matches(matches_h5, unique, features, matching, local_features_h5)
    descriptors = {name: features[name]["descriptors"] for pair in unique for name in pair}
    found = match_pairs(descriptors, unique, matching.ratio, device=device)
    return {pair: matches for pair, (matches, _) in zip(unique, found)}


def estimate_poses(pairs: Sequence[tuple[str, str]], gt: GroundTruth | str | Path,
                   local_features_h5: str | Path, out_csv: str | Path, conf: PoseConf = PoseConf(),
                   num_workers: int = 2, gt_path: str | Path | None = None, matches_h5: str | Path | None = None,
                   matching: MatchingConf = MatchingConf(), device: str | None = None,
                   estimates_h5: str | Path | None = None, shared: Sequence[str | Path] = ()) -> list[list]:
    """Estimate and score every (query, db) pair, in order; write `pose.csv` atomically.

    `gt` is a GroundTruth or the path of a gt.h5 (`gt_path` only names the file in error messages).
    The ground truth is T_{query->db} = gt.relative_pose(i_query, i_db). The matches come from the scene's
    store `matches_h5` (vop.match_store, written with `matching`) or, without it, are matched here on
    `device`. Each unordered pair is estimated once, in its canonical orientation, at every threshold of
    `conf.threshold_px` (the `threshold` column records the one kept); (b,a) is scored with the inverse of
    (a,b)'s estimate. Estimates made from the same inputs are copied from `estimates_h5` (the previous run's)
    and the `shared` files (other methods' of the scene: vop.estimates) instead; `estimates_h5` then gets
    this run's. Every pair gets a row: a pair whose estimation failed (too few matches, e.g. a textureless
    image, or a degenerate configuration) has 0 inliers, no threshold and inf errors. Returns the rows.
    `num_workers` processes share the pairs, each single-threaded; 1 runs them here on one thread.
    """
    if conf.estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {conf.estimator!r}; choose one of {sorted(ESTIMATORS)} "
                         "(config: pose.estimator)")
    if not isinstance(gt, GroundTruth):
        gt_path, gt = gt, read_gt(gt)
    gt_path = gt_path or "the ground truth (gt.h5)"
    pairs = [tuple(p) for p in pairs]
    index = _check_pairs(pairs, gt, gt_path)
    names = list(dict.fromkeys(n for pair in pairs for n in pair))
    # Read once up front: h5py serialises access anyway, and each image is shared by many pairs.
    features = read_local_features(local_features_h5, names)
    _check_image_sizes(features, gt, index, local_features_h5, gt_path)
    unique = unique_pairs(pairs)
    estimates, estimated = estimate_unique(unique, features, gt, index, conf, matching, num_workers, matches_h5,
                                           local_features_h5, device, estimates_h5, shared)
    rows = [pose_row(q, d, estimates[canonical_pair(q, d)], gt, index) for q, d in pairs]
    write_csv(out_csv, POSE_COLUMNS, rows)
    failed = sum(1 for r in rows if not math.isfinite(r[5]))
    logger.info("Estimated %d relative poses (%d unordered pairs: %d estimated, %d copied from earlier estimates) "
                "with %s at thresholds %s px (%d failed) into %s", len(rows), len(unique), estimated,
                len(unique) - estimated, conf.estimator, list(conf.thresholds), failed, out_csv)
    return rows


def estimate_unique(unique: Sequence[tuple], features: dict, gt: GroundTruth, index: dict[str, int], conf: PoseConf,
                    matching: MatchingConf, num_workers: int, matches_h5: str | Path | None = None,
                    local_features_h5: str | Path | None = None, device: str | None = None,
                    estimates_h5: str | Path | None = None, shared: Sequence[str | Path] = ()
                    ) -> tuple[dict[tuple, tuple], int]:
    """({canonical pair: estimate}, how many were estimated) of the canonical pairs `unique` of features keys
    (image names, or (name, bucket) variants: vop.scale_aware). Estimates made from the same inputs are copied
    from `estimates_h5` and the `shared` files (vop.estimates); the rest are matched (from the store, or here)
    and estimated in `num_workers` processes; `estimates_h5` then holds exactly those of `unique`."""
    estimates: dict[tuple, tuple] = {}
    keys: dict[tuple, str] = {}
    if estimates_h5 is not None or shared:
        digests = {key: feature_digest(features[key]) for key in dict.fromkeys(k for pair in unique for k in pair)}
        keys = {(a, b): estimate_key(digests[a], digests[b], gt.K[index[image_name(a)]], gt.K[index[image_name(b)]],
                                     matching, conf) for a, b in unique}
        caches = ([str(estimates_h5)] if estimates_h5 is not None else []) + [str(p) for p in shared]
        estimates, _ = read_estimates(list(dict.fromkeys(caches)), keys)
    todo = [pair for pair in unique if pair not in estimates]
    matches = pair_matches(todo, features, matching, matches_h5, local_features_h5, device)
    estimates.update(zip(todo, run_pairs(PoseTask(features, gt, index, conf, matches), todo, num_workers)))
    if estimates_h5:
        write_estimates(estimates_h5, {pair: estimates[pair] for pair in unique}, keys)
    return estimates, len(todo)


def estimate_scene_poses(pairs: Sequence[tuple[str, str]], gt_h5: str | Path, local_features_h5: str | Path,
                         out_csv: str | Path, estimates_h5: str | Path, conf: PoseConf = PoseConf(),
                         num_workers: int = 2, matches_h5: str | Path | None = None,
                         matching: MatchingConf = MatchingConf()) -> list[list]:
    """The rule's `estimate_poses`: a method's poses in results/{dataset}/{scene}/{method}/, sharing the
    estimates of the scene's other methods (their poses.h5), in turns under the scene's lock."""
    estimates_h5 = Path(estimates_h5)
    scene_dir = estimates_h5.parent.parent
    with scene_lock(scene_dir / f".{estimates_h5.name}.lock"):
        shared = sorted(scene_dir.glob(f"*/{estimates_h5.name}"))
        return estimate_poses(pairs, gt_h5, local_features_h5, out_csv, conf, num_workers, gt_h5, matches_h5,
                              matching, estimates_h5=estimates_h5, shared=shared)
