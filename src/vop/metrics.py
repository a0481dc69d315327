"""The metrics table: pose AUC of the retrieved pairs and retrieval recall (DESIGN.md, `auc.csv`).

Protocol (the VOP paper's): per query, of its retrieved pairs the one with the most RANSAC inliers counts,
with error max(R_err, t_err); the AUC of the cumulative error curve at 5/10/20 degrees summarises a
method. The all-pairs protocol (`auc@5_all`...) counts every retrieved pair instead, so a method is also
charged for the bad pairs it retrieves. Retrieval recall@k and mAP@k compare the retrieved images with
the ground-truth co-visibility overlap: a database image is relevant to a query when overlap >= tau.

Queries are the images that appear as queries in pairs.txt; the database is every other image of the
ground truth, or the `database` subset given (retrieve mode: the images that are not queries).

    vop table --entries entries.json --out results/megadepth/auc.csv
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from vop.conf import MetricsConf
from vop.datasets import split_queries
from vop.io import OVERLAP_SOURCES, POSE_COLUMNS, GroundTruth, check_pair_names, read_gt, read_pairs, write_csv

logger = logging.getLogger(__name__)

AUC_THRESHOLDS = (5, 10, 20)
TAU = MetricsConf.overlap_tau  # the default relevance threshold (config: metrics.overlap_tau)
SUMMARY_COLUMNS = ["method", "scene", "num_queries", "auc@5", "auc@10", "auc@20",
                   "mean_matches", "mean_inliers", "recall@k", "k",
                   "auc@5_all", "auc@10_all", "auc@20_all", "mAP@k"]
ENTRY_KEYS = ("method", "scene", "pose_csv", "pairs_txt", "gt_h5", "k")


def pose_auc(errors: Iterable[float], thresholds: Sequence[float] = AUC_THRESHOLDS) -> list[float]:
    """Area under the cumulative error curve up to each threshold, in percent of the threshold.

    Failures (inf or nan) count in the denominator but never reach the curve; no errors give 0.
    """
    errors = np.asarray(list(errors), np.float64)
    if errors.size == 0:
        return [0.0 for _ in thresholds]
    errors = np.sort(np.where(np.isnan(errors), np.inf, errors))
    recall = np.arange(1, len(errors) + 1) / len(errors)
    errors = np.r_[0.0, errors]
    recall = np.r_[0.0, recall]
    aucs = []
    for t in thresholds:
        last = np.searchsorted(errors, t)
        r = np.r_[recall[:last], recall[last - 1]]
        e = np.r_[errors[:last], t]
        area = np.sum(np.diff(e) * (r[1:] + r[:-1]) / 2.0)  # trapezoid rule
        aucs.append(float(area / t * 100.0))
    return aucs


def read_pose_csv(path: str | Path) -> pd.DataFrame:
    """pose.csv with names kept as strings (no 'NA' -> NaN) and inf errors as floats."""
    path = Path(path)
    # Names stay strings (an image called "NA" is legal); a failed pair's threshold is written "nan".
    numeric = ["num_matches", "num_inliers", "threshold", "R_err_deg", "t_err_deg"]
    df = pd.read_csv(path, dtype={"query": str, "db": str}, keep_default_na=False,
                     na_values={col: ["nan", "NaN", ""] for col in numeric})
    missing = [c for c in POSE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {POSE_COLUMNS}. "
                         "The file is not a pose.csv or is from an older version: rerun the pose rule")
    for col in numeric:
        df[col] = pd.to_numeric(df[col], errors="raise").astype(np.float64)
    return df


def best_pair_errors(pose_df: pd.DataFrame) -> pd.DataFrame:
    """One row per query (in order of first appearance): its pair with the most inliers.

    Ties go to the pair listed first, i.e. the best retrieval rank. Adds `error` = max(R_err, t_err).
    """
    if len(pose_df) == 0:
        return pose_df.assign(error=pd.Series(dtype=np.float64)).reset_index(drop=True)
    df = pose_df.reset_index(drop=True)
    # idxmax returns the first occurrence of the maximum; sort=False keeps the query order.
    best = df.groupby("query", sort=False)["num_inliers"].idxmax()
    out = df.loc[best.to_numpy()].reset_index(drop=True)
    out["error"] = np.maximum(out["R_err_deg"].to_numpy(np.float64), out["t_err_deg"].to_numpy(np.float64))
    return out


def pair_errors(pose_df: pd.DataFrame) -> np.ndarray:
    """max(R_err, t_err) of every pair of a pose.csv: what the all-pairs AUC (`auc@X_all`) is taken over."""
    return np.maximum(pose_df["R_err_deg"].to_numpy(np.float64), pose_df["t_err_deg"].to_numpy(np.float64))


def retrieved_per_query(pairs: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    """{query: db names in file order (best first)}, queries in order of first appearance."""
    out: dict[str, list[str]] = {}
    for query, db in pairs:
        out.setdefault(query, []).append(db)
    return out


def num_relevant(gt: GroundTruth, tau: float = TAU) -> np.ndarray:
    """(N,) number of images with overlap >= tau with each image (row i: overlap of i with j), self excluded."""
    if gt.overlap is None:
        raise ValueError("the ground truth has no overlap matrix (dataset without 3D points)")
    relevant = np.asarray(gt.overlap) >= tau
    np.fill_diagonal(relevant, False)
    return relevant.sum(axis=1)


def _ranked_hits(pairs: Sequence[tuple[str, str]], gt: GroundTruth, tau: float,
                 database: Sequence[str] | None, gt_path: str | Path) -> Iterator[tuple[np.ndarray, int]]:
    """Per query with a relevant image: (whether each retrieved image is relevant, best first; how many
    images are relevant). Relevant: overlap >= tau, not the query itself, in `database` when given."""
    if gt.overlap is None:
        raise ValueError(f"{gt_path} has no overlap matrix, so retrieval recall is undefined for it")
    index = gt.index()
    check_pair_names(pairs, index, gt_path, ValueError)
    retrieved = retrieved_per_query(pairs)
    relevant = np.asarray(gt.overlap) >= tau
    np.fill_diagonal(relevant, False)
    if database is not None:
        unknown = [n for n in database if n not in index]
        if unknown:
            raise ValueError(f"database image(s) {unknown[:3]} are not in {gt_path}")
        in_database = np.zeros(len(gt.names), bool)
        in_database[[index[n] for n in database]] = True
        relevant &= in_database[None, :]
    for query, dbs in retrieved.items():
        row = relevant[index[query]]
        n_rel = int(row.sum())
        if n_rel == 0:
            continue  # no retrieval can score here
        top = list(dict.fromkeys(dbs))  # a repeated db must not count twice
        yield (row[[index[d] for d in top]] if top else np.zeros(0, bool)), n_rel


def retrieval_recall_per_query(pairs: Sequence[tuple[str, str]], gt: GroundTruth, k: int,
                               tau: float = TAU, gt_path: str | Path = "the ground truth",
                               database: Sequence[str] | None = None) -> np.ndarray:
    """|top-k retrieved ∩ relevant| / min(k, |relevant|) for each query with a relevant image.

    Relevant: overlap[q, j] >= tau, j != q, j in `database` (default: every image of the ground truth).
    Queries without a relevant image are left out (no retrieval can score there), so the overlap oracle
    gets 1 everywhere.
    """
    return retrieval_recall_at_ks(pairs, gt, [k], tau, gt_path, database)[:, 0]


def retrieval_recall_at_ks(pairs: Sequence[tuple[str, str]], gt: GroundTruth, ks: Sequence[int],
                           tau: float = TAU, gt_path: str | Path = "the ground truth",
                           database: Sequence[str] | None = None) -> np.ndarray:
    """(Q, len(ks)) recall@k of each query with a relevant image, for every k of `ks` (the recall curve)."""
    if min(ks, default=0) < 1:
        raise ValueError(f"k must be >= 1, got {list(ks)}")
    rows = []
    for hits, n_rel in _ranked_hits(pairs, gt, tau, database, gt_path):
        cumulative = np.cumsum(hits)
        rows.append([(cumulative[min(k, len(cumulative)) - 1] if len(cumulative) else 0) / min(k, n_rel)
                     for k in ks])
    return np.asarray(rows, np.float64).reshape(-1, len(ks))


def average_precision_per_query(pairs: Sequence[tuple[str, str]], gt: GroundTruth, k: int,
                                tau: float = TAU, gt_path: str | Path = "the ground truth",
                                database: Sequence[str] | None = None) -> np.ndarray:
    """AP@k of each query with a relevant image: sum over ranks r <= k of precision@r at the relevant
    ranks, divided by min(k, |relevant|) (1 only when the first min(k, |relevant|) results are relevant)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    aps = []
    for hits, n_rel in _ranked_hits(pairs, gt, tau, database, gt_path):
        hits = hits[:k]
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        aps.append(float((precision * hits).sum()) / min(k, n_rel))
    return np.asarray(aps, np.float64)


