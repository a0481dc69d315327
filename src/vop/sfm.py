"""The reconstruct stage: which pairs give a complete reconstruction? SfM from each method's pairs.

A method's pairs are proved by the model they build: the pairs' matches, read from the method's shard of the
scene's matches store (vop.match_store, checked against the local features they were matched from), go into
a COLMAP database with the scene's cameras (vop.colmap_database), are verified by COLMAP's two-view geometry
and mapped incrementally (vop.reconstruction, pycolmap). The model is kept where COLMAP's GUI opens it:

    results/{dataset}/{scene}/{method}/sfm/database.db      cameras, keypoints, matches, two-view geometries
    results/{dataset}/{scene}/{method}/sfm/models/0, 1, ... models, largest first (COLMAP binary)
    results/{dataset}/{scene}/{method}/sfm/metrics.json     what `reconstruct_method` measured
    results/{dataset}/{scene}/{method}/sfm/sweep.csv        the same at each depth of the `sweep`
    results/{dataset}/sfm.csv, sfm_sweep.csv, plots/sfm.png the tables of the dataset, the sweep's figure

The sweep cuts each method's ranking (scores.csv) at k = 2, 5, 10, 20 pairs per query; a ranking shallower
than the deepest cut is ranked again deeper in the sweep's job (its first k equal scores.csv's, which is
checked); the pairs it lacks are matched into `{method}/sfm/matches.h5`, copying every pair the scene's
stores hold. `export_colmap` writes the database of chosen pairs for your own `colmap mapper`.

Pairs per image is 2P/N for P unordered pairs among N images: how many images each image is matched with on
average (exhaustive: N - 1; k retrieved per query: between k and 2k).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from vop.conf import MatchingConf, SfmConf
from vop.io import GroundTruth, list_h5_names, read_gt, write_csv, write_json
from vop.match_store import read_matches, scene_lock, unique_pairs, update_store

logger = logging.getLogger(__name__)

Pair = tuple[str, str]

# The columns of sfm.csv and sfm_sweep.csv after method, scene (and k): the figures of one reconstruction.
FIGURES = ("pairs", "pairs_per_image", "pairs_verified", "num_images", "registered", "registered_pct",
           "registered_any_pct", "num_models", "points3D", "mean_track_length", "mean_reprojection_error",
           "rot_within_5deg_pct", "rot_within_10deg_pct", "rot_within_20deg_pct", "median_rot_err_deg",
           "median_center_err_rel", "seconds")
SWEEP_STORE = "sfm/matches.h5"  # under the method's folder: the sweep's pairs (a cache for the scene's stores)


def pairs_per_image(num_pairs: int, num_images: int) -> float:
    """2P/N: the mean number of images an image is matched with."""
    return 2.0 * num_pairs / num_images if num_images else 0.0


def ranking_pairs(ranking, names: Sequence[str], k: int) -> list[Pair]:
    """The unordered pairs (canonical, each once) of each query's first k ranked images."""
    k = min(int(k), ranking.db.shape[1])
    return unique_pairs((names[q], names[d]) for q, row in zip(ranking.queries, ranking.db) for d in row[:k])


def _cameras_of(gt: GroundTruth | None, posed: bool, conf: SfmConf) -> tuple[GroundTruth | None, bool]:
    """The ground truth the reconstruction is scored against (None without poses) and whether its K is used."""
    if not posed:
        return None, False
    return gt, conf.known_intrinsics


def sfm_verification_options(conf: SfmConf):
    """COLMAP's two-view geometry options of the conf."""
    from vop.colmap_database import verification_options

    return verification_options(conf.max_error_px, conf.min_num_inliers, conf.max_num_trials, seed=conf.seed)


