"""The global-descriptor prefilter: the nearest database images of each query, with faiss.

Exact inner product below `ivf_min_images` database images, an IVF index (`ivf_nprobe` lists per query)
above; on CUDA with a faiss GPU build the index runs on the GPU. Equal similarities are ordered by
database index, so the result does not depend on faiss's order among ties. No N x N matrix is formed.
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path

import faiss
import numpy as np

from vop.conf import PrefilterIndexConf
from vop.io import atomic_path
from vop.utils import l2_normalize, resolve_device

logger = logging.getLogger(__name__)

# Extra neighbours fetched so that equal similarities at the cut are ordered by index.
TIE_MARGIN = 8


def build_index(vectors: np.ndarray, ivf_min_images: int = PrefilterIndexConf.ivf_min_images,
                ivf_nprobe: int = PrefilterIndexConf.ivf_nprobe, device: str | None = None,
                seed: int = 0) -> faiss.Index:
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
        index.nprobe = min(ivf_nprobe, nlist)  # faiss's wrapper keeps `quantizer` alive with the index
    index.add(vectors)
    device = resolve_device(device)
    if device.type == "cuda" and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        return faiss.index_cpu_to_gpu(_gpu_resources(), device.index or 0, index)
    return index


@functools.cache
def _gpu_resources():
    """One set of faiss GPU resources (temporary memory, streams) per process."""
    return faiss.StandardGpuResources()


def search(index: faiss.Index, query_desc: np.ndarray, num: int,
           exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The `num` database rows of `index` most similar to each query row: (indices, cosine), best first.

    `exclude[i]` is a database row never returned for query i (the query itself in register mode).
    Equal similarities are ordered by database index.
    """
    query_desc = l2_normalize(np.asarray(query_desc, np.float32))
    fetch = min(index.ntotal, num + TIE_MARGIN + (exclude is not None))
    sim, idx = index.search(query_desc, fetch)
    sim = _exact_similarities(index, query_desc, idx) if _is_flat(index) else sim.astype(np.float64)
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


def _is_flat(index: faiss.Index) -> bool:
    return "Flat" in type(index).__name__ and "IVF" not in type(index).__name__


def _exact_similarities(index: faiss.Index, query_desc: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The found candidates' similarities again, one pair at a time in float64: faiss's blocked matrix
    products round differently for different numbers of queries, and a query's scores must not depend on
    how many are searched with it (a scene ranked in one job or in shards of queries)."""
    db = index.reconstruct_batch(np.maximum(idx, 0).ravel()).reshape(*idx.shape, -1)
    sim = np.einsum("qd,qkd->qk", query_desc.astype(np.float64), db.astype(np.float64))
    sim[idx < 0] = -np.inf
    return sim


def prefilter(query_desc: np.ndarray, db_desc: np.ndarray, num: int, exclude: np.ndarray | None = None,
              ivf_min_images: int = PrefilterIndexConf.ivf_min_images, ivf_nprobe: int = PrefilterIndexConf.ivf_nprobe,
              device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`search` in an index built over `db_desc` on the spot (see `build_index`)."""
    index = build_index(l2_normalize(np.asarray(db_desc, np.float32)), ivf_min_images, ivf_nprobe, device)
    logger.info("prefilter: %s index over %d images", type(index).__name__, index.ntotal)
    return search(index, query_desc, num, exclude)


def save_index(index: faiss.Index, path: str | Path) -> None:
    """Write an index (moved off the GPU first) atomically."""
    if hasattr(faiss, "index_gpu_to_cpu") and type(index).__name__.startswith("Gpu"):
        index = faiss.index_gpu_to_cpu(index)
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def load_index(path: str | Path, device: str | None = None) -> faiss.Index:
    """An index written by `save_index`, on the GPU when `device` is CUDA and faiss can."""
    index = faiss.read_index(str(path))
    device = resolve_device(device)
    if device.type == "cuda" and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        return faiss.index_cpu_to_gpu(_gpu_resources(), device.index or 0, index)
    return index
