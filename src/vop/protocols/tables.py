"""The tables of the other protocols, results/{dataset}/{vpr,revisitop,gl3d}.csv, from the retrieval outputs.

One function per protocol (`TABLES`), each taking the runs of a dataset (one entry per method and scene,
with its files) and writing one row per (method, scene) and an `ALL` row per method (every query of the
method's scenes pooled), methods in the order given, scenes sorted:

  vpr        method, scene, num_queries, R@1, R@5, R@10, R@20: percent of the queries with a positive (a
             database image within `positive_dist_m`) among their first N; queries without a positive
             count as misses (GeoWarp divides by all queries)
  revisitop  method, scene, num_queries, mAP_E, mAP_M, mAP_H, mP@1_E, mP@5_E, mP@10_E, ... _M, ... _H: the
             Easy, Medium and Hard protocols of revisitop's compute_map over each query's full ranking;
             queries without positives under a protocol are left out of its means, as there
  gl3d       method, scene, num_queries, mAP@K: MIRorR's compute_GL3D_map over match_pairs.txt (K lines per
             query, the self pair one of them); num_queries counts the queries with a ground-truth partner

An entry: {method, scene, pairs_txt, gt_h5, reader} (reader: vop.datasets.open_scene's arguments), and
for gl3d `match_pairs` and `k`. Values are percent, rounded to 4 decimals. A dataset without ground truth
(an image list without `gt_pairs`) gets the same columns, every metric cell saying "no ground truth".

    vop protocol-table vpr --entries entries.json --out results/pitts30k/vpr.csv
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from vop.datasets import open_scene, split_queries
from vop.io import read_names, read_pairs, write_csv
from vop.metrics import NO_GROUND_TRUTH, retrieved_per_query
from vop.protocols import gl3d, revisitop, vpr

logger = logging.getLogger(__name__)

VPR_COLUMNS = ["method", "scene", "num_queries", *(f"R@{n}" for n in vpr.RECALL_NS)]
_SUFFIX = {"easy": "E", "medium": "M", "hard": "H"}
REVISITOP_COLUMNS = ["method", "scene", "num_queries", *(f"mAP_{_SUFFIX[p]}" for p in revisitop.PROTOCOLS),
                     *(f"mP@{k}_{_SUFFIX[p]}" for p in revisitop.PROTOCOLS for k in revisitop.KAPPAS)]


def gl3d_columns(k: int) -> list[str]:
    return ["method", "scene", "num_queries", f"mAP@{k}"]


def _percent(x: float) -> float:
    return round(float(x) * 100.0, 4)


def _rankings(pairs_txt: str | Path, names: Sequence[str], queries: np.ndarray, database: np.ndarray,
              depth: int | None, gt_h5: str | Path) -> np.ndarray:
    """(Q, depth) database positions per query from pairs.txt, queries in the order of `queries`;
    depth None: every database image (a full ranking)."""
    index = {n: i for i, n in enumerate(names)}
    position = np.full(len(names), -1, np.int64)
    position[database] = np.arange(len(database))
    retrieved = retrieved_per_query(read_pairs(pairs_txt))
    need = len(database) if depth is None else min(depth, len(database))  # a database smaller than the cut
    rows = []
    for q in queries:
        dbs = retrieved.get(names[q])
        if dbs is None:
            raise ValueError(f"{pairs_txt}: query {names[q]!r} of {gt_h5} has no pairs; the file is stale or from "
                             "another scene: rerun its retrieval rule")
        unknown = [d for d in dbs if d not in index or position[index[d]] < 0]
        if unknown:
            raise ValueError(f"{pairs_txt}: {unknown[0]!r} (a pair of query {names[q]!r}) is not a database image "
                             f"of {gt_h5}; rerun its retrieval rule")
        row = position[[index[d] for d in dbs]]
        if len(row) < need:
            what = "the whole database" if depth is None else f"{need}"
            raise ValueError(f"{pairs_txt}: query {names[q]!r} has {len(row)} retrieved images, the protocol needs "
                             f"{what}; rerun retrieval with the dataset's k (its `k` in config/config.yaml)")
        if depth is None and len(np.unique(row)) != len(database):
            raise ValueError(f"{pairs_txt}: the ranking of query {names[q]!r} lists some database images twice "
                             "and misses others; it must rank the whole database once")
        rows.append(row[:need])
    return np.asarray(rows, np.int64).reshape(len(queries), need)


def _query_split(entry: dict, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    return split_queries(names, entry.get("mode", "retrieve"), entry.get("queries"), str(entry["scene"]))


def _by_method(entries: Sequence[dict], stats: Callable[[dict], dict]) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for entry in entries:
        method, scene = str(entry["method"]), str(entry["scene"])
        if scene == "ALL":
            raise ValueError(f"a scene may not be called 'ALL' (method {method!r})")
        if scene in out[method]:
            raise ValueError(f"({method}, {scene}) given twice")
        out[method][scene] = stats(entry)
    return out


def _write(rows: list[list], columns: list[str], out_csv: str | Path) -> pd.DataFrame:
    write_csv(out_csv, columns, rows)
    logger.info("Wrote %d rows to %s", len(rows), out_csv)
    return pd.DataFrame(rows, columns=columns)


# ---------------------------------------------------------------------------------------------------
# VPR


def vpr_first_ranks(entry: dict) -> np.ndarray:
    """(Q,) rank of each query's first positive in its list (inf where there is none)."""
    names = read_names(entry["gt_h5"])
    queries, database = _query_split(entry, names)
    utm = np.array([vpr.parse_utm(n) for n in names], np.float64)
    dist_m = float(open_scene(**entry["reader"]).options.positive_dist_m)
    positives = vpr.positives(utm[database], utm[queries], dist_m)
    rankings = _rankings(entry["pairs_txt"], names, queries, database, max(vpr.RECALL_NS), entry["gt_h5"])
    return vpr.first_positive_rank(rankings, positives)


