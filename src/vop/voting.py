"""VOP's patch voting, batched: radius search among the prefiltered candidates' patches + TF-IDF.

The similarities of a left image's patches to the patches of several right images are one matrix
product, the radius mask and the reductions run on the whole batch, and in `register` mode the pair
(a,b) is computed once and serves both a's vote for b and b's vote for a. Patch descriptors are read
from the h5 a chunk of images at a time (`PatchStore`), so memory does not grow with N^2 nor hold the
whole scene in float32. On CPU the batches run on single-threaded workers, on CUDA on the GPU.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from vop import io
from vop.conf import VopConf
from vop.progress import Progress
from vop.utils import resolve_device

logger = logging.getLogger(__name__)

PATCH_SAMPLES_FOR_RADIUS = 200_000
IMAGES_FOR_RADIUS = 1000
# A hit counts as exactly HIT in a sum: HIT = 2^-100 keeps sums of up to 2^24 hits exact in float32,
# and one clamp + one sum is cheaper than comparing, casting and summing booleans.
HIT = 2.0**-100


class PatchStore:
    """L2-normalised float32 patch descriptors of a list of images, loaded `chunk_size` images at a time.

    `read(ids)` returns the raw descriptors (len(ids), M, D) of positions `ids` in the list. At most
    `cached_chunks` chunks are held; retrieval visits chunk pairs in an order that rarely reloads.
    """

    def __init__(self, read: Callable[[np.ndarray], np.ndarray], num_images: int,
                 chunk_size: int = VopConf.chunk_images,
                 device: str | None = None, cached_chunks: int = 2):
        self.read = read
        self.num_images = num_images
        self.chunk_size = max(1, int(chunk_size))
        self.device = resolve_device(device)
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
                out = np.empty((len(ids), *first.shape), np.float32)
                # One image's stored values at a time, converted by numpy: HDF5's own float16 conversion
                # is 1.5x slower (benchmarks/scale.py's reads), and no float16 copy of the chunk is held.
                stored = np.empty(first.shape, first.dtype)
                for row, i in enumerate(ids):
                    f[names[i]]["patch_descriptors"].read_direct(stored)
                    out[row] = stored
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
    median = float(np.median(_random_pair_cosines(store, seed, num_samples, max_images)[0]))
    radius = float(np.clip(np.round(median, 1), 0.1, 1.0))
    return radius, median


def _random_pair_cosines(store: PatchStore, seed: int, num_samples: int, max_images: int) -> tuple[np.ndarray, int]:
    """Cosines of `num_samples` random patch pairs from different images (of at most `max_images` images, a
    seeded subset of a larger scene), and the number of patches per image."""
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
    return np.sum(pa * pb, axis=1), m


def chance_threshold(store: PatchStore, chance: float, seed: int = 0, num_samples: int = 2 * PATCH_SAMPLES_FOR_RADIUS,
                     max_images: int = IMAGES_FOR_RADIUS) -> float:
    """The cosine above which a patch finds a partner among the M patches of an unrelated image with
    probability `chance`: the (1 - p) quantile of the cosines of random patch pairs of different images, with
    1 - (1 - p)^M = chance. The predicted NSO's threshold (vop.nso): a fixed radius saturates it, since
    nearly every patch has some neighbour within a voting radius among 256."""
    if not 0 < chance < 1:
        raise ValueError(f"nso_chance {chance} is outside (0, 1)")
    cosines, m = _random_pair_cosines(store, seed, num_samples, max_images)
    p = 1.0 - (1.0 - chance) ** (1.0 / m)
    return float(np.quantile(cosines, 1.0 - p))


@dataclass
class _Blocks:
    """Similarity blocks to compute: left image a against right image b (store positions), and where their
    votes go.

    slot_ab[i] >= 0: query row row_ab[i] (image a) has b among its candidates at that slot; the block's row
    reductions are a's votes for b. slot_ba[i] >= 0: query row row_ba[i] (image b) has a at that slot; the
    column reductions are b's votes for a (register mode, where one block serves both directions).
    """

    a: np.ndarray
    b: np.ndarray
    row_ab: np.ndarray
    slot_ab: np.ndarray
    row_ba: np.ndarray
    slot_ba: np.ndarray


def _blocks(candidates: np.ndarray, shared: bool, query_ids: np.ndarray | None = None) -> _Blocks:
    """The blocks of every (query row, candidate). In shared mode the queries are images of the same store
    (`query_ids`, default: row i is image i) and a pair of them is one block, always computed with the
    smaller store position on the left, whichever images are queries: so a block's arithmetic is the same
    whether a scene's queries are ranked in one job or in shards."""
    num_queries, num_cand = candidates.shape
    rows = np.repeat(np.arange(num_queries), num_cand)
    cand = candidates.ravel()
    slot = np.tile(np.arange(num_cand), num_queries)
    none = np.full_like(slot, -1)
    if not shared:
        return _Blocks(rows, cand, rows, slot, none, none)
    query = rows if query_ids is None else np.asarray(query_ids, np.int64)[rows]
    a, b = np.minimum(query, cand), np.maximum(query, cand)
    size = np.int64(max(int(a.max(initial=0)), int(b.max(initial=0))) + 1)
    pair_id, first, inverse = np.unique(a * size + b, return_index=True, return_inverse=True)
    row_ab, slot_ab = np.full(len(pair_id), -1), np.full(len(pair_id), -1)
    row_ba, slot_ba = np.full(len(pair_id), -1), np.full(len(pair_id), -1)
    forward = query < cand
    row_ab[inverse[forward]], slot_ab[inverse[forward]] = rows[forward], slot[forward]
    row_ba[inverse[~forward]], slot_ba[inverse[~forward]] = rows[~forward], slot[~forward]
    return _Blocks(a[first], b[first], row_ab, slot_ab, row_ba, slot_ba)


