"""Retrieval methods: for every query image, the k database images it overlaps most.

Methods are registered by type (`RETRIEVERS`); each named entry of the config's `methods:` picks one
with `type:` and is built into its conf (vop.conf: ClsConf, VopConf, OracleConf, RandomConf):

  cls     top-k by cosine of the global descriptors (vop.prefilter)
  vop     top-P candidates by global descriptor, then patch voting (vop.voting), top-k by votes
  oracle  top-k by ground-truth co-visibility overlap (the upper bound)
  random  seeded random images (the lower bound)
  verify  another method's top-N shortlist reranked by geometrically verified local matches (vop.verification)
  exhaustive  every other image (the reference reconstruction of vop.sfm; refused above max_images)
  sequential  the k images nearest in name order (COLMAP's sequential matching, for ordered captures)

Two modes, as in the paper: `register` (every image of the scene against all the others: ETH3D,
MegaDepth) and `retrieve` (the images matching a `queries` glob against the others: InLoc); see
vop.datasets.split_queries. Every method writes the same three files (DESIGN.md): pairs.txt, scores.csv
and retrieval.json.
"""

from __future__ import annotations

import csv
import json
import logging
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vop import io
from vop.conf import (
    ClsConf,
    ExhaustiveConf,
    MatchingConf,
    MethodConf,
    OracleConf,
    RandomConf,
    SequentialConf,
    VerifyConf,
    VopConf,
)
from vop.datasets import split_queries
from vop.prefilter import build_index, load_index, prefilter, save_index, search
from vop.utils import l2_normalize
from vop.voting import PatchStore, auto_radius, chance_threshold, subset, vote_scores

logger = logging.getLogger(__name__)

# Scores within this fraction of the query's best score are ties (broken by prefilter order): the
# batched and the straightforward computations sum in different orders and differ in the last bits.
TIE_RESOLUTION = 1e-6


@dataclass
class Ranking:
    """Per query (an index into the scene's names): database indices best first and their scores."""

    queries: np.ndarray
    db: np.ndarray  # (num_queries, k) indices into the scene's names
    score: np.ndarray  # (num_queries, k)
    prefilter_score: np.ndarray  # (num_queries, k), nan where the method has no prefilter
    info: dict = field(default_factory=dict)
    # vop: the predicted NSO of each pair from its votes' patches (vop.nso), nan past the reranked head
    enclosure: np.ndarray | None = None  # (num_queries, k)
    concentration: np.ndarray | None = None  # (num_queries, k)


@dataclass
class SceneIndex:
    """What the query shards of one scene share, built once by its own job (`build_scene_index`): the
    prefilter's index over the database's global descriptors and, for vop, the voting radius."""

    index: object  # faiss.Index
    radius: float | None = None
    info: dict = field(default_factory=dict)  # how the radius was found (radius_auto_median_cosine)


def _clamp(value: int, available: int, what: str, info: dict) -> int:
    """k or P larger than the database: use every database image and say so in retrieval.json."""
    if value > available:
        logger.warning("%s=%d > %d database images: using %d", what, value, available, available)
        info[f"{what}_clamped"] = available
        return available
    return value


def tie_key(scores: np.ndarray) -> np.ndarray:
    """Scores quantised relative to each row's largest magnitude, so near-equal scores compare equal."""
    scores = np.asarray(scores, np.float64)
    scale = np.abs(scores).max(axis=-1, keepdims=True)
    scale[scale == 0] = 1.0
    return np.round(scores / scale / TIE_RESOLUTION)


def rank_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Per row, the column indices of the k best scores; ties keep column order (stable sort)."""
    return np.argsort(-tie_key(scores), axis=1, kind="stable")[:, :k]




# ---------------------------------------------------------------------------------------------------
# Methods: (conf, arrays of the scene) -> Ranking


def retrieve_cls(conf: ClsConf, global_desc: np.ndarray, queries: np.ndarray | None = None,
                 database: np.ndarray | None = None, scene: str = "", device: str | None = None,
                 register: bool | None = None, shared: SceneIndex | None = None) -> Ranking:
    """`shared`: the scene's index, built once for all its query shards (the queries are one shard)."""
    queries, database, register = _sets(len(global_desc), queries, database, scene, register)
    info: dict = {}
    k = _clamp(conf.k, len(database) - register, "k", info)
    idx, sim = _candidates(conf, global_desc, queries, database, register, k, shared, device)
    return Ranking(queries, database[idx], sim, sim, info)