def reconstruct_method(conf: SfmConf, pairs: Sequence[Pair], gt_h5: str | Path, local_features_h5: str | Path,
                       matches_h5: str | Path, out_dir: str | Path, matching: MatchingConf = MatchingConf(),
                       posed: bool = True, num_threads: int = 1, features: Mapping | None = None,
                       write_metrics: bool = True, geometries: Mapping | None = None) -> dict:
    """SfM of a scene from `pairs`, their matches read from the store `matches_h5`; the metrics (also written
    to out_dir/metrics.json). `posed`: the scene has ground-truth poses (camera errors after alignment) and
    intrinsics (fixed PINHOLE cameras when conf.known_intrinsics); else COLMAP's SIMPLE_RADIAL guess, refined.
    `geometries`: the pairs' two-view geometries, verified already (the sweep verifies its pairs once)."""
    from vop.local_features import read_local_features
    from vop.reconstruction import reconstruct

    start = time.perf_counter()
    gt = read_gt(gt_h5)
    names = list(gt.names)
    if features is None:
        features = read_local_features(local_features_h5, names)
    pairs = unique_pairs(pairs)
    matches = read_matches(matches_h5, pairs, features, matching, local_features_h5)
    scored, known = _cameras_of(gt, posed, conf)
    result = reconstruct(pairs, local_features_h5, out_dir, gt=scored, names=names, known_intrinsics=known,
                         verify_options=sfm_verification_options(conf), min_model_size=conf.min_model_size,
                         num_threads=num_threads, seed=conf.seed, matches=matches, features=features,
                         geometries=geometries)
    metrics = dict(result.metrics)
    metrics.update(pairs_per_image=pairs_per_image(len(pairs), len(names)), seconds=time.perf_counter() - start,
                   known_intrinsics=known)
    if write_metrics:
        write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics


# ---------------------------------------------------------------------------------------------------
# The sweep: each method's ranking cut at several depths


def sweep_ranking(scores_csv: str | Path, names: Sequence[str], depth: int,
                  rank_deeper: Callable[[int], object] | None = None):
    """The method's ranking at least `depth` deep where it can be: scores.csv's, or ranked again at `depth`
    by `rank_deeper(depth)` when shallower; the deeper ranking must start with scores.csv's (checked)."""
    from vop.retrieval import read_ranking

    ranking = read_ranking(scores_csv, names)
    have = ranking.db.shape[1]
    if have >= depth or rank_deeper is None:
        return ranking
    deeper = rank_deeper(depth)
    if not (np.array_equal(deeper.queries, ranking.queries) and np.array_equal(deeper.db[:, :have], ranking.db)):
        raise ValueError(f"{scores_csv}: ranking the method again {depth} deep does not start with its {have} "
                         "ranks; the ranking is stale: rerun its retrieve rule")
    logger.info("%s: %d ranks per query; ranked again %d deep for the sweep", scores_csv, have, deeper.db.shape[1])
    return deeper


def sweep_store(store_h5: str | Path, pairs: Sequence[Pair], features: Mapping, matching: MatchingConf,
                shared: Sequence[str | Path] = ()) -> dict[str, int]:
    """`store_h5` holding `pairs`: those the scene's stores (`shared`) hold are copied, the rest matched; the
    scene's store jobs take turns (vop.match_store.scene_lock)."""
    store_h5 = Path(store_h5)
    scene_dir = store_h5.parents[2]
    with scene_lock(scene_dir / ".matches.h5.lock"):
        return update_store(store_h5, pairs, features, matching, shared=shared)


def scene_stores(scene_dir: str | Path) -> list[Path]:
    """Every matches store of a scene: the methods' shards and their sweep stores."""
    scene_dir = Path(scene_dir)
    return sorted(scene_dir.glob("*/matches.h5")) + sorted(scene_dir.glob(f"*/{SWEEP_STORE}"))


def verify_once(pairs: Sequence[Pair], gt: GroundTruth, features: Mapping, matches: Mapping, conf: SfmConf,
                database_path: str | Path, posed: bool = True, num_threads: int = 1) -> dict:
    """The two-view geometries of `pairs`, verified once (in a database of their own, with the cameras the
    reconstructions get) for every depth of the sweep: a pair's geometry does not depend on the other pairs."""
    from vop.colmap_database import read_geometries, verify, write_database

    names = list(gt.names)
    known = posed and conf.known_intrinsics
    cameras = [(gt.K[i] if known else None, gt.image_size[i] if known else features[n]["image_size"])
               for i, n in enumerate(names)]
    write_database(database_path, names, cameras, {n: features[n]["keypoints"] for n in names}, matches=matches)
    verify(database_path, None, sfm_verification_options(conf), num_threads=num_threads)
    return read_geometries(database_path, conf.min_num_inliers)