def retrieval_recall(pairs: Sequence[tuple[str, str]], gt: GroundTruth, k: int, tau: float = TAU,
                     database: Sequence[str] | None = None) -> float:
    """Mean recall@k in percent over queries with at least one relevant image (0 when there are none)."""
    per_query = retrieval_recall_per_query(pairs, gt, k, tau, database=database)
    return float(per_query.mean() * 100.0) if per_query.size else 0.0


def mean_average_precision(pairs: Sequence[tuple[str, str]], gt: GroundTruth, k: int, tau: float = TAU,
                           database: Sequence[str] | None = None) -> float:
    """mAP@k in percent over queries with at least one relevant image (0 when there are none)."""
    per_query = average_precision_per_query(pairs, gt, k, tau, database=database)
    return float(per_query.mean() * 100.0) if per_query.size else 0.0


def retrieved_k(pairs: Sequence[tuple[str, str]], k: int) -> tuple[int, int]:
    """(fewest, most) database images retrieved per query: the k a run really had (retrieval clamps a
    configured k larger than the database: a 3-image scene retrieves 2), `k` when there are no pairs."""
    counts = [len(dict.fromkeys(dbs)) for dbs in retrieved_per_query(pairs).values()]
    return (min(counts), max(counts)) if counts else (k, k)