def retrieve_oracle(conf: OracleConf, overlap: np.ndarray | None, queries: np.ndarray | None = None,
                    database: np.ndarray | None = None, scene: str = "",
                    relevance: io.Relevance | None = None, num_images: int | None = None) -> Ranking:
    """Top-k by ground-truth overlap; without an overlap matrix, by the protocol's graded `relevance`
    (VPR positives, revisitop labels, GL3D pairs), the images without a grade after, in index order."""
    if overlap is None and relevance is not None:
        return _oracle_by_relevance(conf, relevance, int(num_images), queries, database, scene)
    if overlap is None:
        raise ValueError(
            f"scene {scene!r}: the oracle needs ground-truth overlap (3D points with tracks), "
            "and this dataset's model has none; drop `oracle` from the dataset's methods"
        )
    queries, database, register = _sets(len(overlap), queries, database, scene)
    info: dict = {}
    k = _clamp(conf.k, len(database) - register, "k", info)
    ov = np.asarray(overlap, np.float64)[np.ix_(queries, database)]
    if register:
        ov[np.arange(len(queries)), _self_rows(queries, database, True)] = -np.inf
    best = np.lexsort((np.broadcast_to(np.arange(len(database)), ov.shape), -ov), axis=1)[:, :k]
    return Ranking(queries, database[best], np.take_along_axis(ov, best, 1), np.full(best.shape, np.nan), info)


def _oracle_by_relevance(conf: OracleConf, relevance: io.Relevance, num_images: int, queries, database,
                         scene: str) -> Ranking:
    queries, database, register = _sets(num_images, queries, database, scene)
    info: dict = {}
    k = _clamp(conf.k, len(database) - register, "k", info)
    row_of = np.full(num_images, -1, np.int64)
    row_of[queries] = np.arange(len(queries))
    col_of = np.full(num_images, -1, np.int64)
    col_of[database] = np.arange(len(database))
    q, d = np.asarray(relevance.query, np.int64), np.asarray(relevance.db, np.int64)
    keep = (row_of[q] >= 0) & (col_of[d] >= 0) & (q != d)
    rows, cols, grade = row_of[q[keep]], col_of[d[keep]], np.asarray(relevance.grade, np.float64)[keep]
    order = np.lexsort((cols, -grade, rows))  # per query: grade descending, then database order
    rows, cols, grade = rows[order], cols[order], grade[order]
    starts = np.searchsorted(rows, np.arange(len(queries) + 1))
    db = np.empty((len(queries), k), np.int64)
    score = np.zeros((len(queries), k))
    graded = np.zeros(len(database), bool)
    for i in range(len(queries)):
        top = cols[starts[i]:starts[i + 1]][:k]
        graded[:] = False
        graded[cols[starts[i]:starts[i + 1]]] = True
        if register:
            graded[col_of[queries[i]]] = True  # never the query itself
        rest = np.flatnonzero(~graded)[:k - len(top)]
        db[i] = np.r_[top, rest]
        score[i, :len(top)] = grade[starts[i]:starts[i] + len(top)]
    return Ranking(queries, database[db], score, np.full(db.shape, np.nan), info)


def retrieve_random(conf: RandomConf, num_images: int, queries: np.ndarray | None = None,
                    database: np.ndarray | None = None, scene: str = "") -> Ranking:
    queries, database, register = _sets(num_images, queries, database, scene)
    info: dict = {}
    k = _clamp(conf.k, len(database) - register, "k", info)
    # One generator per (seed, scene): a scene's pairs do not depend on which other scenes exist.
    rng = np.random.default_rng([conf.seed, zlib.crc32(scene.encode())])
    db = np.stack([rng.permutation(database[database != q] if register else database)[:k] for q in queries])
    return Ranking(queries, db, np.zeros(db.shape), np.full(db.shape, np.nan), info)