def run_sweep(conf: SfmConf, ranking, gt_h5: str | Path, local_features_h5: str | Path, out_dir: str | Path,
              matching: MatchingConf = MatchingConf(), posed: bool = True, num_threads: int = 1,
              shared: Sequence[str | Path] = ()) -> list[dict]:
    """One reconstruction per depth of conf.sweep from the ranking's first k pairs per query (a depth that gives
    the same pairs as a smaller one is not reconstructed again); rows {k, **metrics}, written to out_dir/sweep.csv.
    The pairs are matched into out_dir/matches.h5 (copied from the `shared` stores where they hold them)."""
    from vop.local_features import read_local_features

    out_dir = Path(out_dir)
    gt = read_gt(gt_h5)
    names = gt.names
    features = read_local_features(local_features_h5, names)
    cuts, seen = [], set()
    for k in sorted(set(conf.sweep)):
        pairs = ranking_pairs(ranking, names, k)
        key = frozenset(pairs)
        if key in seen:
            continue
        seen.add(key)
        cuts.append((min(k, ranking.db.shape[1]), pairs))
    store = out_dir / "matches.h5"
    union = unique_pairs(p for _, pairs in cuts for p in pairs)
    sweep_store(store, union, features, matching, shared)
    (out_dir / "sweep").mkdir(parents=True, exist_ok=True)
    geometries = verify_once(union, gt, features, read_matches(store, union, features, matching), conf,
                             out_dir / "sweep" / "verified.db", posed, num_threads)
    rows = []
    for k, pairs in cuts:
        metrics = reconstruct_method(conf, pairs, gt_h5, local_features_h5, store, out_dir / "sweep" / f"k{k}",
                                     matching, posed, num_threads, features=features, write_metrics=False,
                                     geometries=geometries)
        rows.append({"k": k, **metrics})
    write_csv(out_dir / "sweep.csv", ["k", *FIGURES], [[r["k"], *(_cell(r.get(f)) for f in FIGURES)] for r in rows])
    return rows


# ---------------------------------------------------------------------------------------------------
# The tables and the figure


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def _mean(values) -> float:
    values = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(values)) if values else math.nan


def sfm_table(entries: Sequence[dict], out_csv: str | Path):
    """sfm.csv: one row per (method, scene) from each entry's metrics.json (entries: method, scene, k,
    metrics) and an ALL row per method (means over its scenes)."""
    import json

    import pandas as pd

    rows = []
    for entry in entries:
        metrics = json.loads(Path(entry["metrics"]).read_text())
        k = entry.get("k") or metrics["num_images"] - 1  # exhaustive: every other image
        rows.append({"method": entry["method"], "scene": entry["scene"], "k": k,
                     **{f: metrics.get(f, math.nan) for f in FIGURES}})
    df = pd.DataFrame(rows, columns=["method", "scene", "k", *FIGURES])
    all_rows = []
    for method, group in df.groupby("method", sort=False):
        all_rows.append({"method": method, "scene": "ALL", "k": group["k"].iloc[0] if group["k"].nunique() == 1 else "",
                         **{f: _mean(group[f]) for f in FIGURES}})
    df = pd.concat([df, pd.DataFrame(all_rows, columns=df.columns)], ignore_index=True)
    Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out_csv, index=False, float_format="%.4g")
    return df


def sweep_table(entries: Sequence[dict], out_csv: str | Path):
    """sfm_sweep.csv: every method's sweep rows (entries: method, scene, sweep = its sweep.csv)."""
    import pandas as pd

    parts = []
    for entry in entries:
        part = pd.read_csv(entry["sweep"])
        part.insert(0, "scene", entry["scene"])
        part.insert(0, "method", entry["method"])
        parts.append(part)
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["method", "scene", "k", *FIGURES])
    df.to_csv(out_csv, index=False, float_format="%.4g")
    return df


