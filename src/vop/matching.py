"""Matching of local descriptors: mutual nearest neighbours that pass Lowe's ratio test.

`match_descriptors` is the straightforward matcher, one pair at a time in numpy. `match_pairs` matches
many pairs at once as batched matrix products in torch, on CUDA when present (the descriptors as float16,
the similarities accumulated and kept in float32) and on the CPU otherwise, and gives the same matches:
the same nearest neighbours (ties to the first index, as numpy's argmax), the same ratio test in float32.
It avoids the per-pair matcher's costly step, the column-wise argmax over a row-major similarity matrix
(a strided pass), by taking each column's maximum (a contiguous reduction) and counting the rows that reach
it: a row is a mutual nearest neighbour when it is the only one at its neighbour's column maximum, and
the rare exact ties are settled with the first such row, as the argmax does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from vop.utils import l2_normalize, resolve_device

# Similarity matrices of one batch: float32 values plus the boolean of the tie count, per element.
_BYTES_PER_ELEMENT = 5
CPU_BATCH_BYTES = 256 << 20
CUDA_BATCH_BYTES = 8 << 30  # at most; and at most a quarter of the free GPU memory
MAX_BATCH_PAIRS = 64
# A batch pads every matrix to its largest sizes: at most this many padded elements per real one. On the
# CPU the product costs its padding and batching gains little; on CUDA bigger batches keep the GPU busy.
MAX_PADDING = {"cpu": 1.1, "cuda": 2.0}


def match_descriptors(desc0: np.ndarray, desc1: np.ndarray, ratio: float) -> np.ndarray:
    """Mutual nearest neighbours that pass Lowe's ratio test (0 -> 1 side, as hloc's NN matcher).

    desc0 (N0,D), desc1 (N1,D); returns (M,2) int64 indices [i0, i1]. One matmul of L2-normalised
    descriptors gives all similarities; distances follow from ||a-b||^2 = 2 - 2 a.b.
    """
    desc0 = np.asarray(desc0, np.float32)
    desc1 = np.asarray(desc1, np.float32)
    if len(desc0) == 0 or len(desc1) == 0:
        return np.zeros((0, 2), np.int64)
    desc0, desc1 = l2_normalize(desc0), l2_normalize(desc1)
    sim = desc0 @ desc1.T  # (N0,N1)

    rows = np.arange(len(desc0))
    nn01 = sim.argmax(axis=1)
    nn10 = sim.argmax(axis=0)
    best = sim[rows, nn01]
    if sim.shape[1] > 1:
        # Second best per row: mask the best in place (cheaper than a partition), then restore.
        sim[rows, nn01] = -np.inf
        second = sim.max(axis=1)
        sim[rows, nn01] = best
    else:
        second = np.full_like(best, -np.inf)  # no second neighbour: the ratio test cannot reject
    dist_best = np.sqrt(np.maximum(2.0 - 2.0 * best, 0.0))
    dist_second = np.sqrt(np.maximum(2.0 - 2.0 * second, 0.0))  # inf for -inf similarity

    keep = (nn10[nn01] == rows) & (dist_best < ratio * dist_second)
    return np.stack([rows[keep], nn01[keep]], axis=1).astype(np.int64)


class _Descriptors:
    """Each image's descriptors on the device, as the batches want them: on the CPU L2-normalised float32
    (made per batch, nothing kept); in float16 (CUDA) the raw values, uploaded once, with their inverse
    norms in float32, so the similarities are those of normalised descriptors without a second rounding."""

    def __init__(self, descriptors: Mapping[str, np.ndarray], device: torch.device, half: bool):
        self.descriptors, self.device, self.half = descriptors, device, half
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.half:
            return torch.from_numpy(l2_normalize(np.asarray(self.descriptors[name], np.float32))).to(self.device), None
        if name not in self.cache:
            raw = torch.from_numpy(np.asarray(self.descriptors[name], np.float16)).to(self.device)
            norm = torch.linalg.vector_norm(raw.float(), dim=1)
            self.cache[name] = (raw, 1.0 / torch.clamp(norm, min=1e-12))
        return self.cache[name]

    def batch(self, names: Sequence[str], size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, size, D) zero-padded, and (B, size) inverse norms (float16 only)."""
        first = self.get(names[0])[0]
        out = torch.zeros((len(names), size, first.shape[1]), dtype=first.dtype, device=self.device)
        scale = torch.zeros((len(names), size), dtype=torch.float32, device=self.device) if self.half else None
        for k, name in enumerate(names):
            desc, inv = self.get(name)
            out[k, :len(desc)] = desc
            if scale is not None:
                scale[k, :len(desc)] = inv
        return out, scale


_OUT_DTYPE_WORKS: dict[str, bool] = {}


def _similarities(d0: torch.Tensor, d1: torch.Tensor, s0: torch.Tensor | None, s1: torch.Tensor | None):
    """(B,M0,M1) float32 cosine similarities of a batch."""
    if d0.dtype != torch.float16:
        return torch.bmm(d0, d1.transpose(1, 2))
    kind = d0.device.type
    sim = None
    if _OUT_DTYPE_WORKS.get(kind, True):
        try:  # float16 products accumulated and returned in float32 (tensor cores on CUDA)
            sim = torch.bmm(d0, d1.transpose(1, 2), out_dtype=torch.float32)
            _OUT_DTYPE_WORKS[kind] = True
        except (TypeError, RuntimeError, NotImplementedError):
            _OUT_DTYPE_WORKS[kind] = False
    if sim is None:
        sim = torch.bmm(d0.float(), d1.float().transpose(1, 2))
    return sim.mul_(s0[:, :, None]).mul_(s1[:, None, :])