def vote_scores(left: PatchStore, right: PatchStore, candidates: np.ndarray, tau: float, tfidf: bool = True,
                shared: bool = False, blocks_per_batch: int | None = None,
                query_ids: np.ndarray | None = None, coverage: bool = False, coverage_tau: float | None = None):
    """VOP votes (num_queries, P) of every query (a left image) for its P candidates (right images).

    With s(p,r) the cosine of query patch p and candidate patch r,
      score(q,c) = sum_p w(p) * sum_{r in c, s(p,r) > tau} s(p,r),
      w(p) = n_p / n_d * max(0, log(P / m_p)) with TF-IDF (1 without; 0 when m_p = 0),
    n_p = candidate patches within the radius of p, m_p = candidates holding at least one, n_d = M.
    `shared` (register mode, left is right): the block of (a,b) also gives b's votes for a; the queries are
    the store's images `query_ids` (default: all, in order), e.g. one shard of a scene's queries.

    With `coverage`, returns (votes, enclosure, concentration), each (num_queries, P): the share of the
    query's patches with at least one candidate patch within the radius, and the share of the candidate's
    patches within the radius of some query patch (vop.nso: predicted NSO both ways). `coverage_tau` (at
    least tau; default tau) is the cosine a partner must exceed there. Both come from the blocks the votes
    are computed from (reductions of the same thresholded similarities).
    """
    if shared and left is not right:
        raise ValueError("shared blocks need the same store on both sides (register mode)")
    # A shard of a scene's queries touches only its queries and their candidates: read just those (the
    # whole store would be streamed through otherwise, every chunk of the database for every shard). The
    # renumbering keeps the images' order, so every block is the same block, computed the same way.
    if shared and query_ids is None:
        query_ids = np.arange(len(candidates))
    used = np.unique(np.concatenate([query_ids, candidates.ravel()]) if shared else candidates)
    if len(used) < right.num_images:
        compact = subset(right, used)
        return vote_scores(compact if shared else left, compact, np.searchsorted(used, candidates), tau, tfidf,
                           shared, blocks_per_batch, np.searchsorted(used, query_ids) if shared else None,
                           coverage, coverage_tau)
    num_queries, num_cand = candidates.shape
    dev = left.device
    if blocks_per_batch is None:
        blocks_per_batch = 512 if dev.type == "cuda" else 8
    num_patches = left.chunk(0).shape[1]
    # Per (query, slot, query patch): summed similarity within the radius and number of hits.
    sums = torch.zeros(num_queries, num_cand, num_patches)
    hits = torch.zeros(num_queries, num_cand, num_patches)
    # Per (query, slot): how many of the query's patches reach the candidate, and of the candidate's are
    # reached (coverage only).
    covered = torch.zeros(num_queries, num_cand, 2) if coverage else None
    coverage_tau = tau if coverage_tau is None else max(float(coverage_tau), tau)

    blocks = _blocks(candidates, shared, query_ids)
    a_chunk, b_chunk = blocks.a // left.chunk_size, blocks.b // right.chunk_size
    order = np.lexsort((blocks.b, blocks.a, b_chunk, a_chunk))
    tiles = np.flatnonzero(np.diff(a_chunk[order] * right.num_chunks + b_chunk[order], prepend=-1))
    # On CPU, batches run in parallel on single-threaded torch: one small parallel op after another
    # loses most of its time in thread barriers, more so on a busy machine.
    workers = torch.get_num_threads() if dev.type == "cpu" else 1
    # Progress in similarity blocks (image pairs): what the time goes into.
    bar = Progress(len(blocks.a), "voting", "image pairs", logger=logger)
    with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool, bar:
        for start, stop in zip(tiles, [*tiles[1:], len(order)]):
            sel = order[start:stop]
            ca, cb = int(a_chunk[sel[0]]), int(b_chunk[sel[0]])
            left_chunk, right_chunk = left.chunk(ca), right.chunk(cb)
            tile = VoteTile(left_chunk, right_chunk, blocks.a[sel] - ca * left.chunk_size,
                            blocks.b[sel] - cb * right.chunk_size, blocks.row_ab[sel], blocks.slot_ab[sel],
                            blocks.row_ba[sel], blocks.slot_ba[sel], tau, sums, hits, covered, coverage_tau)
            jobs = [(pool.submit(tile.vote, starts, counts), int(counts.sum()))
                    for starts, counts in _batches(tile.a_local, blocks_per_batch)]
            for job, num_blocks in jobs:
                job.result()
                bar.update(num_blocks)
            del tile, jobs, left_chunk, right_chunk  # let the cache free a chunk before the next loads

    if tfidf:
        n_p = hits.sum(1)  # (num_queries, M)
        m_p = (hits > 0).sum(1).float()
        idf = torch.log(num_cand / m_p.clamp(min=1)).clamp(min=0)
        weight = torch.where(m_p > 0, n_p / num_patches * idf, torch.zeros_like(n_p))
    else:
        weight = torch.ones(num_queries, num_patches)
    votes = torch.einsum("qcp,qp->qc", sums, weight).numpy()
    if not coverage:
        return votes
    enclosure = covered[..., 0] / num_patches
    concentration = covered[..., 1] / right.chunk(0).shape[1]
    return votes, enclosure.numpy(), concentration.numpy()


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


