"""Matching of local descriptors: mutual nearest neighbours that pass Lowe's ratio test."""

from __future__ import annotations

import numpy as np

from vop.utils import l2_normalize


def match_descriptors(desc0: np.ndarray, desc1: np.ndarray, ratio: float) -> np.ndarray:
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