def _match_batch(sim: torch.Tensor, n0: Sequence[int], n1: Sequence[int], ratio: float):
    """Mutual nearest neighbours + ratio test of a batch of padded similarity matrices (overwritten).

    Returns keep (B,M0) bool, nn01 (B,M0) and best (B,M0), on the device.
    """
    inf = float("inf")
    _, M0, M1 = sim.shape
    for k, (a, b) in enumerate(zip(n0, n1)):  # padding never wins
        if b < M1:
            sim[k, :, b:] = -inf
        if a < M0:
            sim[k, a:, :] = -inf
    col_max = sim.amax(dim=1)  # (B,M1), a contiguous reduction
    best, nn01 = sim.max(dim=2)  # (B,M0), ties to the first column
    at_max = best == col_max.gather(1, nn01)  # row i reaches the maximum of its neighbour's column
    # Is it the only row there? Rows at the maximum with the same neighbour are counted; the others show
    # once every row's best entry is masked (which the second best needs anyway): the column's maximum
    # without those entries still reaches the full maximum.
    sim.scatter_(2, nn01[:, :, None], -inf)
    second = sim.amax(dim=2)  # -inf where there is no second neighbour: the ratio test cannot reject
    others_at_max = sim.amax(dim=1) == col_max
    at_max_rows = torch.zeros_like(col_max, dtype=torch.int32).scatter_add_(1, nn01, at_max.to(torch.int32))
    unique = (at_max_rows.gather(1, nn01) == 1) & ~others_at_max.gather(1, nn01)
    mutual = at_max & unique
    for k, i in (at_max & ~unique).nonzero().tolist():  # exact ties: the first row wins, as argmax
        j = int(nn01[k, i])
        reach = torch.cat([(sim[k, :, j] == col_max[k, j]).nonzero()[:, 0],
                           ((nn01[k] == j) & at_max[k]).nonzero()[:, 0]])
        mutual[k, i] = int(reach.min()) == i
    dist_best = torch.sqrt(torch.clamp(2.0 - 2.0 * best, min=0.0))
    dist_second = torch.sqrt(torch.clamp(2.0 - 2.0 * second, min=0.0))
    return mutual & (dist_best < ratio * dist_second), nn01, best


def _batch_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(min(CUDA_BATCH_BYTES, free // 4))
    return CPU_BATCH_BYTES


def match_pairs(descriptors: Mapping[str, np.ndarray], pairs: Sequence[tuple[str, str]], ratio: float,
                device: str | torch.device | None = None, half: bool | None = None,
                batch_bytes: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """`match_descriptors` for every (name0, name1) of `pairs`, as batched matrix products.

    `descriptors` maps an image name to its (N,D) descriptors. Returns, per pair in order, the (M,2) int64
    matches [i0, i1] (i0 ascending) and their (M,) float32 cosine similarities. `device`: default CUDA when
    present; `half` (default: on CUDA) keeps the descriptors in float16. A batch holds the pairs whose
    similarity matrices fit `batch_bytes` (CPU: 256 MiB; CUDA: up to a quarter of the free memory) and
    pad little (MAX_PADDING).
    """
    device = resolve_device(device)
    half = device.type == "cuda" if half is None else bool(half)
    budget = batch_bytes or _batch_budget(device)
    size = {name: len(descriptors[name]) for pair in pairs for name in pair}
    empty = (np.zeros((0, 2), np.int64), np.zeros((0,), np.float32))
    out: list[tuple[np.ndarray, np.ndarray] | None] = [empty if size[a] == 0 or size[b] == 0 else None
                                                        for a, b in pairs]
    # Largest first and similar sizes together, so that a batch pads little.
    todo = sorted((p for p, r in enumerate(out) if r is None), key=lambda p: (-size[pairs[p][0]], -size[pairs[p][1]]))
    bank = _Descriptors(descriptors, device, half)
    padding = MAX_PADDING.get(device.type, MAX_PADDING["cuda"])
    start = 0
    with torch.no_grad():
        while start < len(todo):
            M0, M1, area, stop = 0, 0, 0, start
            while stop < len(todo) and stop - start < MAX_BATCH_PAIRS:
                a, b = pairs[todo[stop]]
                m0, m1, grown = max(M0, size[a]), max(M1, size[b]), area + size[a] * size[b]
                padded = (stop - start + 1) * m0 * m1
                if stop > start and (padded * _BYTES_PER_ELEMENT > budget or padded > padding * grown):
                    break
                M0, M1, area, stop = m0, m1, grown, stop + 1
            batch = todo[start:stop]
            n0, n1 = [size[pairs[p][0]] for p in batch], [size[pairs[p][1]] for p in batch]
            d0, s0 = bank.batch([pairs[p][0] for p in batch], M0)
            d1, s1 = bank.batch([pairs[p][1] for p in batch], M1)
            keep, nn01, best = _match_batch(_similarities(d0, d1, s0, s1), n0, n1, ratio)
            keep, nn01, best = keep.cpu().numpy(), nn01.cpu().numpy(), best.cpu().numpy()
            for k, p in enumerate(batch):
                rows = np.flatnonzero(keep[k])
                out[p] = (np.stack([rows, nn01[k, rows]], axis=1).astype(np.int64), best[k, rows].astype(np.float32))
            start = stop
    return out