def pooled_k(ks: Sequence[tuple[int, int]]) -> int | str:
    """The `k` cell of a row: the number when every query had the same, else the range, e.g. "2-5"."""
    low, high = min(k[0] for k in ks), max(k[1] for k in ks)
    return low if low == high else f"{low}-{high}"


def log_overlap_source(gt_path: str | Path, gt: GroundTruth) -> None:
    """Say in the table's log how a scene's ground-truth overlap was made, and warn where it is a guess."""
    info = gt.overlap_info
    if gt.overlap_source == "poses":
        logger.warning("%s: overlap estimated from the camera poses alone (no occlusion, no relief), because "
                       "triangulation failed: %s; recall@k and mAP@k measure agreement with that estimate",
                       gt_path, info.get("fallback_reason", "see the ground-truth log"))
    elif gt.overlap_source == "tracks":
        logger.info("%s: overlap from the tracks of %s points triangulated with the poses fixed (mean length %.2f, "
                    "%.2f px)",
                    gt_path, info.get("points"), info.get("mean_track_length", float("nan")),
                    info.get("mean_reprojection_error", float("nan")))
    else:
        logger.info("%s: overlap: %s", gt_path, OVERLAP_SOURCES.get(gt.overlap_source or "none", gt.overlap_source))


def run_database(entry: dict, gt: GroundTruth) -> list[str] | None:
    """The images a run retrieved from: `database` if given; in retrieve mode (`mode`, `queries` glob as in
    the dataset's config) the images that are not queries; None (every image) in register mode."""
    if entry.get("database") is not None:
        return list(entry["database"])
    if entry.get("mode", "register") != "retrieve":
        return None
    _, database = split_queries(gt.names, "retrieve", entry["queries"], str(entry.get("scene", "")))
    return [gt.names[i] for i in database]


def _scene_stats(entry: dict, tau: float) -> dict:
    """Everything one (method, scene) contributes, kept per query/pair so that ALL can pool it."""
    for key in ENTRY_KEYS:
        if key not in entry:
            raise ValueError(f"summarize entry {entry}: missing key {key!r}; expected keys {list(ENTRY_KEYS)}")
    pose_df = read_pose_csv(entry["pose_csv"])
    best = best_pair_errors(pose_df)
    gt = read_gt(entry["gt_h5"])
    pairs = read_pairs(entry["pairs_txt"])
    recalls = aps = None
    if gt.overlap is not None:
        database = run_database(entry, gt)
        recalls = retrieval_recall_per_query(pairs, gt, int(entry["k"]), tau, entry["gt_h5"], database)
        aps = average_precision_per_query(pairs, gt, int(entry["k"]), tau, entry["gt_h5"], database)
    return {
        "errors": best["error"].to_numpy(np.float64),
        "pair_errors": pair_errors(pose_df),
        "aps": aps,
        "matches": pose_df["num_matches"].to_numpy(np.float64),
        "inliers": pose_df["num_inliers"].to_numpy(np.float64),
        "recalls": recalls,
        "k": retrieved_k(pairs, int(entry["k"])),
    }