def retrieve_exhaustive(conf: ExhaustiveConf, num_images: int, queries: np.ndarray | None = None,
                        database: np.ndarray | None = None, scene: str = "") -> Ranking:
    """Every database image for every query, in index order (score 0): all N(N-1)/2 unordered pairs."""
    queries, database, register = _sets(num_images, queries, database, scene)
    if conf.k != 0:
        raise ValueError(f"exhaustive: k={conf.k}, but exhaustive pairs every image with all the others; leave "
                         "`k` out of the method's config (a depth is what a retrieval method has)")
    if num_images > conf.max_images:
        raise ValueError(f"scene {scene!r}: exhaustive pairs of {num_images} images are "
                         f"{num_images * (num_images - 1) // 2} pairs to match, above max_images={conf.max_images}; "
                         "reconstruct from a retrieval method's pairs (vop, cls, sequential) instead (drop exhaustive "
                         "from `sfm.baselines`), or raise the method's max_images knowingly")
    if register:
        others = np.broadcast_to(database, (len(queries), len(database)))
        db = others[others != queries[:, None]].reshape(len(queries), -1)
    else:
        db = np.broadcast_to(database, (len(queries), len(database))).copy()
    return Ranking(queries, db, np.zeros(db.shape), np.full(db.shape, np.nan), {"k": int(db.shape[1])})


def sequential_order(names: Sequence[str]) -> np.ndarray:
    """The position of each image in name order (the capture order of video frames or numbered photos)."""
    order = np.argsort(np.asarray(names, dtype=object), kind="stable")
    position = np.empty(len(names), np.int64)
    position[order] = np.arange(len(names))
    return position


def retrieve_sequential(conf: SequentialConf, names: Sequence[str], queries: np.ndarray | None = None,
                        database: np.ndarray | None = None, scene: str = "") -> Ranking:
    """The k database images nearest each query in name order: i+1, i-1, i+2, i-2, ... (score: minus the
    distance in that order). Its unordered pairs are those of COLMAP's sequential matcher with overlap ~k/2."""
    queries, database, register = _sets(len(names), queries, database, scene)
    info: dict = {}
    k = _clamp(conf.k, len(database) - register, "k", info)
    position = sequential_order(names)
    offset = position[database][None, :] - position[queries][:, None]  # (Q, D) signed distance in name order
    distance = np.abs(offset).astype(np.float64)
    if register:
        distance[offset == 0] = np.inf  # the query itself
    # nearest first; at equal distance the later image (i+1 before i-1)
    best = np.lexsort((offset < 0, distance), axis=1)[:, :k]
    score = -np.take_along_axis(distance, best, 1)
    return Ranking(queries, database[best], score, np.full(best.shape, np.nan), info)


def retrieve_vop(conf: VopConf, global_desc: np.ndarray, patches: PatchStore | np.ndarray,
                 queries: np.ndarray | None = None, database: np.ndarray | None = None, scene: str = "",
                 device: str | None = None, extend: bool = False, register: bool | None = None,
                 shared: SceneIndex | None = None) -> Ranking:
    """VOP on one scene. `patches` covers all the scene's images (a PatchStore or an (N,M,D) array).

    `shared`: the scene's index and radius, computed once for all its query shards (the queries are one).
    With `extend`, k may exceed the prefilter: the P candidates reranked by votes come first, then the
    next k - P images in prefilter order (score NaN), as DELG's reranking continues its global ranking;
    that is how a protocol that scores deep lists or the whole ranking (GL3D, revisitop) gets them.
    """
    queries, database, register = _sets(len(global_desc), queries, database, scene, register)
    info: dict = {"mode": "register" if register else "retrieve"}
    num_candidates = _clamp(conf.prefilter, len(database) - register, "prefilter", info)
    k = _clamp(conf.k, len(database) - register, "k", info)
    if k > num_candidates and not extend:
        raise ValueError(f"vop: k={k} exceeds prefilter={num_candidates}: set prefilter >= k in the method's config")
    if not isinstance(patches, PatchStore):
        patches = PatchStore.from_array(patches, chunk_size=conf.chunk_images, device=device)
    radius, radius_info = (shared.radius, shared.info) if shared is not None else vop_radius(conf, patches, database)
    info.update(radius_info)
    tau = 1.0 - radius
    info.update(radius=radius, tau=tau)

    cand, pre_sim = _candidates(conf, global_desc, queries, database, register, max(k, num_candidates), shared,
                                device)
    tail, tail_sim = cand[:, num_candidates:k], pre_sim[:, num_candidates:k]  # beyond the reranked head
    cand, pre_sim = cand[:, :num_candidates], pre_sim[:, :num_candidates]
    if tail.shape[1]:
        info["ranked_in_prefilter_order_after"] = num_candidates
    if register:
        votes, enclosure, concentration = vote_scores(patches, patches, cand, tau, conf.tfidf, shared=True,
                                                      query_ids=queries, coverage=True,
                                                      coverage_tau=info.get("nso_tau"))
    else:
        votes, enclosure, concentration = vote_scores(subset(patches, queries), subset(patches, database), cand,
                                                      tau, conf.tfidf, coverage=True, coverage_tau=info.get("nso_tau"))
    # Ties, and queries whose candidates got no vote at all, fall back to prefilter order (the slot order).
    best = rank_rows(votes, min(k, num_candidates))
    no_votes = int((votes <= 0).all(axis=1).sum())
    info["queries_without_votes"] = no_votes
    if no_votes:
        logger.warning("%d queries got no vote within radius %.2f: their pairs follow prefilter order",
                       no_votes, radius)
    db = np.concatenate([np.take_along_axis(cand, best, 1), tail], axis=1)
    score = np.concatenate([np.take_along_axis(votes, best, 1), np.full(tail.shape, np.nan)], axis=1)
    pre = np.concatenate([np.take_along_axis(pre_sim, best, 1), tail_sim], axis=1)
    enc, con = (np.concatenate([np.take_along_axis(x, best, 1), np.full(tail.shape, np.nan)], axis=1)
                for x in (enclosure, concentration))
    return Ranking(queries, database[db], score, pre, info, enc, con)