def plot_sweep(sweep_csv: str | Path, sfm_csv: str | Path, out_png: str | Path, title: str = "") -> None:
    """Registered images (percent, largest model) against pairs per image: one line per method (its sweep,
    mean over scenes per k), the exhaustive reference as a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    sweep = pd.read_csv(sweep_csv)
    table = pd.read_csv(sfm_csv)
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, group in sweep.groupby("method", sort=False):
        mean = group.groupby("k")[["pairs_per_image", "registered_pct"]].mean().sort_index()
        ax.plot(mean["pairs_per_image"], mean["registered_pct"], marker="o", label=method)
    reference = table[(table["method"] == "exhaustive") & (table["scene"] == "ALL")]
    if len(reference):
        ax.plot(reference["pairs_per_image"], reference["registered_pct"], marker="*", markersize=14,
                linestyle="none", color="black", label="exhaustive")
    ax.set_xscale("log")
    ax.set_xlabel("pairs matched per image (2P/N)")
    ax.set_ylabel("images registered, largest model (%)")
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "Registered images vs pairs per image")
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------
# Export: a database for your own COLMAP


def export_colmap(database_path: str | Path, pairs: Sequence[Pair], local_features_h5: str | Path,
                  matches_h5: str | Path | None = None, gt_h5: str | Path | None = None,
                  matching: MatchingConf = MatchingConf(), known_intrinsics: bool = True, verify: bool = True,
                  max_error_px: float = 4.0, min_num_inliers: int = 15, num_threads: int = -1) -> dict:
    """Write a COLMAP database (images, cameras, keypoints, descriptors, matches of `pairs`) that
    `colmap mapper --database_path ... --image_path ... --output_path ...` maps directly, in seconds rather
    than the hours `colmap matches_importer` takes on long pair lists. Matches come from the store
    `matches_h5` (checked against the features) or, without one, are matched here. Cameras: gt.h5's K
    (PINHOLE) where given and `known_intrinsics`, else COLMAP's guess from the image size. With `verify`,
    COLMAP's two-view geometry is run too (what the mapper reads); else run `colmap matches_importer` or
    pycolmap.verify_matches yourself. Returns the database's row counts and the seconds."""
    from vop.colmap_database import read_counts, verification_options, write_database
    from vop.colmap_database import verify as verify_database
    from vop.local_features import read_local_features
    from vop.triangulation import match_pairs

    start = time.perf_counter()
    gt = read_gt(gt_h5) if gt_h5 is not None else None
    names = list(gt.names) if gt is not None else list_h5_names(local_features_h5)
    features = read_local_features(local_features_h5, names)
    pairs = unique_pairs(pairs)
    index = set(names)
    for pair in pairs:
        for name in pair:
            if name not in index:
                raise KeyError(f"pair {pair}: image {name!r} is not in {gt_h5 or local_features_h5}; the pairs are "
                               "from another scene")
    if matches_h5 is not None:
        matches = read_matches(matches_h5, pairs, features, matching, local_features_h5)
    else:
        matches = match_pairs(features, pairs, matching.ratio)
    if gt is not None and known_intrinsics:
        cameras = [(gt.K[i], gt.image_size[i]) for i in range(len(names))]
    else:
        cameras = [(None, features[n]["image_size"]) for n in names]
    stats = write_database(database_path, names, cameras, {n: f["keypoints"] for n, f in features.items()},
                           {n: f["descriptors"] for n, f in features.items()},
                           matches=matches)  # canonical pairs, columns in their order
    if verify:
        verify_database(database_path, None, verification_options(max_error_px, min_num_inliers),
                        num_threads=num_threads)
    counts = read_counts(database_path)
    counts.update(seconds=time.perf_counter() - start, write_s=stats.seconds, pairs=len(pairs))
    logger.info("Exported %s: %d images, %d pairs (%d matches), %d verified, in %.1fs", database_path,
                counts["images"], counts["matched_pairs"], counts["matches"], counts["verified_pairs"],
                counts["seconds"])
    return counts
