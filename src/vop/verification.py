"""Spatial verification: rerank a first stage's shortlist by geometrically verified local matches.

The two-stage systems of landmark retrieval (DELG, DELG + LoFTR, GeoWarp's reranking) rerank a global
shortlist by the number of local matches that one geometric model explains. Here the matches are the scene's
stored SIFT matches (vop.match_store, mutual nearest neighbours + ratio test) and the model is a fundamental
matrix, fitted with RANSAC (OpenCV's USAC_ACCURATE: LO-RANSAC with graph-cut local optimisation, seeded,
so deterministic) at `threshold_px` pixels of epipolar distance, COLMAP's two-view verification threshold
(4 px) by default. A fundamental matrix because verification must work without intrinsics (a `folder`
dataset has none) and because the scenes have depth: a homography explains the matches of one plane or of a
camera that only rotates, so on a room or a building seen from two places it counts one wall's matches and
ranks a pair by how planar it looks rather than by how much it overlaps; the fundamental matrix holds for
every static scene. The cost of its generality, a looser constraint (a point on a line, not at a point),
is what `min_inliers` is for (COLMAP's 15 by default): below it a count is noise, and such pairs keep their
first-stage order behind the verified ones.

Each unordered pair is verified once (in register mode (a,b) and (b,a) share their count), in forked worker
processes (vop.pose.run_pairs); the ranking is `rerank`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from vop.match_store import Pair, canonical_pair, unique_pairs
from vop.pose import run_pairs

logger = logging.getLogger(__name__)

MIN_MATCHES = 8  # the fundamental matrix needs 7 points; fewer than 8 matches verify nothing
CONFIDENCE = 0.999
MAX_ITERS = 10000
ESTIMATOR = "fundamental matrix, cv2.USAC_ACCURATE"


def verified_inliers(kpts0: np.ndarray, kpts1: np.ndarray, threshold_px: float) -> int:
    """Matches (M,2) x 2 consistent with one fundamental matrix at `threshold_px`; 0 when none is found."""
    if len(kpts0) < MIN_MATCHES:
        return 0
    try:
        F, mask = cv2.findFundamentalMat(np.asarray(kpts0, np.float64), np.asarray(kpts1, np.float64),
                                         cv2.USAC_ACCURATE, threshold_px, CONFIDENCE, MAX_ITERS)
    except cv2.error as err:  # degenerate samples can make the solver throw
        logger.debug("findFundamentalMat failed: %s", err)
        return 0
    if F is None or mask is None:
        return 0
    return int(mask.ravel().astype(bool).sum())


@dataclass
class VerifyTask:
    """What every pair needs, handed once to each worker (vop.pose.run_pairs)."""

    keypoints: dict[str, np.ndarray]
    matches: dict[Pair, np.ndarray]  # canonical pair -> (M,2)
    threshold_px: float

    def pair(self, name0: str, name1: str) -> int:
        m = self.matches[(name0, name1)]
        return verified_inliers(self.keypoints[name0][m[:, 0]], self.keypoints[name1][m[:, 1]], self.threshold_px)

    def pairs(self, chunk: Sequence[Pair]) -> list[int]:
        return [self.pair(a, b) for a, b in chunk]


def verify_pairs(pairs: Sequence[Pair], keypoints: Mapping[str, np.ndarray], matches: Mapping[Pair, np.ndarray],
                 threshold_px: float, num_workers: int = 1) -> dict[Pair, int]:
    """{canonical pair: verified inliers} of the unordered `pairs`, each verified once."""
    unique = unique_pairs(pairs)
    counts = run_pairs(VerifyTask(dict(keypoints), dict(matches), threshold_px), unique, num_workers, "verify")
    return dict(zip(unique, counts))


def shortlist_inliers(queries: Sequence[str], shortlists: Sequence[Sequence[str]],
                      counts: Mapping[Pair, int]) -> np.ndarray:
    """(Q, N) verified inliers of each query's shortlisted database images."""
    return np.array([[counts[canonical_pair(q, d)] for d in dbs] for q, dbs in zip(queries, shortlists)],
                    np.int64).reshape(len(queries), -1)


def rerank(first_db: np.ndarray, first_score: np.ndarray, inliers: np.ndarray, k: int, min_inliers: int):
    """Per query: the first stage's ranking with its top N (N = inliers.shape[1]) reranked by inliers.

    first_db, first_score (Q, K1): the first stage's database indices and scores, best first; inliers (Q, N),
    N <= K1: verified inliers of the first N. The pairs with at least `min_inliers` come first, most inliers
    first; ties, and the pairs below `min_inliers` after them, keep first-stage order; ranks N.. follow in
    first-stage order. Returns (db, score, first-stage score), each (Q, min(k, K1)); score is the inlier
    count (nan past the shortlist).
    """
    first_db, first_score = np.asarray(first_db), np.asarray(first_score, np.float64)
    inliers = np.asarray(inliers, np.int64)
    num_queries, depth = first_db.shape
    n = inliers.shape[1]
    if n > depth:
        raise ValueError(f"rerank: {n} verified ranks but the first stage has {depth}")
    slot = np.broadcast_to(np.arange(n), (num_queries, n))
    passed = inliers >= min_inliers
    order = np.lexsort((slot, np.where(passed, -inliers, 0), ~passed), axis=-1)
    order = np.concatenate([order, np.broadcast_to(np.arange(n, depth), (num_queries, depth - n))], axis=1)
    order = order[:, :min(k, depth)]
    score = np.concatenate([inliers.astype(np.float64), np.full((num_queries, depth - n), math.nan)], axis=1)
    return (np.take_along_axis(first_db, order, 1), np.take_along_axis(score, order, 1),
            np.take_along_axis(first_score, order, 1))


def verify_ranking(conf, first, names: Sequence[str], matches_h5, local_features_h5, matching,
                   num_workers: int = 1):
    """The verify method's Ranking (vop.retrieval) from its first stage's Ranking `first`.

    Each query's top `conf.shortlist` images are verified with the matches of the scene's store
    `matches_h5` (read with `matching`, checked against `local_features_h5`) and reranked (`rerank`).
    """
    from vop.local_features import read_local_features
    from vop.match_store import read_matches
    from vop.retrieval import Ranking

    n = min(conf.shortlist, first.db.shape[1])
    queries = [names[q] for q in first.queries]
    shortlists = [[names[d] for d in dbs[:n]] for dbs in first.db]
    pairs = [(q, d) for q, dbs in zip(queries, shortlists) for d in dbs]
    images = list(dict.fromkeys(name for pair in pairs for name in pair))
    features = read_local_features(local_features_h5, images)
    matches = read_matches(matches_h5, pairs, features, matching, local_features_h5)
    keypoints = {name: features[name]["keypoints"] for name in images}
    counts = verify_pairs(pairs, keypoints, matches, conf.threshold_px, num_workers)
    inliers = shortlist_inliers(queries, shortlists, counts)
    db, score, first_score = rerank(first.db, first.score, inliers, conf.k, conf.min_inliers)
    info = {"shortlist_used": n, "verified_pairs": len(counts), "estimator": ESTIMATOR,
            "below_min_inliers": float((inliers < conf.min_inliers).mean()) if inliers.size else 0.0}
    if conf.k > first.db.shape[1]:
        info["k_clamped"] = int(first.db.shape[1])
    logger.info("verify: %d queries, top %d of the first stage verified (%d unordered pairs), %.0f%% below "
                "%d inliers", len(queries), n, len(counts), 100 * info["below_min_inliers"], conf.min_inliers)
    return Ranking(first.queries, db, score, first_score, info)