def vop_radius(conf: VopConf, patches: PatchStore, database: np.ndarray) -> tuple[float, dict]:
    """The voting radius (the paper's automatic one from the database's patches where `radius: auto`)."""
    radius, info = conf.radius, {}
    if radius == "auto":
        radius, info["radius_auto_median_cosine"] = auto_radius(subset(patches, database), seed=conf.seed)
    radius = float(radius)
    if not 0 < radius <= 1:
        raise ValueError(f"vop: radius {radius} is outside (0, 1]: patches vote when their cosine exceeds 1 - radius")
    if conf.nso_chance is not None:  # the predicted NSO's partner threshold (vop.nso), at least the voting one
        info["nso_tau"] = max(1.0 - radius, chance_threshold(subset(patches, database), conf.nso_chance, conf.seed))
    return radius, info


def _candidates(conf, global_desc, queries, database, register, num, shared, device):
    """The prefilter's top `num` database positions of each query (in the shared index, or one built now)."""
    exclude = _self_rows(queries, database, register)
    if shared is not None:
        return search(shared.index, global_desc[queries], num, exclude)
    return prefilter(global_desc[queries], global_desc[database], num, exclude, conf.ivf_min_images, conf.ivf_nprobe,
                     device)


def _sets(num_images, queries, database, scene, register=None):
    """Query and database indices (default: register mode over the scene) and whether it is register mode
    (the queries are the database's images; `register` says so for a shard of them)."""
    if queries is None and database is None:
        queries, database = split_queries(range(num_images), "register", scene=scene)
    queries, database = np.asarray(queries), np.asarray(database)
    if register is None:
        register = len(queries) == len(database) and bool(np.all(queries == database))
    if len(database) - register < 1:
        raise ValueError(f"scene {scene!r}: no database image to retrieve from")
    return queries, database, int(register)


def _self_rows(queries, database, register):
    """In register mode, each query's own row in the database (excluded from its candidates); the database
    is the whole scene, so a query's row is its index."""
    return np.searchsorted(database, queries) if register else None


SCORES_COLUMNS = ["query", "db", "rank", "score", "prefilter_score"]
NSO_COLUMNS = ["enclosure", "concentration"]  # scores.csv of a vop method: its predicted NSO (vop.nso)


def write_outputs(ranking: Ranking, names: Sequence[str], out_dir: str | Path, params: dict) -> None:
    """pairs.txt, scores.csv and retrieval.json in `out_dir`; query order as in `names`. A ranking with the
    predicted NSO of its pairs (vop) adds the columns enclosure and concentration to scores.csv."""
    out_dir = Path(out_dir)
    pairs, rows = [], []
    nso = ranking.enclosure is not None
    for i, (q, db, score, pre) in enumerate(zip(ranking.queries, ranking.db, ranking.score, ranking.prefilter_score)):
        for rank, (d, s, p) in enumerate(zip(db, score, pre)):
            pairs.append((names[q], names[d]))
            row = (names[q], names[d], rank, f"{float(s):.6g}", f"{float(p):.6g}")
            if nso:
                row += (f"{float(ranking.enclosure[i, rank]):.6g}", f"{float(ranking.concentration[i, rank]):.6g}")
            rows.append(row)
    io.write_pairs(out_dir / "pairs.txt", pairs)
    io.write_csv(out_dir / "scores.csv", SCORES_COLUMNS + NSO_COLUMNS * nso, rows)
    io.write_json(out_dir / "retrieval.json", {**params, **ranking.info, "num_images": len(names),
                                               "num_queries": len(ranking.queries)})