def vpr_table(entries: Sequence[dict], out_csv: str | Path) -> pd.DataFrame:
    runs = _by_method(entries, vpr_first_ranks)
    rows = []
    for method, scenes in runs.items():
        for scene, first in [*sorted(scenes.items()), ("ALL", np.concatenate(list(scenes.values())))]:
            recalls = [_percent(np.mean(first < n)) if len(first) else 0.0 for n in vpr.RECALL_NS]
            rows.append([method, scene, len(first), *recalls])
    return _write(rows, VPR_COLUMNS, out_csv)


# ---------------------------------------------------------------------------------------------------
# revisitop


def revisitop_results(entry: dict) -> dict[str, revisitop.ProtocolResult]:
    """The three protocols' results of one run: its pairs.txt read as the full ranking of every query."""
    scene = open_scene(**entry["reader"])
    ground = scene.ground()
    db_names, query_names = scene.names(ground)
    names = read_names(entry["gt_h5"])
    index = {n: i for i, n in enumerate(names)}
    missing = [n for n in db_names + query_names if n not in index]
    if missing:
        raise ValueError(f"{entry['gt_h5']}: {missing[0]!r} of {scene.gnd_path} is not in the ground truth; "
                         "rerun the ground_truth rule")
    queries = np.array([index[n] for n in query_names], np.int64)
    database = np.array([index[n] for n in db_names], np.int64)
    ranking = _rankings(entry["pairs_txt"], names, queries, database, None, entry["gt_h5"])
    return revisitop.evaluate(ranking, ground, strict=False)  # a scene may lack positives under one protocol


