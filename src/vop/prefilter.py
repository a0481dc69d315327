"""The global-descriptor prefilter: the nearest database images of each query, with faiss.

Exact inner product below `ivf_min_images` database images, an IVF index (`ivf_nprobe` lists per query)
above; on CUDA with a faiss GPU build the index runs on the GPU. Equal similarities are ordered by
database index, so the result does not depend on faiss's order among ties. No N x N matrix is formed.
"""

from __future__ import annotations

import functools
import logging
import math

import faiss
import numpy as np

from vop.conf import PrefilterIndexConf
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


def prefilter(query_desc: np.ndarray, db_desc: np.ndarray, num: int, exclude: np.ndarray | None = None,
              ivf_min_images: int = PrefilterIndexConf.ivf_min_images, ivf_nprobe: int = PrefilterIndexConf.ivf_nprobe,
              device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The `num` database rows most similar to each query row: (indices, cosine), best first.

    `exclude[i]` is a database row never returned for query i (the query itself in register mode).
    Equal similarities are ordered by database index.
    """
    query_desc = l2_normalize(np.asarray(query_desc, np.float32))
    db_desc = l2_normalize(np.asarray(db_desc, np.float32))
    index = build_index(db_desc, ivf_min_images, ivf_nprobe, device)
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