def read_ranking(scores_csv: str | Path, names: Sequence[str]) -> Ranking:
    """The Ranking a method wrote into scores.csv (`write_outputs`), indices into `names`."""
    index = {n: i for i, n in enumerate(names)}
    ranks: dict[str, list[tuple[int, int, float, float]]] = {}
    with open(scores_csv, newline="") as f:
        for row in csv.DictReader(f):
            for name in (row["query"], row["db"]):
                if name not in index:
                    raise ValueError(f"{scores_csv}: image {name!r} is not in the scene's gt.h5; the ranking is "
                                     "from another scene or stale: rerun its rule")
            ranks.setdefault(row["query"], []).append((int(row["rank"]), index[row["db"]], float(row["score"]),
                                                       float(row["prefilter_score"])))
    depth = {len(r) for r in ranks.values()}
    if len(depth) > 1:
        raise ValueError(f"{scores_csv}: queries have {sorted(depth)} ranks; expected the same number for each")
    table = np.array([[entry[1:] for entry in sorted(r)] for r in ranks.values()], np.float64)
    table = table.reshape(len(ranks), -1, 3)
    return Ranking(np.array([index[q] for q in ranks], np.int64), table[..., 0].astype(np.int64), table[..., 1],
                   table[..., 2])


# ---------------------------------------------------------------------------------------------------
# The registry and the rule's entry point


@dataclass
class SceneFiles:
    """The files of one scene a method may read (which one it reads: its conf's `needs`), and how."""

    gt: io.GroundTruth
    features_h5: Path | None = None
    embeddings_h5: Path | None = None
    # verify: its first stage's scores.csv, the scene's matches store (written with `matching`), local features
    first_stage_scores: Path | None = None
    matches_h5: Path | None = None
    local_features_h5: Path | None = None
    matching: MatchingConf = field(default_factory=MatchingConf)
    workers: int = 1  # processes a method may use (verify's RANSAC)
    extend: bool = False  # lists deeper than a vop prefilter continue in prefilter order (retrieve_vop)


def _run_cls(conf: ClsConf, files: SceneFiles, queries, database, scene, device) -> Ranking:
    names = files.gt.names
    glob = io.read_stacked(files.features_h5, names, "global_descriptor", np.float32)
    return retrieve_cls(conf, glob, queries, database, scene, device)


def _run_vop(conf: VopConf, files: SceneFiles, queries, database, scene, device) -> Ranking:
    names = files.gt.names
    glob = io.read_stacked(files.embeddings_h5, names, "global_descriptor", np.float32)
    patches = PatchStore.from_h5(files.embeddings_h5, names, device=device, chunk_size=conf.chunk_images)
    return retrieve_vop(conf, glob, patches, queries, database, scene, device, extend=files.extend)


def _run_oracle(conf: OracleConf, files: SceneFiles, queries, database, scene, device) -> Ranking:
    return retrieve_oracle(conf, files.gt.overlap, queries, database, scene, files.gt.relevance,
                           len(files.gt.names))


def _run_random(conf: RandomConf, files: SceneFiles, queries, database, scene, device) -> Ranking:
    return retrieve_random(conf, len(files.gt.names), queries, database, scene)


def _run_exhaustive(conf: ExhaustiveConf, files: SceneFiles, queries, database, scene, device) -> Ranking:
    return retrieve_exhaustive(conf, len(files.gt.names), queries, database, scene)


def _run_sequential(conf: SequentialConf, files: SceneFiles, queries, database, scene, device) -> Ranking:
    return retrieve_sequential(conf, files.gt.names, queries, database, scene)


