"""Retrieval methods: for every image of a scene, the k database images it overlaps most.

Methods (one named entry each in config/config.yaml, `type:` picks the function):
  cls     top-k by cosine of the global descriptors
  vop     top-P candidates by global descriptor, then patch voting (radius search + TF-IDF), top-k by votes
  oracle  top-k by ground-truth co-visibility overlap (the upper bound)
  random  seeded random images (the lower bound)

Every method writes the same three files (DESIGN.md): pairs.txt, scores.csv and retrieval.json.
"""

from __future__ import annotations

import argparse
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import io
from .utils import l2_normalize as normalize, setup_logging

logger = logging.getLogger(__name__)

PATCH_SAMPLES_FOR_RADIUS = 200_000


@dataclass
class Ranking:
    """Per query: database indices best first, their scores and their global-descriptor similarity."""

    db: list[np.ndarray]
    score: list[np.ndarray]
    prefilter_score: list[np.ndarray]
    info: dict = field(default_factory=dict)


def _device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _check_scene(num_images: int, scene: str) -> None:
    if num_images < 2:
        raise ValueError(
            f"scene {scene!r} has {num_images} image(s): retrieval needs at least 2; "
            "remove the scene from the dataset's `scenes` in config/config.yaml"
        )


def _clamp(value: int, num_images: int, what: str, info: dict) -> int:
    """k or P larger than the scene: use every other image and say so in retrieval.json."""
    if value > num_images - 1:
        logger.warning("%s=%d > %d other images in the scene: using %d", what, value, num_images - 1, num_images - 1)
        info[f"{what}_clamped"] = num_images - 1
        return num_images - 1
    return value


def global_similarity(global_desc: np.ndarray) -> np.ndarray:
    """(N,N) cosine similarity, the diagonal (the query itself) set to -inf."""
    g = normalize(global_desc)
    sim = g @ g.T
    np.fill_diagonal(sim, -np.inf)
    return sim


