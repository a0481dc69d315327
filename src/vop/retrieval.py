"""Retrieval methods: for every query image, the k database images it overlaps most.

Methods (one named entry each in config/config.yaml, `type:` picks the function):
  cls     top-k by cosine of the global descriptors (faiss)
  vop     top-P candidates by global descriptor (faiss), then patch voting (radius search + TF-IDF),
          top-k by votes
  oracle  top-k by ground-truth co-visibility overlap (the upper bound)
  random  seeded random images (the lower bound)

Two modes, as in the paper: `register` (every image of the scene against all the others: ETH3D,
MegaDepth) and `retrieve` (the images matching a `queries` glob against the others: InLoc).

Voting is batched: the similarities of a left image's patches to the patches of several right images
are one matrix product, the radius mask and the reductions run on the whole batch, and in `register`
mode the pair (a,b) is computed once and serves both a's vote for b and b's vote for a. Patch
descriptors are read from the h5 a chunk of images at a time, so memory does not grow with N^2 nor
hold the whole scene in float32.

Every method writes the same three files (DESIGN.md): pairs.txt, scores.csv and retrieval.json.
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import logging
import math
import zlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import h5py
import numpy as np
import torch

from . import io
from .utils import l2_normalize, setup_logging

logger = logging.getLogger(__name__)

PATCH_SAMPLES_FOR_RADIUS = 200_000
IMAGES_FOR_RADIUS = 1000
IVF_MIN_IMAGES = 100_000
IVF_NPROBE = 32
# Extra neighbours fetched by the prefilter so that equal similarities at the cut are ordered by index.
TIE_MARGIN = 8
# Scores within this fraction of the query's best score are ties (broken by prefilter order): the
# batched and the straightforward computations sum in different orders and differ in the last bits.
TIE_RESOLUTION = 1e-6
# A hit counts as exactly HIT in a sum: HIT = 2^-100 keeps sums of up to 2^24 hits exact in float32,
# and one clamp + one sum is cheaper than comparing, casting and summing booleans.
HIT = 2.0**-100


@dataclass
class Ranking:
    """Per query (an index into the scene's names): database indices best first and their scores."""

    queries: np.ndarray
    db: np.ndarray  # (num_queries, k) indices into the scene's names
    score: np.ndarray  # (num_queries, k)
    prefilter_score: np.ndarray  # (num_queries, k), nan where the method has no prefilter
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


def split_queries(names: Sequence[str], mode: str = "register", queries: str | None = None,
                  scene: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(query indices, database indices) of a scene.

    register: every image is a query and the database is the whole scene (the query itself is excluded
    when ranking). retrieve: queries are the names matching the glob `queries`, the database the rest.
    """
    num = len(names)
    _check_scene(num, scene)
    everything = np.arange(num)
    if mode == "register":
        return everything, everything
    if mode != "retrieve":
        raise ValueError(f"unknown mode {mode!r}: expected register or retrieve")
    if not queries:
        raise ValueError("mode retrieve needs the dataset's `queries` glob (e.g. 'query/*') in config/config.yaml")
    is_query = np.array([fnmatch.fnmatchcase(n, queries) for n in names])
    if not is_query.any() or is_query.all():
        raise ValueError(
            f"scene {scene!r}: the queries glob {queries!r} matches {int(is_query.sum())} of {num} images; "
            "it must match some images (the queries) and not all (the database): fix `queries` in config/config.yaml"
        )
    return everything[is_query], everything[~is_query]


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
# Prefilter: nearest global descriptors with faiss


def build_index(vectors: np.ndarray, ivf_min_images: int = IVF_MIN_IMAGES, nprobe: int = IVF_NPROBE,
                device: str | None = None, seed: int = 0) -> faiss.Index:
    """Inner-product index of L2-normalised vectors: exact below `ivf_min_images`, IVF above.

    On CUDA with a faiss GPU build, the index moves to the GPU.
    """
    vectors = np.ascontiguousarray(vectors, np.float32)
    num, dim = vectors.shape
    if num < ivf_min_images:
        index = faiss.IndexFlatIP(dim)
    else:
        nlist = int(np.clip(4 * math.sqrt(num), 1, num // 39 or 1))  # faiss wants >= 39 points per list
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = vectors[rng.choice(num, min(num, 256 * nlist), replace=False)]
        index.train(sample)
        index.nprobe = min(nprobe, nlist)  # faiss's wrapper keeps `quantizer` alive with the index
    index.add(vectors)
    if _device(device).type == "cuda" and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        return faiss.index_cpu_to_gpu(_gpu_resources(), _device(device).index or 0, index)
    return index


@functools.cache
def _gpu_resources():
    """One set of faiss GPU resources (temporary memory, streams) per process."""
    return faiss.StandardGpuResources()


def prefilter(query_desc: np.ndarray, db_desc: np.ndarray, num: int, exclude: np.ndarray | None = None,
              ivf_min_images: int = IVF_MIN_IMAGES, nprobe: int = IVF_NPROBE,
              device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The `num` database rows most similar to each query row: (indices, cosine), best first.

    `exclude[i]` is a database row never returned for query i (the query itself in register mode).
    Equal similarities are ordered by database index.
    """
    query_desc = l2_normalize(np.asarray(query_desc, np.float32))
    db_desc = l2_normalize(np.asarray(db_desc, np.float32))
    index = build_index(db_desc, ivf_min_images, nprobe, device)
    logger.info("prefilter: %s index over %d images", type(index).__name__, len(db_desc))
    fetch = min(len(db_desc), num + TIE_MARGIN + (exclude is not None))
    sim, idx = index.search(query_desc, fetch)
    sim = sim.astype(np.float64)
    if exclude is not None:
        sim[idx == exclude[:, None]] = -np.inf  # sorted last, then cut
    sim[idx < 0] = -np.inf  # IVF lists can run short
    # Sort by (similarity rounded to float32 resolution, index) so faiss's order among ties is irrelevant.
    order = np.lexsort((idx, -np.round(sim, 6)), axis=1)
    idx = np.take_along_axis(idx, order, 1)[:, :num]
    sim = np.take_along_axis(sim, order, 1)[:, :num]
    if not np.isfinite(sim).all():
        raise RuntimeError("the prefilter found fewer candidates than asked; raise `ivf_nprobe` for this method")
    return idx, sim


# ---------------------------------------------------------------------------------------------------
# Patch descriptors, a chunk of images at a time


class PatchStore:
    """L2-normalised float32 patch descriptors of a list of images, loaded `chunk_size` images at a time.

    `read(ids)` returns the raw descriptors (len(ids), M, D) of positions `ids` in the list. At most
    `cached_chunks` chunks are held; retrieval visits chunk pairs in an order that rarely reloads.
    """

    def __init__(self, read: Callable[[np.ndarray], np.ndarray], num_images: int, chunk_size: int = 4096,
                 device: str | None = None, cached_chunks: int = 2):
        self.read = read
        self.num_images = num_images
        self.chunk_size = max(1, int(chunk_size))
        self.device = _device(device)
        self.cached_chunks = cached_chunks
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self.chunk_loads = 0

    @classmethod
    def from_array(cls, patches: np.ndarray, **kwargs) -> PatchStore:
        patches = np.asarray(patches)
        return cls(lambda ids: patches[ids], len(patches), **kwargs)

    @classmethod
    def from_h5(cls, path: str | Path, names: Sequence[str], **kwargs) -> PatchStore:
        path = Path(path)
        with h5py.File(path, "r") as f:
            io.require_images(path, f, names)

        def read(ids: np.ndarray) -> np.ndarray:
            with h5py.File(path, "r") as f:
                first = f[names[ids[0]]]["patch_descriptors"]
                # HDF5 converts the stored float16 while reading: no float16 copy of the chunk is held.
                out = np.empty((len(ids), *first.shape), np.float32)
                for row, i in enumerate(ids):
                    f[names[i]]["patch_descriptors"].read_direct(out, dest_sel=np.s_[row])
            return out

        return cls(read, len(names), **kwargs)

    @property
    def num_chunks(self) -> int:
        return -(-self.num_images // self.chunk_size)

    def chunk(self, c: int) -> torch.Tensor:
        if c in self._cache:
            self._cache.move_to_end(c)
            return self._cache[c]
        while len(self._cache) >= self.cached_chunks:
            self._cache.popitem(last=False)
        ids = np.arange(c * self.chunk_size, min((c + 1) * self.chunk_size, self.num_images))
        self._cache[c] = self._load(ids, self.device)
        self.chunk_loads += 1
        return self._cache[c]

    def _load(self, ids: np.ndarray, device: torch.device) -> torch.Tensor:
        patches = torch.from_numpy(np.ascontiguousarray(self.read(ids), np.float32)).to(device)
        return patches.div_(patches.norm(dim=-1, keepdim=True).clamp_(min=1e-12))  # in place: one copy held

    def sample(self, ids: np.ndarray) -> np.ndarray:
        """Normalised descriptors of arbitrary positions (a small sample), as numpy."""
        return self._load(np.sort(np.asarray(ids)), torch.device("cpu")).numpy()


def auto_radius(store: PatchStore, seed: int = 0, num_samples: int = PATCH_SAMPLES_FOR_RADIUS,
                max_images: int = IMAGES_FOR_RADIUS) -> tuple[float, float]:
    """The paper's automatic radius: median cosine of patch pairs from different images, rounded to 0.1.

    Pairs are drawn from at most `max_images` images (a seeded subset of a larger scene). Returns
    (radius, median); the radius is kept in [0.1, 1.0] so that tau = 1 - radius stays below 1.
    """
    rng = np.random.default_rng(seed)
    ids = np.arange(store.num_images)
    if len(ids) > max_images:
        ids = np.sort(rng.choice(ids, max_images, replace=False))
    patches = store.sample(ids)
    n, m, _ = patches.shape
    a = rng.integers(0, n, num_samples)
    b = (a + rng.integers(1, n, num_samples)) % n  # a different image
    pa = patches[a, rng.integers(0, m, num_samples)]
    pb = patches[b, rng.integers(0, m, num_samples)]
    median = float(np.median(np.sum(pa * pb, axis=1)))
    radius = float(np.clip(np.round(median, 1), 0.1, 1.0))
    return radius, median


# ---------------------------------------------------------------------------------------------------
# Batched voting


@dataclass
class _Blocks:
    """Similarity blocks to compute: left image a against right image b, and where their votes go.

    slot_ab[i] >= 0: a (a query) has b among its candidates at that slot; the block's row reductions
    are a's votes for b. slot_ba[i] >= 0: b (a query) has a at that slot; the column reductions are
    b's votes for a (register mode, where one block serves both directions).
    """

    a: np.ndarray
    b: np.ndarray
    slot_ab: np.ndarray
    slot_ba: np.ndarray


def _blocks(candidates: np.ndarray, shared: bool) -> _Blocks:
    num_queries, num_cand = candidates.shape
    query = np.repeat(np.arange(num_queries), num_cand)
    cand = candidates.ravel()
    slot = np.tile(np.arange(num_cand), num_queries)
    if not shared:
        return _Blocks(query, cand, slot, np.full_like(slot, -1))
    a, b = np.minimum(query, cand), np.maximum(query, cand)
    pair_id, first, inverse = np.unique(a * np.int64(num_queries) + b, return_index=True, return_inverse=True)
    slot_ab = np.full(len(pair_id), -1)
    slot_ba = np.full(len(pair_id), -1)
    forward = query < cand
    slot_ab[inverse[forward]] = slot[forward]
    slot_ba[inverse[~forward]] = slot[~forward]
    return _Blocks(a[first], b[first], slot_ab, slot_ba)


def vote_scores(left: PatchStore, right: PatchStore, candidates: np.ndarray, tau: float, tfidf: bool = True,
                shared: bool = False, blocks_per_batch: int | None = None) -> np.ndarray:
    """VOP votes (num_queries, P) of every query (a left image) for its P candidates (right images).

    With s(p,r) the cosine of query patch p and candidate patch r,
      score(q,c) = sum_p w(p) * sum_{r in c, s(p,r) > tau} s(p,r),
      w(p) = n_p / n_d * max(0, log(P / m_p)) with TF-IDF (1 without; 0 when m_p = 0),
    n_p = candidate patches within the radius of p, m_p = candidates holding at least one, n_d = M.
    `shared` (register mode, left is right): the block of (a,b) also gives b's votes for a.
    """
    if shared and left is not right:
        raise ValueError("shared blocks need the same store on both sides (register mode)")
    num_queries, num_cand = candidates.shape
    dev = left.device
    if blocks_per_batch is None:
        blocks_per_batch = 512 if dev.type == "cuda" else 8
    num_patches = left.chunk(0).shape[1]
    # Per (query, slot, query patch): summed similarity within the radius and number of hits.
    sums = torch.zeros(num_queries, num_cand, num_patches)
    hits = torch.zeros(num_queries, num_cand, num_patches)

    blocks = _blocks(candidates, shared)
    a_chunk, b_chunk = blocks.a // left.chunk_size, blocks.b // right.chunk_size
    order = np.lexsort((blocks.b, blocks.a, b_chunk, a_chunk))
    tiles = np.flatnonzero(np.diff(a_chunk[order] * right.num_chunks + b_chunk[order], prepend=-1))
    # On CPU, batches run in parallel on single-threaded torch: one small parallel op after another
    # loses most of its time in thread barriers, more so on a busy machine.
    workers = torch.get_num_threads() if dev.type == "cpu" else 1
    with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        for start, stop in zip(tiles, [*tiles[1:], len(order)]):
            sel = order[start:stop]
            ca, cb = int(a_chunk[sel[0]]), int(b_chunk[sel[0]])
            left_chunk, right_chunk = left.chunk(ca), right.chunk(cb)
            tile = (left_chunk, right_chunk, blocks.a[sel] - ca * left.chunk_size,
                    blocks.b[sel] - cb * right.chunk_size, blocks.a[sel], blocks.b[sel], blocks.slot_ab[sel],
                    blocks.slot_ba[sel], tau, sums, hits)
            jobs = [pool.submit(_vote_batch, *tile, starts, counts)
                    for starts, counts in _batches(tile[2], blocks_per_batch)]
            for job in jobs:
                job.result()
            del tile, jobs, left_chunk, right_chunk  # let the cache free a chunk before the next loads

    if tfidf:
        n_p = hits.sum(1)  # (num_queries, M)
        m_p = (hits > 0).sum(1).float()
        idf = torch.log(num_cand / m_p.clamp(min=1)).clamp(min=0)
        weight = torch.where(m_p > 0, n_p / num_patches * idf, torch.zeros_like(n_p))
    else:
        weight = torch.ones(num_queries, num_patches)
    return torch.einsum("qcp,qp->qc", sums, weight).numpy()


def _batches(a_local: np.ndarray, blocks_per_batch: int):
    """(starts, counts) of the left-image groups of each batch; blocks are sorted by left image."""
    starts = np.flatnonzero(np.diff(a_local, prepend=-1))
    counts = np.diff([*starts, len(a_local)])
    # Left images with most partners first, so that a batch pads its shorter groups little.
    by_size = np.argsort(-counts, kind="stable")
    first = 0
    for end in range(1, len(by_size) + 1):
        if end == len(by_size) or (end + 1 - first) * counts[by_size[first]] > blocks_per_batch:
            yield starts[by_size[first:end]], counts[by_size[first:end]]
            first = end


def _vote_batch(left_chunk, right_chunk, a_local, b_local, a, b, slot_ab, slot_ba, tau, sums, hits, starts,
                counts):
    """One matrix product for L left images against their (at most W) right partners, then the votes."""
    width = int(counts.max())
    # (L, W) positions into the tile's block arrays; padding repeats a group's last block and is dropped.
    pos = np.minimum(starts[:, None] + np.arange(width), (starts + counts - 1)[:, None])
    valid = np.arange(width) < counts[:, None]
    dev = left_chunk.device
    lefts = left_chunk[torch.from_numpy(a_local[starts]).to(dev)]  # (L, M, D)
    rights = right_chunk[torch.from_numpy(b_local[pos].ravel()).to(dev)]  # (L*W, M, D)
    num_left, m = lefts.shape[:2]
    sim = torch.bmm(rights.view(num_left, width * m, -1), lefts.transpose(1, 2))  # (L, W*M_right, M_left)
    sim = torch.nn.functional.threshold_(sim, tau, 0.0).view(num_left, width, m, m)
    for_left = valid & (slot_ab[pos] >= 0)  # the left image is a query with this right image as candidate
    for_right = valid & (slot_ba[pos] >= 0)  # the right image is a query with the left one as candidate
    left_sums = sim.sum(2)  # (L, W, M_left): per left patch, summed similarity within the radius
    right_sums = sim.sum(3) if for_right.any() else None  # (L, W, M_right)
    sim.clamp_(max=HIT)
    left_hits = sim.sum(2) / HIT
    right_hits = sim.sum(3) / HIT if for_right.any() else None
    for need, query, slot, sum_, hit in ((for_left, a, slot_ab, left_sums, left_hits),
                                         (for_right, b, slot_ba, right_sums, right_hits)):
        if need.any():
            mask = torch.from_numpy(need).to(dev)
            rows, cols = torch.from_numpy(query[pos][need]), torch.from_numpy(slot[pos][need])
            sums[rows, cols] = sum_[mask].cpu()
            hits[rows, cols] = hit[mask].cpu()


# ---------------------------------------------------------------------------------------------------
# Methods


def retrieve_cls(global_desc: np.ndarray, k: int, queries: np.ndarray | None = None,
                 database: np.ndarray | None = None, scene: str = "", ivf_min_images: int = IVF_MIN_IMAGES,
                 nprobe: int = IVF_NPROBE, device: str | None = None) -> Ranking:
    queries, database, register = _sets(len(global_desc), queries, database, scene)
    info: dict = {}
    k = _clamp(k, len(database) - register, "k", info)
    idx, sim = prefilter(global_desc[queries], global_desc[database], k, _self_rows(queries, database, register),
                         ivf_min_images, nprobe, device)
    return Ranking(queries, database[idx], sim, sim, info)


def retrieve_oracle(overlap: np.ndarray | None, k: int, queries: np.ndarray | None = None,
                    database: np.ndarray | None = None, scene: str = "") -> Ranking:
    if overlap is None:
        raise ValueError(
            f"scene {scene!r}: the oracle needs ground-truth overlap (3D points with tracks), "
            "and this dataset's model has none; drop `oracle` from the dataset's methods"
        )
    queries, database, register = _sets(len(overlap), queries, database, scene)
    info: dict = {}
    k = _clamp(k, len(database) - register, "k", info)
    ov = np.asarray(overlap, np.float64)[np.ix_(queries, database)]
    if register:
        ov[np.arange(len(queries)), _self_rows(queries, database, True)] = -np.inf
    best = np.lexsort((np.broadcast_to(np.arange(len(database)), ov.shape), -ov), axis=1)[:, :k]
    return Ranking(queries, database[best], np.take_along_axis(ov, best, 1), np.full(best.shape, np.nan), info)


def retrieve_random(num_images: int, k: int, seed: int, queries: np.ndarray | None = None,
                    database: np.ndarray | None = None, scene: str = "") -> Ranking:
    queries, database, register = _sets(num_images, queries, database, scene)
    info: dict = {}
    k = _clamp(k, len(database) - register, "k", info)
    # One generator per (seed, scene): a scene's pairs do not depend on which other scenes exist.
    rng = np.random.default_rng([seed, zlib.crc32(scene.encode())])
    db = np.stack([rng.permutation(database[database != q] if register else database)[:k] for q in queries])
    return Ranking(queries, db, np.zeros(db.shape), np.full(db.shape, np.nan), info)


def retrieve_vop(global_desc: np.ndarray, patches: PatchStore | np.ndarray, k: int, prefilter_size: int,
                 radius: float | str = "auto", tfidf: bool = True, queries: np.ndarray | None = None,
                 database: np.ndarray | None = None, scene: str = "", device: str | None = None, seed: int = 0,
                 ivf_min_images: int = IVF_MIN_IMAGES, nprobe: int = IVF_NPROBE,
                 chunk_size: int = 4096) -> Ranking:
    """VOP on one scene. `patches` covers all the scene's images (a PatchStore or an (N,M,D) array)."""
    queries, database, register = _sets(len(global_desc), queries, database, scene)
    info: dict = {"mode": "register" if register else "retrieve"}
    prefilter_size = _clamp(prefilter_size, len(database) - register, "prefilter", info)
    k = _clamp(k, len(database) - register, "k", info)
    if k > prefilter_size:
        raise ValueError(f"vop: k={k} exceeds prefilter={prefilter_size}: set prefilter >= k in the method's config")
    if not isinstance(patches, PatchStore):
        patches = PatchStore.from_array(patches, chunk_size=chunk_size, device=device)
    if radius == "auto":
        radius, median = auto_radius(_subset(patches, database), seed=seed)
        info["radius_auto_median_cosine"] = median
    radius = float(radius)
    if not 0 < radius <= 1:
        raise ValueError(f"vop: radius {radius} is outside (0, 1]: patches vote when their cosine exceeds 1 - radius")
    tau = 1.0 - radius
    info.update(radius=radius, tau=tau)

    cand, pre_sim = prefilter(global_desc[queries], global_desc[database], prefilter_size,
                              _self_rows(queries, database, register), ivf_min_images, nprobe, device)
    if register:
        votes = vote_scores(patches, patches, cand, tau, tfidf, shared=True)
    else:
        votes = vote_scores(_subset(patches, queries), _subset(patches, database), cand, tau, tfidf)
    # Ties, and queries whose candidates got no vote at all, fall back to prefilter order (the slot order).
    best = rank_rows(votes, k)
    no_votes = int((votes <= 0).all(axis=1).sum())
    info["queries_without_votes"] = no_votes
    if no_votes:
        logger.warning("%d queries got no vote within radius %.2f: their pairs follow prefilter order",
                       no_votes, radius)
    return Ranking(queries, database[np.take_along_axis(cand, best, 1)], np.take_along_axis(votes, best, 1),
                   np.take_along_axis(pre_sim, best, 1), info)


def _sets(num_images, queries, database, scene):
    """Query and database indices (default: register mode over the scene) and whether it is register mode."""
    if queries is None and database is None:
        _check_scene(num_images, scene)
        queries = database = np.arange(num_images)
    queries, database = np.asarray(queries), np.asarray(database)
    register = len(queries) == len(database) and bool(np.all(queries == database))
    if len(database) - register < 1:
        raise ValueError(f"scene {scene!r}: no database image to retrieve from")
    return queries, database, int(register)


def _self_rows(queries, database, register):
    """In register mode, each query's own row in the database (excluded from its candidates)."""
    return np.searchsorted(database, queries) if register else None


def _subset(store: PatchStore, ids: np.ndarray) -> PatchStore:
    """The store restricted to positions `ids` (the identity when `ids` covers it in order)."""
    if len(ids) == store.num_images and np.all(ids == np.arange(store.num_images)):
        return store
    return PatchStore(lambda sub: store.read(ids[sub]), len(ids), store.chunk_size, str(store.device),
                      store.cached_chunks)


# ---------------------------------------------------------------------------------------------------
# Outputs and the rule's entry point


def write_outputs(ranking: Ranking, names: Sequence[str], out_dir: str | Path, params: dict) -> None:
    """pairs.txt, scores.csv and retrieval.json in `out_dir`; query order as in `names`."""
    out_dir = Path(out_dir)
    pairs, rows = [], []
    for q, db, score, pre in zip(ranking.queries, ranking.db, ranking.score, ranking.prefilter_score):
        for rank, (d, s, p) in enumerate(zip(db, score, pre)):
            pairs.append((names[q], names[d]))
            rows.append((names[q], names[d], rank, f"{float(s):.6g}", f"{float(p):.6g}"))
    io.write_pairs(out_dir / "pairs.txt", pairs)
    io.write_csv(out_dir / "scores.csv", ["query", "db", "rank", "score", "prefilter_score"], rows)
    io.write_json(out_dir / "retrieval.json", {**params, **ranking.info, "num_images": len(names),
                                               "num_queries": len(ranking.queries)})


def run_method(method: dict, scene: str, gt_h5: Path, out_dir: Path, features_h5: Path | None = None,
               embeddings_h5: Path | None = None, device: str | None = None, mode: str = "register",
               queries: str | None = None) -> Ranking:
    """Run one configured method (a config `methods` entry) on one scene and write its outputs."""
    gt = io.read_gt(gt_h5)
    names = gt.names
    query_ids, db_ids = split_queries(names, mode, queries, scene)
    kind = method["type"]
    k = int(method["k"])
    index_opts = {"ivf_min_images": int(method.get("ivf_min_images", IVF_MIN_IMAGES)),
                      "nprobe": int(method.get("ivf_nprobe", IVF_NPROBE))}
    if kind == "cls":
        ranking = retrieve_cls(io.read_stacked(features_h5, names, "global_descriptor", np.float32), k, query_ids,
                               db_ids, scene, device=device, **index_opts)
    elif kind == "vop":
        ranking = retrieve_vop(
            io.read_stacked(embeddings_h5, names, "global_descriptor", np.float32),
            PatchStore.from_h5(embeddings_h5, names, device=device, chunk_size=int(method.get("chunk_images", 4096))),
            k=k,
            prefilter_size=int(method["prefilter"]),
            radius=method.get("radius", "auto"),
            tfidf=bool(method.get("tfidf", True)),
            queries=query_ids,
            database=db_ids,
            scene=scene,
            device=device,
            seed=int(method.get("seed", 0)),
            **index_opts,
        )
    elif kind == "oracle":
        ranking = retrieve_oracle(gt.overlap, k, query_ids, db_ids, scene)
    elif kind == "random":
        ranking = retrieve_random(len(names), k, int(method.get("seed", 0)), query_ids, db_ids, scene)
    else:
        raise ValueError(f"unknown retrieval type {kind!r}: expected one of cls, vop, oracle, random")
    params = {**method, "scene": scene, "mode": mode}
    if mode == "retrieve":
        params["queries"] = queries
    write_outputs(ranking, names, out_dir, params)
    return ranking


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--type", required=True, choices=["cls", "vop", "oracle", "random"])
    parser.add_argument("--gt", type=Path, required=True, help="gt.h5 of the scene (image order, overlap)")
    parser.add_argument("--features", type=Path, help="features-{backbone}.h5 (cls)")
    parser.add_argument("--embeddings", type=Path, help="embeddings-{encoder}.h5 (vop)")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--scene", default="")
    parser.add_argument("--mode", choices=["register", "retrieve"], default="register")
    parser.add_argument("--queries", help="retrieve mode: glob over image names selecting the queries")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--prefilter", type=int, default=20)
    parser.add_argument("--radius", default="auto", help="'auto' or a number in (0, 1]")
    parser.add_argument("--no-tfidf", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args(argv)
    setup_logging()
    method = {"type": args.type, "k": args.k, "seed": args.seed}
    if args.type == "vop":
        method.update(prefilter=args.prefilter, radius=args.radius if args.radius == "auto" else float(args.radius),
                      tfidf=not args.no_tfidf)
    run_method(method, args.scene, args.gt, args.out_dir, args.features, args.embeddings, args.device, args.mode,
               args.queries)


if __name__ == "__main__":
    main()
