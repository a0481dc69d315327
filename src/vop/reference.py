"""The straightforward VOP retrieval, written independently of `vop.retrieval`, to check it.

This is how the paper's reference code votes: per query, a faiss index over its P candidates'
patches, one range search for the query's patches, then Python loops over the query patches to
weight and add the votes. The prefilter is an exact numpy inner product. It is slow by design
(benchmarks/retrieval.py measures how slow) and exists to verify the batched implementation:

    vop check results/demo      # recompute every vop method's pairs and compare
"""

from __future__ import annotations

import fnmatch
import json
import math
from pathlib import Path

import faiss
import h5py
import numpy as np

from . import io
from .progress import progress


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def votes_one_query(query_patches: np.ndarray, candidate_patches: np.ndarray, tau: float, tfidf: bool) -> np.ndarray:
    """Votes of one query (M,D) for its candidates (P,M,D), by range search and loops over patches."""
    num_cand, num_patches, dim = candidate_patches.shape
    index = faiss.IndexFlatIP(dim)
    index.add(np.ascontiguousarray(_unit(candidate_patches).reshape(-1, dim)))
    lims, sims, ids = index.range_search(np.ascontiguousarray(_unit(query_patches)), tau)  # sims > tau
    scores = np.zeros(num_cand)
    for p in range(len(query_patches)):
        neighbours = ids[lims[p]:lims[p + 1]] // num_patches  # candidate of each neighbouring patch
        similarities = sims[lims[p]:lims[p + 1]].astype(np.float64)
        if len(neighbours) == 0:
            continue
        holders = len(set(neighbours.tolist()))
        weight = len(neighbours) / len(query_patches) * max(0.0, math.log(num_cand / holders)) if tfidf else 1.0
        for c, s in zip(neighbours, similarities):
            scores[c] += weight * s
    return scores


def coverage_one_pair(query_patches: np.ndarray, db_patches: np.ndarray, tau: float) -> tuple[float, float]:
    """Predicted NSO of one pair (vop.nso) by range search: the share of the query's patches with a patch of the
    database image above cosine tau, and the share of its patches found so."""
    index = faiss.IndexFlatIP(db_patches.shape[1])
    index.add(np.ascontiguousarray(_unit(db_patches)))
    lims, _, ids = index.range_search(np.ascontiguousarray(_unit(query_patches)), tau)
    return float(np.mean(np.diff(lims) > 0)), len(set(ids.tolist())) / len(db_patches)


def prefilter(global_desc: np.ndarray, queries: np.ndarray, database: np.ndarray, num: int) -> list[np.ndarray]:
    """Per query, the `num` most similar database images by exact cosine (ties: lower index first)."""
    register = len(queries) == len(database) and bool(np.all(queries == database))
    glob = _unit(global_desc).astype(np.float64)
    candidates = []
    for q in queries:
        others = database[database != q] if register else database
        sim = np.round(glob[others] @ glob[q], 6)  # compared at float32 resolution
        candidates.append(others[np.lexsort((others, -sim))[:num]])
    return candidates


def retrieve_vop(global_desc: np.ndarray, patches: np.ndarray, queries: np.ndarray, database: np.ndarray, k: int,
                 prefilter_size: int, radius: float, tfidf: bool,
                 candidates: list[np.ndarray] | None = None) -> list[tuple[int, list[int], list[float]]]:
    """(query, database images best first, their votes) per query; register mode when queries == database.

    `candidates` (per query, in prefilter order) skips the exact prefilter, e.g. to time the voting alone.
    """
    if candidates is None:
        candidates = prefilter(global_desc, queries, database, prefilter_size)
    results = []
    for q, cand in progress(zip(queries, candidates), len(queries), "reference voting", "queries"):
        votes = votes_one_query(patches[q], patches[cand], 1.0 - radius, tfidf)
        # Ties within 1e-6 of the best vote, and all-zero votes, keep prefilter order.
        scale = max(float(np.abs(votes).max()), 0.0) or 1.0
        order = sorted(range(len(cand)), key=lambda i: (-round(votes[i] / scale / 1e-6), i))[:k]
        results.append((int(q), [int(cand[i]) for i in order], [float(votes[i]) for i in order]))
    return results


def method_dirs(results: Path) -> list[Path]:
    """The folders of every vop retrieval under a dataset's results folder."""
    return sorted(p.parent for p in Path(results).glob("*/*/retrieval.json")
                  if json.loads(p.read_text()).get("type") == "vop")


def check_method_dir(method_dir: Path) -> tuple[bool, str]:
    """Recompute one scene's vop pairs from its embeddings and retrieval.json; compare with pairs.txt."""
    info = json.loads((method_dir / "retrieval.json").read_text())
    scene_dir = method_dir.parent
    names = io.read_names(scene_dir / "gt.h5")
    embeddings = scene_dir / f"embeddings-{info['encoder']}.h5"
    with h5py.File(embeddings, "r") as f:
        glob = np.stack([f[n]["global_descriptor"][()] for n in names]).astype(np.float32)
        patches = np.stack([f[n]["patch_descriptors"][()] for n in names]).astype(np.float32)
    everything = np.arange(len(names))
    if info.get("mode", "register") == "retrieve":  # written here again, not taken from vop.datasets
        is_query = np.array([fnmatch.fnmatchcase(n, info["queries"]) for n in names])
        queries, database = everything[is_query], everything[~is_query]
    else:
        queries = database = everything
    k = int(info.get("k_clamped", info["k"]))
    prefilter_size = int(info.get("prefilter_clamped", info["prefilter"]))
    # a list deeper than the prefilter (a protocol's depth) continues in prefilter order after the reranked head
    ranked = prefilter(glob, queries, database, max(k, prefilter_size))
    head = retrieve_vop(glob, patches, queries, database, min(k, prefilter_size), prefilter_size,
                        float(info["radius"]), bool(info["tfidf"]), [c[:prefilter_size] for c in ranked])
    expected = [(names[q], names[d]) for (q, dbs, _), cand in zip(head, ranked)
                for d in [*dbs, *cand[prefilter_size:k]]]
    written = io.read_pairs(method_dir / "pairs.txt")
    if expected == written:
        return _check_nso(method_dir, info, names, patches, f"{method_dir}: {len(written)} pairs equal")
    differ = sum(a != b for a, b in zip(expected, written)) + abs(len(expected) - len(written))
    return False, f"{method_dir}: {differ} of {len(expected)} pairs differ"


def _check_nso(method_dir: Path, info: dict, names, patches: np.ndarray, message: str) -> tuple[bool, str]:
    """The predicted NSO columns of scores.csv (where written) against `coverage_one_pair`, reranked pairs only."""
    import csv

    with open(method_dir / "scores.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("enclosure") not in (None, "", "nan")]
    if not rows:
        return True, message
    index = {n: i for i, n in enumerate(names)}
    tau = float(info.get("nso_tau", 1.0 - float(info["radius"])))
    worst = 0.0
    for r in rows:
        want = coverage_one_pair(patches[index[r["query"]]], patches[index[r["db"]]], tau)
        worst = max(worst, abs(want[0] - float(r["enclosure"])), abs(want[1] - float(r["concentration"])))
    if worst <= 1.01 / patches.shape[1]:  # a cosine within float rounding of tau may fall either side: one patch
        return True, f"{message}, {len(rows)} predicted NSO equal"
    return False, f"{method_dir}: predicted NSO differs by up to {worst:.3g} from the range search's"