def _run_verify(conf: VerifyConf, files: SceneFiles, queries, database, scene, device) -> Ranking:
    # Reads the files of later stages (the matches store, local features): imported here.
    from vop.verification import verify_ranking

    for what in ("first_stage_scores", "matches_h5", "local_features_h5"):
        if getattr(files, what) is None:
            raise ValueError(f"verify: the scene's {what} is needed (its first stage's scores.csv, the matches "
                             "store and the local features)")
    first = read_ranking(files.first_stage_scores, files.gt.names)
    if not np.array_equal(first.queries, queries) or not np.isin(first.db, database).all():
        raise ValueError(f"{files.first_stage_scores}: ranks other queries or database images than this mode's; "
                         "the first stage is stale: rerun its rule (first_stage)")
    return verify_ranking(conf, first, files.gt.names, files.matches_h5, files.local_features_h5, files.matching,
                          files.workers)


# type -> (conf, scene files, query ids, database ids, scene name, device) -> Ranking
RETRIEVERS: dict[str, Callable[..., Ranking]] = {"cls": _run_cls, "vop": _run_vop, "oracle": _run_oracle,
                                                 "random": _run_random, "verify": _run_verify,
                                                 "exhaustive": _run_exhaustive, "sequential": _run_sequential}


def _path(value):
    return Path(value) if value else None


@dataclass
class MethodRun:
    """One method on one scene: the conf with the dataset's depth applied, the scene's files, its queries and
    database, and the parameters retrieval.json records."""

    conf: MethodConf
    files: SceneFiles
    query_ids: np.ndarray
    db_ids: np.ndarray
    params: dict

    @classmethod
    def open(cls, conf: MethodConf, scene: str, gt_h5: str | Path, features_h5: str | Path | None = None,
             embeddings_h5: str | Path | None = None, mode: str = "register", queries: str | None = None,
             info: dict | None = None, k: int | str | None = None, first_stage_scores: str | Path | None = None,
             matches_h5: str | Path | None = None, local_features_h5: str | Path | None = None,
             matching: MatchingConf = MatchingConf(), num_workers: int = 1) -> MethodRun:
        gt = io.read_gt(gt_h5)
        query_ids, db_ids = split_queries(gt.names, mode, queries, scene)
        if k is not None:
            conf = conf.replace(k=len(db_ids) - (mode == "register") if k == "all" else int(k))
        files = SceneFiles(gt, _path(features_h5), _path(embeddings_h5), _path(first_stage_scores),
                           _path(matches_h5), _path(local_features_h5), matching, num_workers, extend=k is not None)
        params = {**conf.to_dict(), **(info or {}), "scene": scene, "mode": mode}
        if k is not None:
            params["dataset_k"] = k
        if mode == "retrieve":
            params["queries"] = queries
        return cls(conf, files, query_ids, db_ids, params)

    @property
    def scene(self) -> str:
        return self.params["scene"]

    @property
    def register(self) -> bool:
        return self.params["mode"] == "register"

    def rank(self, device: str | None = None) -> Ranking:
        return RETRIEVERS[self.conf.type](self.conf, self.files, self.query_ids, self.db_ids, self.scene, device)

    def write(self, ranking: Ranking, out_dir: str | Path) -> None:
        write_outputs(ranking, self.files.gt.names, out_dir, self.params)

    # --- the same, in query shards (vop.shards plans them; the workflow runs one job per shard)

    def global_descriptors(self) -> np.ndarray:
        h5 = self.files.embeddings_h5 if self.conf.needs == "embeddings" else self.files.features_h5
        return io.read_stacked(h5, self.files.gt.names, "global_descriptor", np.float32)

    def patches(self, device: str | None = None) -> PatchStore:
        return PatchStore.from_h5(self.files.embeddings_h5, self.files.gt.names, device=device,
                                  chunk_size=self.conf.chunk_images)

    def build_index(self, device: str | None = None) -> SceneIndex:
        """The index over the database's global descriptors, and the radius (vop), for every shard."""
        if self.conf.needs not in ("features", "embeddings"):
            raise ValueError(f"method type {self.conf.type!r} ranks a scene in one job: it has no shards")
        glob = l2_normalize(self.global_descriptors()[self.db_ids])
        index = build_index(glob, self.conf.ivf_min_images, self.conf.ivf_nprobe, "cpu")  # written to disk
        radius, info = (None, {})
        if self.conf.type == "vop":
            radius, info = vop_radius(self.conf, self.patches(device), self.db_ids)
        return SceneIndex(index, radius, info)

    def rank_shard(self, rows: tuple[int, int], shared: SceneIndex, device: str | None = None) -> Ranking:
        """The ranking of queries query_ids[rows[0]:rows[1]], exactly as their rows of `rank()`."""
        queries = self.query_ids[rows[0]:rows[1]]
        glob = self.global_descriptors()
        common = {"queries": queries, "database": self.db_ids, "scene": self.scene, "device": device,
                  "register": self.register, "shared": shared}
        if self.conf.type == "cls":
            return retrieve_cls(self.conf, glob, **common)
        return retrieve_vop(self.conf, glob, self.patches(device), extend=self.files.extend, **common)


