"""Visual place recognition: recall@N with positives within 25 m (GeoWarp / VPR-datasets-downloader layout).

Image names carry their position: `@UTM_east@UTM_north@zone@letter@lat@lon@...@.jpg`. A database image is a
positive of a query when the two are at most `dist_m` metres apart in UTM (gmberton/geo_warp
`dataset_geoloc.py`: sklearn `radius_neighbors`, inclusive radius, 25 m by default).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import PurePath

import numpy as np
from scipy.spatial import cKDTree

RECALL_NS = (1, 5, 10, 20)
NAME_PATTERN = "@UTM_east@UTM_north@...@.jpg"


def parse_utm(name: str) -> tuple[float, float]:
    """(east, north) from an image name's basename, the two `@`-fields after the first `@`.

    Only the basename is read: GeoWarp splits the whole path, which breaks on a folder with an `@`.
    """
    base = PurePath(name).name
    fields = base.split("@")
    try:
        east, north = float(fields[1]), float(fields[2])
    except (IndexError, ValueError):
        raise ValueError(f"image name {name!r} has no UTM position: expected {NAME_PATTERN} "
                         "(VPR-datasets-downloader names); rename the files or use another reader") from None
    if not (math.isfinite(east) and math.isfinite(north)):
        raise ValueError(f"image name {name!r} has a non-finite UTM position; expected {NAME_PATTERN}")
    return east, north


def _utm_array(utm: np.ndarray, what: str) -> np.ndarray:
    utm = np.asarray(utm, np.float64)
    if utm.ndim != 2 or utm.shape[1] != 2:
        raise ValueError(f"{what} must be (N,2) UTM east/north, got shape {utm.shape}")
    return utm


def positives(db_utm: np.ndarray, query_utm: np.ndarray, dist_m: float = 25.0) -> list[np.ndarray]:
    """Per query, the sorted database indices at most `dist_m` metres away (Euclidean in UTM, inclusive)."""
    db_utm = _utm_array(db_utm, "db_utm")
    query_utm = _utm_array(query_utm, "query_utm")
    if len(db_utm) == 0:
        return [np.zeros(0, np.int64) for _ in range(len(query_utm))]
    hits = cKDTree(db_utm).query_ball_point(query_utm, r=dist_m)
    return [np.sort(np.asarray(h, np.int64)) for h in hits]


def recall_at_n(rankings: np.ndarray, positives: Sequence[np.ndarray],
                ns: Sequence[int] = RECALL_NS) -> dict[int, float]:
    """{N: percent of queries with a positive among their N best database images}.

    Queries without any positive stay in the denominator as misses: GeoWarp's `util.compute_recalls`
    (and deep-visual-geo-localization-benchmark's `test.py`) divide the hit count by `queries_num`.
    `rankings` is (Q,K) database indices, best first; K must reach max(ns).
    """
    rankings = np.asarray(rankings)
    if rankings.ndim != 2:
        raise ValueError(f"rankings must be (Q,K) database indices, got shape {rankings.shape}")
    if len(rankings) != len(positives):
        raise ValueError(f"{len(rankings)} rankings for {len(positives)} queries' positives: "
                         "they must come from the same query list")
    ns = [int(n) for n in ns]
    need = max(ns)
    if rankings.shape[1] < need:
        raise ValueError(f"rankings hold {rankings.shape[1]} images per query but recall@{need} needs "
                         f"k >= {need}: set the method's k to at least {need}")
    if len(rankings) == 0:
        return {n: 0.0 for n in ns}
    first = first_positive_rank(rankings[:, :need], positives)
    return {n: float(np.count_nonzero(first < n) / len(rankings) * 100.0) for n in ns}


def first_positive_rank(rankings: np.ndarray, positives: Sequence[np.ndarray]) -> np.ndarray:
    """(Q,) 0-based rank of each query's first positive in its (Q,K) ranking, inf where there is none
    (so that `rank < N` is a miss for every N, also N > K where the database is shorter than N).

    One vectorised membership test of (query, database index) keys, no loop over queries.
    """
    rankings = np.asarray(rankings, np.int64)
    num_q = len(rankings)
    counts = np.array([len(p) for p in positives], np.int64)
    flat = np.concatenate([np.asarray(p, np.int64).ravel() for p in positives]) if num_q else np.zeros(0, np.int64)
    width = int(max(rankings.max(initial=-1), flat.max(initial=-1))) + 1
    positive_keys = np.repeat(np.arange(num_q, dtype=np.int64), counts) * width + flat
    ranked_keys = np.arange(num_q, dtype=np.int64)[:, None] * width + rankings
    hit = np.isin(ranked_keys, positive_keys)
    return np.where(hit.any(axis=1), hit.argmax(axis=1), np.inf)
