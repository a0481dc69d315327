"""Normalized surface overlap (NSO), both ways round, and the relative scale of a pair (Rau et al., "Predicting
visual overlap of images through interpretable non-metric box embeddings", ECCV 2020).

Overlap is not symmetric: a close-up of a tower lies almost entirely inside a wide view of the square, while
most of the wide view lies outside the close-up. For an ordered pair (x, y), NSO(x -> y) is the fraction of
x's surface that y sees. For a retrieved pair (query q, database image d):

    enclosure     = NSO(q -> d)  the share of the query's surface visible in the retrieved image
    concentration = NSO(d -> q)  the share of the retrieved image's surface visible in the query

Ground truth (`ground_truth_nso`, stored in gt.h5 as `nso` (N,N) float32, row = the image whose surface is
measured: nso[x, y] = NSO(x -> y), with the attribute `nso_source`):

- depth: every `stride`-th pixel of x with valid depth is warped into y with the depth test of the patch
  labels (vop.labels.lift_pixels / warp_visible: one warp for both); NSO = visible / valid pixels;
- tracks: |P_x & P_y| / |P_x| over the 3D points each image observes (shipped or triangulated).

Predicted NSO comes from VOP's patch votes (vop.voting, `coverage`): a patch of the query "finds a partner"
in the retrieved image when some patch of it is more similar than a threshold;

    enclosure     = (query patches with at least one partner in d) / (query patches)
    concentration = (patches of d that are some query patch's partner) / (patches of d)

Every patch weighs the same: the backbone sees each image resized to the same 16x16 grid, so a patch is
1/256 of the image's surface whatever its content, and NSO is a share of surface. TF-IDF weights (which
decide the ranking) measure how distinctive a patch is, not how much surface it covers: they would make a
textured half of an image count for more than its area.

The threshold: the voting radius's (cosine > 1 - radius) saturates the shares, since among 256 patches
nearly every patch has some neighbour within a radius chosen for voting (on the demo, the trained head's
enclosure is 0.92 on average at radius 0.2, the truth 0.31). So a partner must beat the cosine at which a
patch of an *unrelated* image finds a chance partner among an image's M patches with probability
`nso_chance` (default 0.1): the (1 - p) quantile of random patch pairs' cosines, 1 - (1 - p)^M = nso_chance
(vop.voting.chance_threshold), and never less than the voting threshold. It needs no ground truth, and the
same rule holds for any embedding, so the cls baseline (raw backbone patches) is thresholded the same way.

Like for like: every method is scored on its own retrieved pairs, and methods retrieve different pairs (on
the demo, cls's are easier: more of vop's share no surface at all). So a vop method's overlap.csv also holds
the baseline's NSO of its own pairs (`baseline_*`), and nso.csv scores both predictors on them (`predictor`
votes and patches): the trained head against no head, on the same pairs (benchmarks/nso_predictors.py).

Relative scale (the paper's eq. 6): s = sqrt(enclosure / concentration * A_q / A_d), with A the image areas
in pixels: the shared surface covers enclosure * A_q pixels of the query and concentration * A_d of the
database image, so s is how much larger (linearly) the query shows it. Local features are then extracted
from the larger-scale image downsampled by s (or 1/s), never upsampled (`downsampling`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from vop.io import GroundTruth

logger = logging.getLogger(__name__)

NSO_SOURCES = {
    "depth": "pixels warped with depth, kept where the other image's depth agrees (vop.labels.warp_visible)",
    "tracks": "shared 3D points over the points the image observes",
}


# ---------------------------------------------------------------------------------------------------
# Ground truth


def depth_nso(depths, K: np.ndarray, T_w2cam: np.ndarray, stride: int = 4, depth_tol: float = 0.05,
              pairs: np.ndarray | None = None) -> np.ndarray:
    """(N,N) float32, nso[x, y] = the fraction of image x's valid (sampled) pixels visible in y.

    `depths` is a sequence of N depth maps, or a callable k -> depth map (read when needed: each image's
    pixels are lifted once, then each image's depth is read once to test everyone's points). `pairs` (N,N)
    bool restricts the warps to those ordered pairs (others stay 0: e.g. pairs without a shared 3D point);
    the diagonal is 1 where the image has valid depth.
    """
    from vop.labels import lift_pixels, relative_transform, warp_visible

    n = len(K)
    read = depths if callable(depths) else (lambda k: depths[k])
    todo = np.ones((n, n), bool) if pairs is None else np.asarray(pairs, bool).copy()
    np.fill_diagonal(todo, False)
    lifted = [lift_pixels(read(k), K[k], stride)[2] if todo[k].any() else None for k in range(n)]
    out = np.zeros((n, n), np.float32)
    for x in range(n):
        out[x, x] = 1.0 if lifted[x] is None or lifted[x].shape[1] else 0.0
    for y in range(n):
        sources = np.flatnonzero(todo[:, y])
        if not len(sources):
            continue
        depth_y = read(y)
        for x in sources:
            points = lifted[x]
            if points.shape[1] == 0:
                continue
            seen, _, _ = warp_visible(points, relative_transform(T_w2cam[x], T_w2cam[y]), depth_y, K[y], depth_tol)
            out[x, y] = len(seen) / points.shape[1]
    return out


def tracks_nso(point_sets: Sequence[np.ndarray]) -> np.ndarray:
    """(N,N) float32, nso[x, y] = |P_x & P_y| / |P_x| (0 where x observes no point; 1 on the diagonal)."""
    n = len(point_sets)
    sets = [np.unique(np.asarray(p, np.int64)) for p in point_sets]
    out = np.zeros((n, n), np.float32)
    if n == 0:
        return out
    ids, inverse = np.unique(np.concatenate(sets), return_inverse=True)
    rows = np.repeat(np.arange(n), [len(p) for p in sets])
    import scipy.sparse

    incidence = scipy.sparse.csr_matrix((np.ones(len(rows), np.float64), (rows, inverse)), shape=(n, len(ids)))
    shared = (incidence @ incidence.T).toarray()
    sizes = np.diag(shared).copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        out[:] = np.where(sizes[:, None] > 0, shared / np.maximum(sizes[:, None], 1), 0.0)
    np.fill_diagonal(out, 1.0)
    return out


def ground_truth_nso(gt: GroundTruth, reader=None, geometry: str = "auto", stride: int = 4,
                     depth_tol: float = 0.05) -> tuple[np.ndarray | None, str | None]:
    """The scene's NSO matrix and how it was made ("depth" or "tracks"), or (None, None) where there is
    neither depth nor tracks (or `geometry` is "none"). `auto`: depth where the reader has it, else tracks.
    Depth warps run only for pairs with a positive co-visibility overlap where the scene has one."""
    if geometry == "none" or (reader is not None and not reader.has_poses):
        return None, None
    if geometry == "auto":
        geometry = "depth" if reader is not None and reader.has_depth else "tracks"
    if geometry == "tracks":
        if gt.tracks is None:
            if gt.overlap is not None:
                logger.info("no tracks of 3D points in the ground truth (overlap from %s): no NSO", gt.overlap_source)
            return None, None
        return tracks_nso(gt.tracks.point_sets()), "tracks"
    if reader is None or not reader.has_depth:
        raise ValueError(f"nso.geometry: depth, but the scene's source has no depth maps "
                         f"({getattr(reader, 'scene_dir', 'no reader')}); set nso.geometry to auto, tracks or none")
    pairs = None if gt.overlap is None else (np.maximum(gt.overlap, gt.overlap.T) > 0)
    nso = depth_nso(lambda k: reader.depth(gt.names[k], gt.image_size[k]), gt.K, gt.T_w2cam, stride, depth_tol,
                    pairs)
    return nso, "depth"


# ---------------------------------------------------------------------------------------------------
# Relative scale


def relative_scale(enclosure, concentration, area_query, area_db) -> np.ndarray:
    """s = sqrt(enclosure / concentration * A_q / A_d) (the box-embeddings paper's eq. 6), elementwise.

    s > 1: the query shows the shared surface s times larger than the database image does (the query is
    the close-up), so the query is downsampled by 1/s (for s < 1, the database image by s) to bring both to
    one scale. NaN where either share is 0 (no shared surface: no scale).
    """
    enc, con = np.asarray(enclosure, np.float64), np.asarray(concentration, np.float64)
    a_q, a_d = np.asarray(area_query, np.float64), np.asarray(area_db, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.sqrt(enc / con * a_q / a_d)
    return np.where((enc > 0) & (con > 0) & np.isfinite(s), s, np.nan)


def downsampling(scale) -> tuple[np.ndarray, np.ndarray]:
    """(query factor, database factor) <= 1 that bring a pair of relative scale s to one scale by
    downsampling only: s > 1 shrinks the query by 1/s, s < 1 the database image by s; NaN: (1, 1)."""
    s = np.asarray(scale, np.float64)
    s = np.where(np.isfinite(s) & (s > 0), s, 1.0)
    return np.minimum(1.0, 1.0 / s), np.minimum(1.0, s)


# ---------------------------------------------------------------------------------------------------
# The box-embeddings protocol


def nso_errors(pred_enclosure, pred_concentration, true_enclosure, true_concentration,
               accuracy_tol: float = 0.1) -> dict[str, float]:
    """RMSE = sqrt(mean(e1^2 + e2^2)), L1 = mean(|e1| + |e2|) and Acc = percent of the 2M directed errors
    below `accuracy_tol`, over the M pairs whose ground truth is known (e1, e2: the errors of enclosure and
    concentration). NaN without such pairs."""
    pe, pc = np.asarray(pred_enclosure, np.float64), np.asarray(pred_concentration, np.float64)
    te, tc = np.asarray(true_enclosure, np.float64), np.asarray(true_concentration, np.float64)
    known = np.isfinite(pe) & np.isfinite(pc) & np.isfinite(te) & np.isfinite(tc)
    e1, e2 = (pe - te)[known], (pc - tc)[known]
    if not known.any():
        return {"pairs": 0, "rmse": float("nan"), "l1": float("nan"), "acc": float("nan")}
    return {"pairs": int(known.sum()), "rmse": float(np.sqrt(np.mean(e1**2 + e2**2))),
            "l1": float(np.mean(np.abs(e1) + np.abs(e2))),
            "acc": float(100.0 * np.mean(np.concatenate([np.abs(e1), np.abs(e2)]) < accuracy_tol))}


# ---------------------------------------------------------------------------------------------------
# overlap.csv of one method, nso.csv of a dataset

OVERLAP_COLUMNS = ["query", "db", "enclosure", "concentration", "relative_scale", "true_enclosure",
                   "true_concentration", "true_relative_scale", "baseline_enclosure", "baseline_concentration"]
NSO_TABLE_COLUMNS = ["method", "predictor", "scene", "pairs", "rmse", "l1", "acc", "pairs_scale_2x"]
# nso.csv's predictors: the method's own (vop: its votes, the trained head's patches; cls: the backbone's
# patches) and, for vop, the backbone's patches on the same pairs (the baseline_* columns of overlap.csv).
PREDICTOR_COLUMNS = {"votes": ("enclosure", "concentration"),
                     "patches": ("baseline_enclosure", "baseline_concentration")}
LARGE_SCALE_CHANGE = 2.0  # pairs whose true relative scale is >= 2 or <= 1/2


def large_scale_change(scale) -> np.ndarray:
    """Pairs whose relative scale is LARGE_SCALE_CHANGE or more either way (no scale: no)."""
    s = np.asarray(scale, np.float64)
    return np.isfinite(s) & ((s >= LARGE_SCALE_CHANGE) | (s <= 1 / LARGE_SCALE_CHANGE))


def pair_values(overlap_csv, column: str, pairs: Sequence[tuple[str, str]], of: str = "the pairs") -> np.ndarray:
    """The `column` of overlap.csv for each (query, db) of `pairs`, in order (NaN where the cell is empty); a
    pair it has no row for is an error naming `of` (what asked for it)."""
    import csv

    with open(overlap_csv, newline="") as f:
        values = {(r["query"], r["db"]): float(r[column]) if r[column] else np.nan for r in csv.DictReader(f)}
    missing = [pair for pair in pairs if tuple(pair) not in values]
    if missing:
        raise ValueError(f"{overlap_csv}: no row for pair {missing[0]} of {of}; it is older than them: rerun its "
                         "rule (overlap)")
    return np.array([values[tuple(pair)] for pair in pairs], np.float64)


def baseline_nso(features_h5, names: Sequence[str], queries: np.ndarray, db: np.ndarray, chance: float | None = 0.1,
                 seed: int = 0, device: str | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Enclosure and concentration (num_queries, k) of retrieved pairs from the backbone's own patches (no
    trained head) with VOP's kernel (vop.voting, coverage) and the same partner threshold as a vop method's
    (`chance_threshold` of these patches; chance None: the paper's automatic radius): cls's prediction, and
    the like-for-like baseline of a vop method's pairs."""
    from vop.voting import PatchStore, auto_radius, chance_threshold, subset, vote_scores

    store = PatchStore.from_h5(features_h5, names, device=device)
    radius, median = auto_radius(store, seed=seed)
    info = {"radius": radius, "radius_auto_median_cosine": median}
    tau = 1.0 - radius
    if chance is not None:
        tau = info["nso_tau"] = max(tau, chance_threshold(store, chance, seed))
    _, enclosure, concentration = vote_scores(subset(store, np.asarray(queries, np.int64)), store,
                                              np.asarray(db, np.int64), tau, False, coverage=True)
    return enclosure, concentration, info


def overlap_rows(gt: GroundTruth, queries: np.ndarray, db: np.ndarray, enclosure: np.ndarray,
                 concentration: np.ndarray, baseline: tuple[np.ndarray, np.ndarray] | None = None) -> list[tuple]:
    """Rows of overlap.csv: per retrieved pair the predicted NSO both ways, its relative scale, where gt.h5
    has `nso` the true ones and, where given, the baseline's (enclosure, concentration) of the same pair
    (empty cells where there is none)."""
    sizes = np.asarray(gt.image_size, np.float64)
    area = sizes[:, 0] * sizes[:, 1]
    q = np.repeat(np.asarray(queries, np.int64), db.shape[1])
    d = np.asarray(db, np.int64).ravel()
    enc, con = np.asarray(enclosure, np.float64).ravel(), np.asarray(concentration, np.float64).ravel()
    scale = relative_scale(enc, con, area[q], area[d])
    if gt.nso is not None:
        true_enc, true_con = gt.nso[q, d].astype(np.float64), gt.nso[d, q].astype(np.float64)
        true_scale = relative_scale(true_enc, true_con, area[q], area[d])
    else:
        true_enc = true_con = true_scale = np.full(len(q), np.nan)

    base_enc, base_con = (np.full(len(q), np.nan),) * 2 if baseline is None else (
        np.asarray(part, np.float64).ravel() for part in baseline)

    def cell(x):
        return "" if not np.isfinite(x) else f"{float(x):.6g}"

    return [(gt.names[a], gt.names[b], *map(cell, values))
            for a, b, *values in zip(q, d, enc, con, scale, true_enc, true_con, true_scale, base_enc, base_con)]


def write_overlap(method_type: str, scores_csv, gt_h5, out_csv, features_h5=None, device: str | None = None,
                  chance: float | None = 0.1) -> dict:
    """overlap.csv of one method on one scene: a vop method's NSO from its votes (the columns enclosure and
    concentration of its scores.csv), cls's from the backbone's patches (`baseline_nso`). The baseline columns
    hold the backbone's patches' NSO of the same pairs (`features_h5`; for cls its own prediction), so that the
    trained head is compared with no head on the same pairs: methods retrieve different pairs, and some pairs
    are harder than others. Returns what was done (for the log)."""
    import csv

    from vop.io import read_gt, write_csv
    from vop.retrieval import NSO_COLUMNS, read_ranking

    gt = read_gt(gt_h5)
    ranking = read_ranking(scores_csv, gt.names)
    info: dict = {"method_type": method_type, "pairs": int(ranking.db.size)}
    if method_type == "vop":
        with open(scores_csv, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in NSO_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{scores_csv}: no {missing[0]} column; the ranking was written before vop's scores "
                                 "carried the predicted NSO: delete it and rerun its rule (retrieve)")
            values = {(r["query"], int(r["rank"])): (float(r["enclosure"]), float(r["concentration"]))
                      for r in reader}
        table = np.array([[values[(gt.names[q], r)] for r in range(ranking.db.shape[1])] for q in ranking.queries],
                         np.float64).reshape(*ranking.db.shape, 2)
        enclosure, concentration = table[..., 0], table[..., 1]
    elif method_type != "cls":
        raise ValueError(f"overlap: method type {method_type!r} predicts no NSO; only vop (its votes) and cls (the "
                         "backbone's patches) do")
    elif features_h5 is None:
        raise ValueError("overlap: the cls baseline needs the scene's features (features-{backbone}.h5)")
    baseline = None
    if features_h5 is not None:
        *baseline, more = baseline_nso(features_h5, gt.names, ranking.queries, ranking.db, chance, device=device)
        info.update(more)
    if method_type == "cls":
        enclosure, concentration = baseline
    write_csv(out_csv, OVERLAP_COLUMNS, overlap_rows(gt, ranking.queries, ranking.db, enclosure, concentration,
                                                     baseline))
    info["nso_source"] = gt.nso_source or "none"
    return info


def _read_overlap(path) -> dict[str, np.ndarray]:
    import csv

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = [c for c in OVERLAP_COLUMNS if rows and c not in rows[0]]
    if missing:
        raise ValueError(f"{path}: no {missing[0]} column: not an overlap.csv of this version; delete it and rerun "
                         "its rule (overlap)")
    return {c: np.array([float(r[c]) if r[c] != "" else np.nan for r in rows], np.float64)
            for c in OVERLAP_COLUMNS[2:]}


def _table_row(method: str, predictor: str, scene: str, parts: list[dict[str, np.ndarray]], tol: float) -> list:
    cols = {c: np.concatenate([p[c] for p in parts]) for c in OVERLAP_COLUMNS[2:]}
    enclosure, concentration = (cols[c] for c in PREDICTOR_COLUMNS[predictor])
    errors = nso_errors(enclosure, concentration, cols["true_enclosure"], cols["true_concentration"], tol)
    ts = cols["true_relative_scale"]
    large = int(np.sum(large_scale_change(ts)))
    return [method, predictor, scene, errors["pairs"], *(f"{errors[k]:.4f}" for k in ("rmse", "l1", "acc")), large]


def nso_table(runs: Sequence[dict], out_csv, accuracy_tol: float = 0.1) -> list[list]:
    """nso.csv: the box-embeddings protocol (`nso_errors`) per (method, predictor, scene) over the method's
    retrieved ordered pairs with ground truth, then its ALL rows (every scene's pairs pooled). `runs`: dicts
    with method, scene and overlap_csv. Predictor `votes`: the method's own NSO (for cls, the backbone's
    patches); `patches`: the backbone's patches on the same pairs, for methods whose overlap.csv has the
    baseline (vop; the like-for-like comparison). `pairs_scale_2x`: pairs whose true relative scale is 2x or
    more either way."""
    from vop.io import write_csv

    rows, by_method = [], {}
    for run in runs:
        part = _read_overlap(run["overlap_csv"])
        by_method.setdefault(run["method"], []).append((run["scene"], part))
    for method, scenes in by_method.items():
        if any(scene == "ALL" for scene, _ in scenes):
            raise ValueError(f"nso_table: a scene may not be called 'ALL' (method {method!r})")
        same = all(np.array_equal(p["enclosure"], p["baseline_enclosure"], equal_nan=True) and
                   np.array_equal(p["concentration"], p["baseline_concentration"], equal_nan=True) for _, p in scenes)
        with_baseline = all(np.isfinite(p["baseline_enclosure"]).all() for _, p in scenes)
        # cls's own prediction is the patches: one row set, named for what it is
        predictors = ["patches"] if same else ["votes", "patches"] if with_baseline else ["votes"]
        for predictor in predictors:
            rows += [_table_row(method, predictor, scene, [part], accuracy_tol) for scene, part in scenes]
            rows.append(_table_row(method, predictor, "ALL", [part for _, part in scenes], accuracy_tol))
    write_csv(out_csv, NSO_TABLE_COLUMNS, rows)
    return rows