def save_scene_index(shared: SceneIndex, index_path: str | Path, info_path: str | Path) -> None:
    save_index(shared.index, index_path)
    io.write_json(info_path, {"radius": shared.radius, "info": shared.info, "images": int(shared.index.ntotal)})


def load_scene_index(index_path: str | Path, info_path: str | Path, device: str | None = None) -> SceneIndex:
    info = json.loads(Path(info_path).read_text())
    return SceneIndex(load_index(index_path, device), info["radius"], info["info"])


def save_shard(ranking: Ranking, path: str | Path) -> None:
    """One shard's rows of a ranking (npz) and its info."""
    nso = {} if ranking.enclosure is None else {"enclosure": ranking.enclosure, "concentration": ranking.concentration}
    with io.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, queries=ranking.queries, db=ranking.db, score=ranking.score,
                 prefilter_score=ranking.prefilter_score, info=json.dumps(ranking.info, sort_keys=True), **nso)


def merge_shards(paths: Sequence[str | Path]) -> Ranking:
    """The ranking of a scene from its shards (in query order): what ranking it in one job gives."""
    parts = []
    for path in paths:
        with np.load(path, allow_pickle=False) as data:
            parts.append({key: data[key] for key in data.files})
    infos = [json.loads(str(p["info"])) for p in parts]
    info = dict(infos[0])
    if "queries_without_votes" in info:  # the only count that adds up over shards
        info["queries_without_votes"] = sum(i["queries_without_votes"] for i in infos)
    nso = [np.concatenate([p[key] for p in parts]) if all(key in p for p in parts) else None
           for key in NSO_COLUMNS]
    return Ranking(*(np.concatenate([p[key] for p in parts]) for key in ("queries", "db", "score",
                                                                          "prefilter_score")), info, *nso)


def run_method(conf: MethodConf, scene: str, gt_h5: str | Path, out_dir: str | Path,
               features_h5: str | Path | None = None, embeddings_h5: str | Path | None = None,
               mode: str = "register", queries: str | None = None, device: str | None = None,
               info: dict | None = None, k: int | str | None = None, first_stage_scores: str | Path | None = None,
               matches_h5: str | Path | None = None, local_features_h5: str | Path | None = None,
               matching: MatchingConf = MatchingConf(), num_workers: int = 1) -> Ranking:
    """Run one configured method on one scene and write its outputs; `info` goes into retrieval.json.

    `k` is the dataset's depth, which replaces the method's own: a number, or "all" (the whole database,
    revisitop); then a vop list deeper than its prefilter continues in prefilter order.
    """
    run = MethodRun.open(conf, scene, gt_h5, features_h5, embeddings_h5, mode, queries, info, k,
                         first_stage_scores, matches_h5, local_features_h5, matching, num_workers)
    ranking = run.rank(device)
    run.write(ranking, out_dir)
    return ranking


def run_first_stage(conf: VerifyConf, first: MethodConf, scene: str, gt_h5: str | Path, out_dir: str | Path,
                    shortlist_txt: str | Path, features_h5: str | Path | None = None,
                    embeddings_h5: str | Path | None = None, mode: str = "register", queries: str | None = None,
                    device: str | None = None, info: dict | None = None) -> Ranking:
    """The first stage of a verify method: `first` retrieving max(k, shortlist) per query, written to
    `out_dir` (pairs.txt, scores.csv, retrieval.json), and each query's top `shortlist` pairs, the pairs to
    verify, to `shortlist_txt`."""
    if first.type == "verify":
        raise ValueError("verify: its first_stage must be another kind of method, not verify")
    ranking = run_method(first.replace(k=max(conf.k, conf.shortlist)), scene, gt_h5, out_dir, features_h5,
                         embeddings_h5, mode, queries, device, info)
    names = io.read_names(gt_h5)
    n = min(conf.shortlist, ranking.db.shape[1])
    shortlist = [(names[q], names[d]) for q, dbs in zip(ranking.queries, ranking.db) for d in dbs[:n]]
    io.write_pairs(shortlist_txt, shortlist)
    return ranking