@dataclass
class VoteTile:
    """The similarity blocks of one (left chunk, right chunk) tile, and where their votes go.

    Block i is left image a_local[i] of the left chunk against right image b_local[i] of the right chunk.
    Its row reductions are the left image's votes for the right one, stored in sums/hits[row_ab[i],
    slot_ab[i]] when slot_ab[i] >= 0; its column reductions are the right image's votes for the left one,
    stored in sums/hits[row_ba[i], slot_ba[i]] when slot_ba[i] >= 0 (register mode). Blocks are sorted by
    left image.
    """

    left_chunk: torch.Tensor
    right_chunk: torch.Tensor
    a_local: np.ndarray
    b_local: np.ndarray
    row_ab: np.ndarray
    slot_ab: np.ndarray
    row_ba: np.ndarray
    slot_ba: np.ndarray
    tau: float
    sums: torch.Tensor
    hits: torch.Tensor
    covered: torch.Tensor | None = None  # (num_queries, P, 2): patches reached, query's and candidate's
    coverage_tau: float = 1.0  # the cosine a partner exceeds there (>= tau)

    def vote(self, starts: np.ndarray, counts: np.ndarray) -> None:
        """One matrix product for L left images against their (at most W) right partners, then the votes."""
        width = int(counts.max())
        # (L, W) positions into the tile's block arrays; padding repeats a group's last block and is dropped.
        pos = np.minimum(starts[:, None] + np.arange(width), (starts + counts - 1)[:, None])
        valid = np.arange(width) < counts[:, None]
        dev = self.left_chunk.device
        lefts = self.left_chunk[torch.from_numpy(self.a_local[starts]).to(dev)]  # (L, M, D)
        rights = self.right_chunk[torch.from_numpy(self.b_local[pos].ravel()).to(dev)]  # (L*W, M, D)
        num_left, m = lefts.shape[:2]
        sim = torch.bmm(rights.view(num_left, width * m, -1), lefts.transpose(1, 2))  # (L, W*M_right, M_left)
        sim = torch.nn.functional.threshold_(sim, self.tau, 0.0).view(num_left, width, m, m)
        for_left = valid & (self.slot_ab[pos] >= 0)  # the left image is a query with this right one as candidate
        for_right = valid & (self.slot_ba[pos] >= 0)  # the right image is a query with the left one as candidate
        left_sums = sim.sum(2)  # (L, W, M_left): per left patch, summed similarity within the radius
        right_sums = sim.sum(3) if for_right.any() else None  # (L, W, M_right)
        reached = None
        if self.covered is not None:  # (L, W, 2): left patches with a partner above coverage_tau, right ones
            # each patch's best partner (sim is 0 at and below tau <= coverage_tau); amax is ~10x faster than
            # reducing a boolean copy of the block (benchmarks/retrieval.py, "coverage")
            ctau = self.coverage_tau
            reached = torch.stack([(sim.amax(2) > ctau).sum(-1), (sim.amax(3) > ctau).sum(-1)], -1).float()
        sim.clamp_(max=HIT)
        left_hits = sim.sum(2) / HIT
        right_hits = sim.sum(3) / HIT if for_right.any() else None
        directions = ((for_left, self.row_ab, self.slot_ab, left_sums, left_hits, False),
                      (for_right, self.row_ba, self.slot_ba, right_sums, right_hits, True))
        for need, query, slot, sum_, hit, flip in directions:
            if need.any():
                mask = torch.from_numpy(need).to(dev)
                rows, cols = torch.from_numpy(query[pos][need]), torch.from_numpy(slot[pos][need])
                self.sums[rows, cols] = sum_[mask].cpu()
                self.hits[rows, cols] = hit[mask].cpu()
                if reached is not None:  # (query's patches, candidate's patches) of this direction
                    got = reached[mask]
                    self.covered[rows, cols] = (got.flip(-1) if flip else got).cpu()


def subset(store: PatchStore, ids: np.ndarray) -> PatchStore:
    """The store restricted to positions `ids` (the identity when `ids` covers it in order)."""
    if len(ids) == store.num_images and np.all(ids == np.arange(store.num_images)):
        return store
    return PatchStore(lambda sub: store.read(ids[sub]), len(ids), store.chunk_size, str(store.device),
                      store.cached_chunks)
