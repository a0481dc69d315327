"""The pose stage: relative pose of every retrieved pair, scored against the ground truth (`pose.csv`).

For every retrieved (query, db) pair it matches the local features (vop.matching), estimates the relative
pose at every RANSAC threshold of the sweep (vop.estimation) and scores it (vop.geometry). Pairs run in a
pool of single-threaded worker processes, one per thread of the job. Local features follow hloc's pixel
convention and the ground-truth K COLMAP's, so keypoints are shifted by half a pixel before estimation.
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

from vop.conf import PoseConf
from vop.estimation import ESTIMATORS, estimate_relative_pose_sweep
from vop.geometry import relative_pose_error
from vop.io import POSE_COLUMNS, GroundTruth, read_gt, write_csv
from vop.local_features import read_local_features
from vop.matching import match_descriptors
from vop.progress import Progress

logger = logging.getLogger(__name__)

MAX_CHUNK_PAIRS = 32  # pairs a worker gets at once (a few seconds of work at most)


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


@dataclass
class PoseTask:
    """What every pair needs: handed once to each worker by the pool's initializer (copy-on-write)."""

    features: dict[str, dict[str, np.ndarray]]
    gt: GroundTruth
    index: dict[str, int]
    conf: PoseConf

    def pair(self, query: str, db: str) -> list:
        f0, f1 = self.features[query], self.features[db]
        matches = match_descriptors(f0["descriptors"], f1["descriptors"], ratio=self.conf.ratio)
        i, j = self.index[query], self.index[db]
        # hloc keypoints -> COLMAP pixel convention of K.
        kpts0 = f0["keypoints"][matches[:, 0]] + 0.5
        kpts1 = f1["keypoints"][matches[:, 1]] + 0.5
        result = estimate_relative_pose_sweep(kpts0, kpts1, self.gt.K[i], self.gt.K[j], self.conf.thresholds,
                                              estimator=self.conf.estimator)
        if result is None:
            # A failed pair still gets its row: no query is ever dropped.
            return [query, db, len(matches), 0, math.nan, math.inf, math.inf]
        R, t, inliers, threshold = result
        R_err, t_err = relative_pose_error(self.gt.relative_pose(i, j), R, t)
        return [query, db, len(matches), int(inliers.sum()), threshold, R_err, t_err]

    def pairs(self, chunk: Sequence[tuple[str, str]]) -> list[list]:
        return [self.pair(q, d) for q, d in chunk]


_WORKER_TASK: PoseTask | None = None  # the task of this worker process, set by its initializer


def _init_worker(task: PoseTask) -> None:
    global _WORKER_TASK
    _WORKER_TASK = task


def _worker_pairs(chunk: Sequence[tuple[str, str]]) -> list[list]:
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


def _run_pairs(task: PoseTask, pairs: Sequence[tuple[str, str]], num_workers: int) -> list[list]:
    """Rows of every pair, in order: here, or in a pool of single-threaded worker processes. Progress is
    counted here, in the parent, as the rows come back."""
    rows: list[list] = []
    with _one_thread(), Progress(len(pairs), "pose", "pairs", logger=logger) as bar:
        if num_workers <= 1 or len(pairs) < 2:
            for query, db in pairs:
                rows.append(task.pair(query, db))
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
    return rows


def estimate_poses(pairs: Sequence[tuple[str, str]], gt: GroundTruth | str | Path,
                   local_features_h5: str | Path, out_csv: str | Path, conf: PoseConf = PoseConf(),
                   num_workers: int = 2, gt_path: str | Path | None = None) -> list[list]:
    """Match, estimate and score every (query, db) pair, in order; write `pose.csv` atomically.

    `gt` is a GroundTruth or the path of a gt.h5 (`gt_path` only names the file in error messages).
    The ground truth is T_{query->db} = gt.relative_pose(i_query, i_db). Each pair is estimated at every
    threshold of `conf.threshold_px` and the `threshold` column records the one kept. Every pair gets a
    row: a pair whose estimation failed (too few matches, e.g. a textureless image, or a degenerate
    configuration) has 0 inliers, no threshold and inf errors. Returns the rows. `num_workers` processes
    share the pairs, each single-threaded; 1 runs them here on one thread.
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
    rows = _run_pairs(PoseTask(features, gt, index, conf), pairs, num_workers)
    write_csv(out_csv, POSE_COLUMNS, rows)
    failed = sum(1 for r in rows if not math.isfinite(r[5]))
    logger.info("Estimated %d relative poses with %s at thresholds %s px (%d failed) into %s",
                len(rows), conf.estimator, list(conf.thresholds), failed, out_csv)
    return rows