def _row(method: str, scene: str, stats: Sequence[dict]) -> list:
    errors = np.concatenate([s["errors"] for s in stats])
    matches = np.concatenate([s["matches"] for s in stats])
    inliers = np.concatenate([s["inliers"] for s in stats])
    with_overlap = [s["recalls"] for s in stats if s["recalls"] is not None]
    recalls = np.concatenate(with_overlap) if with_overlap else np.zeros(0)
    aps = np.concatenate([s["aps"] for s in stats if s["aps"] is not None]) if with_overlap else np.zeros(0)
    aucs = pose_auc(errors)

    def mean(x: np.ndarray) -> float:
        return float(x.mean()) if x.size else 0.0

    # Without overlap ground truth (e.g. posed images but no 3D points) recall is undefined: the cell
    # stays empty rather than showing a number that was never measured.
    recall = round(mean(recalls) * 100.0, 4) if with_overlap and recalls.size else ""
    mean_ap = round(mean(aps) * 100.0, 4) if with_overlap and aps.size else ""
    aucs_all = pose_auc(np.concatenate([s["pair_errors"] for s in stats]))
    return [method, scene, len(errors), *(round(a, 4) for a in aucs),
            round(mean(matches), 4), round(mean(inliers), 4), recall, pooled_k([s["k"] for s in stats]),
            *(round(a, 4) for a in aucs_all), mean_ap]


def run_entries(runs: Sequence[dict], pose_csvs: Sequence[str], pairs_txts: Sequence[str],
                gt_h5s: Sequence[str]) -> list[dict]:
    """The entries `summarize` and the plots read: each run with its files (given in the runs' order)."""
    return [{**run, "pose_csv": pose, "pairs_txt": pairs, "gt_h5": gt}
            for run, pose, pairs, gt in zip(runs, pose_csvs, pairs_txts, gt_h5s, strict=True)]


def summarize(entries: Sequence[dict], out_csv: str | Path, tau: float = TAU) -> pd.DataFrame:
    """Write auc.csv: one row per (method, scene), then the method's ALL row (all queries pooled).

    entries: dicts {method, scene, pose_csv, pairs_txt, gt_h5, k} and optionally `database`, the image
    names retrieval searched (default: all images of the scene). Methods keep the order given, scenes are
    sorted within a method.
    """
    for gt_path in dict.fromkeys(str(entry.get("gt_h5")) for entry in entries if entry.get("gt_h5")):
        log_overlap_source(gt_path, read_gt(gt_path))
    by_method: dict[str, dict[str, dict]] = defaultdict(dict)
    for entry in entries:
        method, scene = str(entry.get("method")), str(entry.get("scene"))
        if scene == "ALL":
            raise ValueError(f"summarize: a scene may not be called 'ALL' (method {method!r})")
        if scene in by_method[method]:
            raise ValueError(f"summarize: ({method}, {scene}) given twice")
        by_method[method][scene] = _scene_stats(entry, tau)

    rows = []
    for method, scenes in by_method.items():
        for scene in sorted(scenes):
            rows.append(_row(method, scene, [scenes[scene]]))
        rows.append(_row(method, "ALL", list(scenes.values())))
    write_csv(out_csv, SUMMARY_COLUMNS, rows)
    logger.info("Wrote %d rows to %s", len(rows), out_csv)
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


NO_GROUND_TRUTH = "no ground truth"


def summarize_without_ground_truth(entries: Sequence[dict], out_csv: str | Path) -> pd.DataFrame:
    """auc.csv of a dataset without poses or overlap (images only): the same columns, every metric cell
    (matches and inliers too: without poses no pair is matched) saying "no ground truth", so that nobody
    reads a number that was never measured.

    entries: dicts {method, scene, pairs_txt, k}; num_queries counts the queries of the retrieved pairs.
    """
    by_method: dict[str, list] = defaultdict(list)
    for entry in entries:
        pairs = read_pairs(entry["pairs_txt"])
        by_method[str(entry["method"])].append((str(entry["scene"]), len(retrieved_per_query(pairs)),
                                                retrieved_k(pairs, int(entry["k"]))))
    rows = []
    for method, runs in by_method.items():
        pooled = ("ALL", sum(q for _, q, _ in runs), (min(k[0] for *_, k in runs), max(k[1] for *_, k in runs)))
        for scene, queries, k in sorted(runs) + [pooled]:
            known = {"method": method, "scene": scene, "num_queries": queries, "k": pooled_k([k])}
            rows.append([known.get(column, NO_GROUND_TRUTH) for column in SUMMARY_COLUMNS])
    write_csv(out_csv, SUMMARY_COLUMNS, rows)
    logger.info("Wrote %d rows to %s (no ground truth: retrieval only)", len(rows), out_csv)
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