def revisitop_table(entries: Sequence[dict], out_csv: str | Path) -> pd.DataFrame:
    runs = _by_method(entries, revisitop_results)
    rows = []
    for method, scenes in runs.items():
        items = sorted(scenes.items())
        for scene, results in [*items, ("ALL", None)]:
            parts = [r for _, r in items] if results is None else [results]
            maps, mps = [], []
            for protocol in revisitop.PROTOCOLS:
                aps = np.concatenate([r[protocol].aps for r in parts])
                prs = np.concatenate([r[protocol].prs for r in parts])
                scored = ~np.isnan(aps)
                maps.append(_percent(aps[scored].mean()) if scored.any() else "")
                mps += [_percent(prs[scored, i].mean()) if scored.any() else "" for i in range(len(revisitop.KAPPAS))]
            num_queries = sum(len(r["medium"].aps) for r in parts)
            rows.append([method, scene, num_queries, *maps, *mps])
    return _write(rows, REVISITOP_COLUMNS, out_csv)


# ---------------------------------------------------------------------------------------------------
# GL3D (MIRorR)


def gl3d_aps(entry: dict) -> np.ndarray | None:
    """(N,) AP per image of the list (NaN without partners) over its match_pairs.txt list; None without
    ground truth."""
    names = read_names(entry["gt_h5"])
    partners = open_scene(**entry["reader"]).partners(len(names))
    if partners is None:
        return None
    rankings, _ = gl3d.read_match_pairs(entry["match_pairs"], len(names))
    return gl3d.overlap_aps(rankings, partners, int(entry["k"]))


def gl3d_table(entries: Sequence[dict], out_csv: str | Path) -> pd.DataFrame:
    ks = sorted({int(e["k"]) for e in entries})
    if len(ks) > 1:
        raise ValueError(f"gl3d table: runs with different list lengths {ks} cannot share one mAP@K column")
    k = ks[0] if ks else gl3d.TOP_K
    runs = _by_method(entries, gl3d_aps)
    rows = []
    for method, scenes in runs.items():
        known = [a for a in scenes.values() if a is not None]
        for scene, aps in [*sorted(scenes.items()), ("ALL", np.concatenate(known) if known else None)]:
            if aps is None:
                rows.append([method, scene, NO_GROUND_TRUTH, NO_GROUND_TRUTH])
                continue
            scored = aps[~np.isnan(aps)]
            rows.append([method, scene, len(scored), _percent(scored.mean()) if len(scored) else ""])
    return _write(rows, gl3d_columns(k), out_csv)


def write_match_pairs(pairs_txt: str | Path, scores_csv: str | Path, gt_h5: str | Path, out: str | Path) -> None:
    """match_pairs.txt (MIRorR) of one run: each query's self pair, then its pairs.txt list with scores.csv's
    scores, indices into the scene's image order (the image list's). The self pair scores
    max(1, the query's best score), so that every list stays sorted by score."""
    names = read_names(gt_h5)
    index = {n: i for i, n in enumerate(names)}
    scores = pd.read_csv(scores_csv, dtype={"query": str, "db": str}, keep_default_na=False,
                         na_values={"score": ["nan"], "prefilter_score": ["nan"]})
    by_pair = {(q, d): s for q, d, s in zip(scores["query"], scores["db"], scores["score"].astype(np.float64))}
    retrieved = retrieved_per_query(read_pairs(pairs_txt))
    rankings, values = [[] for _ in names], [[] for _ in names]
    for query, dbs in retrieved.items():
        for name in (query, *dbs):
            if name not in index:
                raise ValueError(f"{pairs_txt}: {name!r} is not an image of {gt_h5}; rerun its retrieval rule")
        i = index[query]
        rankings[i] = [index[d] for d in dbs]
        values[i] = [by_pair.get((query, d), np.nan) for d in dbs]
    self_scores = [max([1.0, *[v for v in vals if np.isfinite(v)]]) for vals in values]
    gl3d.write_match_pairs(out, rankings, values, self_scores)


TABLES: dict[str, Callable[[Sequence[dict], str | Path], pd.DataFrame]] = {
    "vpr": vpr_table, "revisitop": revisitop_table, "gl3d": gl3d_table}


def write_table(protocol: str, entries: Sequence[dict], out_csv: str | Path) -> pd.DataFrame:
    if protocol not in TABLES:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(TABLES)}")
    return TABLES[protocol](entries, out_csv)