def top_k_with_ties(scores: np.ndarray, order_tiebreak: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores; equal scores keep the order of `order_tiebreak` (a rank per index)."""
    order = np.lexsort((order_tiebreak, -scores))
    return order[:k]


def retrieve_cls(global_desc: np.ndarray, k: int, scene: str = "") -> Ranking:
    n = len(global_desc)
    _check_scene(n, scene)
    info: dict = {}
    k = _clamp(k, n, "k", info)
    sim = global_similarity(global_desc)
    db, score = [], []
    for q in range(n):
        idx = top_k_with_ties(sim[q], np.arange(n), k)
        db.append(idx)
        score.append(sim[q, idx])
    return Ranking(db, score, score, info)


def retrieve_oracle(overlap: np.ndarray | None, k: int, scene: str = "") -> Ranking:
    if overlap is None:
        raise ValueError(
            f"scene {scene!r}: the oracle needs ground-truth overlap (3D points with tracks), "
            "and this dataset's model has none; drop `oracle` from the dataset's methods"
        )
    n = len(overlap)
    _check_scene(n, scene)
    info: dict = {}
    k = _clamp(k, n, "k", info)
    ov = np.asarray(overlap, np.float64).copy()
    np.fill_diagonal(ov, -np.inf)
    db = [top_k_with_ties(ov[q], np.arange(n), k) for q in range(n)]
    score = [ov[q, d] for q, d in enumerate(db)]
    return Ranking(db, score, [np.full(len(d), np.nan) for d in db], info)


def retrieve_random(num_images: int, k: int, seed: int, scene: str = "") -> Ranking:
    _check_scene(num_images, scene)
    info: dict = {}
    k = _clamp(k, num_images, "k", info)
    # One generator per (seed, scene): a scene's pairs do not depend on which other scenes exist.
    rng = np.random.default_rng([seed, zlib.crc32(scene.encode())])
    db = []
    for q in range(num_images):
        others = np.delete(np.arange(num_images), q)
        db.append(rng.permutation(others)[:k])
    return Ranking(db, [np.zeros(len(d)) for d in db], [np.full(len(d), np.nan) for d in db], info)


def auto_radius(patches: np.ndarray, seed: int = 0, num_samples: int = PATCH_SAMPLES_FOR_RADIUS) -> tuple[float, float]:
    """The paper's automatic radius: median cosine of patch pairs from different images, rounded to 0.1.

    Returns (radius, median). The radius is kept in [0.1, 1.0] so that tau = 1 - radius stays below 1.
    """
    n, m, _ = patches.shape
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n, num_samples)
    b = (a + rng.integers(1, n, num_samples)) % n  # a different image
    pa = normalize(patches[a, rng.integers(0, m, num_samples)])
    pb = normalize(patches[b, rng.integers(0, m, num_samples)])
    median = float(np.median(np.sum(pa * pb, axis=1)))
    radius = float(np.clip(np.round(median, 1), 0.1, 1.0))
    return radius, median


def vote_scores(query: torch.Tensor, candidates: torch.Tensor, tau: float, tfidf: bool) -> torch.Tensor:
    """VOP votes of one query for its P candidates.

    query (M,D) and candidates (P,M,D), L2-normalised. With s(p,r) the cosine of query patch p and
    candidate patch r, score(c) = sum_p w(p) * sum_{r in c, s(p,r) > tau} s(p,r), where
    w(p) = n_p / n_d * max(0, log(P / m_p)) with TF-IDF (1 without; 0 when m_p = 0),
    n_p = candidate patches within the radius of p, m_p = candidates holding at least one, n_d = M.
    """
    num_cand, num_patches, _ = candidates.shape
    sim = torch.einsum("pd,cmd->cpm", query, candidates)  # (P, M_query, M_cand)
    within = sim > tau
    per_candidate = torch.where(within, sim, torch.zeros_like(sim)).sum(-1)  # (P, M_query)
    if tfidf:
        hits = within.sum(-1)  # (P, M_query): n_p split by candidate
        n_p = hits.sum(0).float()
        m_p = (hits > 0).sum(0).float()
        idf = torch.log(num_cand / m_p.clamp(min=1)).clamp(min=0)
        weight = torch.where(m_p > 0, n_p / query.shape[0] * idf, torch.zeros_like(n_p))
    else:
        weight = torch.ones(query.shape[0], dtype=sim.dtype, device=sim.device)
    return per_candidate @ weight


def retrieve_vop(
    global_desc: np.ndarray,
    patches: np.ndarray,
    k: int,
    prefilter: int,
    radius: float | str = "auto",
    tfidf: bool = True,
    scene: str = "",
    device: str | None = None,
    seed: int = 0,
) -> Ranking:
    n = len(global_desc)
    _check_scene(n, scene)
    info: dict = {}
    prefilter = _clamp(prefilter, n, "prefilter", info)
    k = _clamp(k, n, "k", info)
    if k > prefilter:
        raise ValueError(f"vop: k={k} exceeds prefilter={prefilter}: set prefilter >= k in the method's config")
    if radius == "auto":
        radius, median = auto_radius(patches, seed=seed)
        info["radius_auto_median_cosine"] = median
    radius = float(radius)
    tau = 1.0 - radius
    info.update(radius=radius, tau=tau)

    dev = _device(device)
    sim = global_similarity(global_desc)
    patches_t = normalize(torch.from_numpy(np.asarray(patches)).to(dev))
    db, score, pre_score = [], [], []
    no_votes = []
    for q in range(n):
        cand = top_k_with_ties(sim[q], np.arange(n), prefilter)  # prefilter order
        votes = vote_scores(patches_t[q], patches_t[torch.from_numpy(cand).to(dev)], tau, tfidf).cpu().numpy()
        if not np.any(votes > 0):
            no_votes.append(q)
        # Ties, and queries whose candidates got no vote at all, fall back to prefilter order.
        best = top_k_with_ties(votes, np.arange(len(cand)), k)
        db.append(cand[best])
        score.append(votes[best])
        pre_score.append(sim[q, cand[best]])
    info["queries_without_votes"] = len(no_votes)
    if no_votes:
        logger.warning("%d queries got no vote within radius %.2f: their pairs follow prefilter order", len(no_votes), radius)
    return Ranking(db, score, pre_score, info)


def write_outputs(ranking: Ranking, names: Sequence[str], out_dir: str | Path, params: dict) -> None:
    """pairs.txt, scores.csv and retrieval.json in `out_dir`; query order as in `names`."""
    out_dir = Path(out_dir)
    pairs, rows = [], []
    for q, (db, score, pre) in enumerate(zip(ranking.db, ranking.score, ranking.prefilter_score)):
        for rank, (d, s, p) in enumerate(zip(db, score, pre)):
            pairs.append((names[q], names[d]))
            rows.append((names[q], names[d], rank, f"{float(s):.6g}", f"{float(p):.6g}"))
    io.write_pairs(out_dir / "pairs.txt", pairs)
    io.write_csv(out_dir / "scores.csv", ["query", "db", "rank", "score", "prefilter_score"], rows)
    io.write_json(out_dir / "retrieval.json", {**params, **ranking.info, "num_images": len(names)})


def run_method(method: dict, scene: str, gt_h5: Path, out_dir: Path, features_h5: Path | None = None,
               embeddings_h5: Path | None = None, device: str | None = None) -> Ranking:
    """Run one configured method (a config `methods` entry) on one scene and write its outputs."""
    gt = io.read_gt(gt_h5)
    names = gt.names
    kind = method["type"]
    k = int(method["k"])
    if kind == "cls":
        ranking = retrieve_cls(io.read_stacked(features_h5, names, "global_descriptor", np.float32), k, scene)
    elif kind == "vop":
        ranking = retrieve_vop(
            io.read_stacked(embeddings_h5, names, "global_descriptor", np.float32),
            io.read_stacked(embeddings_h5, names, "patch_descriptors", np.float32),
            k=k,
            prefilter=int(method["prefilter"]),
            radius=method.get("radius", "auto"),
            tfidf=bool(method.get("tfidf", True)),
            scene=scene,
            device=device,
            seed=int(method.get("seed", 0)),
        )
    elif kind == "oracle":
        ranking = retrieve_oracle(gt.overlap, k, scene)
    elif kind == "random":
        ranking = retrieve_random(len(names), k, int(method.get("seed", 0)), scene)
    else:
        raise ValueError(f"unknown retrieval type {kind!r}: expected one of cls, vop, oracle, random")
    write_outputs(ranking, names, out_dir, {**method, "scene": scene})
    return ranking


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--type", required=True, choices=["cls", "vop", "oracle", "random"])
    parser.add_argument("--gt", type=Path, required=True, help="gt.h5 of the scene (image order, overlap)")
    parser.add_argument("--features", type=Path, help="features-{backbone}.h5 (cls)")
    parser.add_argument("--embeddings", type=Path, help="embeddings-{encoder}.h5 (vop)")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--scene", default="")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--prefilter", type=int, default=20)
    parser.add_argument("--radius", default="auto", help="'auto' or a number in (0, 1]")
    parser.add_argument("--no-tfidf", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    setup_logging()
    method = {"type": args.type, "k": args.k, "seed": args.seed}
    if args.type == "vop":
        method.update(prefilter=args.prefilter, radius=args.radius if args.radius == "auto" else float(args.radius),
                      tfidf=not args.no_tfidf)
    run_method(method, args.scene, args.gt, args.out_dir, args.features, args.embeddings)


if __name__ == "__main__":
    main()
