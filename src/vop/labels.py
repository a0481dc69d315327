"""Ground-truth patch correspondences, from depth or from the tracks of 3D points: the supervision of the
VOP encoder.

The backbone sees an image resized to 224x224 (each axis scaled on its own) and cut into a 16x16 grid of
14x14 patches, patch index = row * 16 + col. In the original image, patch (row, col) covers
x in [col * W / 16, (col + 1) * W / 16) and y likewise, so a pixel's patch follows from its coordinates
without resizing anything.

For a pair (A, B), every (or every `stride`-th) pixel of A with valid depth is lifted to 3D, moved into B,
projected, and kept only where B's depth map agrees (so occluded pixels drop out); shared pixels are pooled
into a patch-by-patch count matrix. Positive patch pairs are the mutual best partners of that matrix, every
other patch pair is negative. Image pairs are sampled per overlap bin from gt.h5, plus non-overlapping
pairs, and the result is cached per scene::

    vop labels --source megadepth --root resources/megadepth --scene 0015 --gt gt.h5 --out labels.h5

Depth maps come from the scene's reader (`vop.datasets.open_scene`): any source with depth (ETH3D layout,
synthetic, MegaDepth) trains the same way. A posed source without depth trains from tracks instead: the
observations of 3D points stored in gt.h5, shipped with the model or triangulated (vop.ground_truth). Patch
a of A and patch b of B then count the 3D points that A observes in a and B in b, and the same mutual-best
rule makes the positives one to one, as with depth (`track_correspondences`; each point is spread over the
patches around it, bilinearly, since a patch holds a few points where it holds hundreds of pixels).

Cache layout (root datasets): `names` (N,) str, `pairs` (M,2) int32 indices into names with i < j,
`bins` (M,) int8 (-1: non-overlapping), `overlap` (M,) float32, `offsets` (M+1,) int64 and `positives`
(sum P, 2) int16 (patch of image i, patch of image j): pair m's positives are
positives[offsets[m]:offsets[m+1]]. Attributes: grid, the parameters used and `source` (depth or tracks).

Pixel convention (COLMAP, as the synthetic renderer): integer pixel (u, v) has its centre at
(u + 0.5, v + 0.5) in K's coordinates, and a continuous point (x, y) lies in pixel (floor(x), floor(y)).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse

from vop.conf import LabelsConf
from vop.datasets import SceneReader
from vop.grid import GRID, pixel_patches
from vop.io import atomic_path, decode_names, read_gt
from vop.progress import progress

logger = logging.getLogger(__name__)

DEFAULT_BINS = ((0.1, 0.3), (0.3, 0.5), (0.5, 0.7))
NEGATIVE_EPS = 1e-6  # overlap at or below this counts as "no overlap"


# ---------------------------------------------------------------------------------------------
# Patch correspondences of one pair


def lift_pixels(depth: np.ndarray, K: np.ndarray, stride: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels (u, v) (P,) int64 sampled every `stride` pixels (from stride // 2) with finite positive depth,
    and their 3D points (3,P) float64 in the camera's frame (pixel centres lifted with K^-1: handles skew)."""
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"depth maps must be 2D (H,W), got shape {depth.shape}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    h, w = depth.shape
    start = stride // 2
    v, u = np.mgrid[start:h:stride, start:w:stride]
    z = depth[v, u].astype(np.float64)
    valid = np.isfinite(z) & (z > 0)
    u, v, z = u[valid], v[valid], z[valid]
    pix = np.stack([u + 0.5, v + 0.5, np.ones_like(z)])  # (3,P)
    return u, v, np.linalg.solve(np.asarray(K, np.float64), pix) * z


def warp_visible(points_a: np.ndarray, T_ab: np.ndarray, depth_b: np.ndarray,
                 K_b: np.ndarray, depth_tol: float = LabelsConf.depth_tol) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which of camera A's 3D points (3,P) image B sees: indices (V,) into them and where they land (x, y) in
    B's pixels (continuous). A point counts where it lands in front of B and inside B and B's depth at the
    landing pixel agrees with the transformed depth within `depth_tol` (relative); otherwise it is occluded
    in B or B has no depth there. The one warp of the package: patch labels and ground-truth NSO use it."""
    depth_b = np.asarray(depth_b)
    if depth_b.ndim != 2:
        raise ValueError(f"depth maps must be 2D (H,W), got shape {depth_b.shape}")
    h_b, w_b = depth_b.shape
    T_ab = np.asarray(T_ab, np.float64)
    X_b = T_ab[:3, :3] @ points_a + T_ab[:3, 3:]
    z_b = X_b[2]
    with np.errstate(divide="ignore", invalid="ignore"):
        proj = np.asarray(K_b, np.float64) @ X_b
        x_b, y_b = proj[0] / proj[2], proj[1] / proj[2]
    keep = np.flatnonzero((z_b > 0) & (x_b >= 0) & (x_b < w_b) & (y_b >= 0) & (y_b < h_b))
    z_b, x_b, y_b = z_b[keep], x_b[keep], y_b[keep]
    col_b = np.minimum(x_b.astype(np.int64), w_b - 1)  # floor: non-negative here
    row_b = np.minimum(y_b.astype(np.int64), h_b - 1)
    seen = depth_b[row_b, col_b].astype(np.float64)
    visible = np.abs(seen - z_b) <= depth_tol * z_b  # inf (no depth) compares False
    return keep[visible], x_b[visible], y_b[visible]


def relative_transform(T_w2cam_a: np.ndarray, T_w2cam_b: np.ndarray) -> np.ndarray:
    """T_ab (4,4): camera A's frame to camera B's."""
    return np.asarray(T_w2cam_b, np.float64) @ np.linalg.inv(np.asarray(T_w2cam_a, np.float64))


def patch_correspondences(depth_a: np.ndarray, K_a: np.ndarray, T_w2cam_a: np.ndarray,
                          depth_b: np.ndarray, K_b: np.ndarray, T_w2cam_b: np.ndarray,
                          grid: int = GRID, stride: int = 1, depth_tol: float = LabelsConf.depth_tol) -> np.ndarray:
    """Counts (grid^2, grid^2) int64: [patch of A, patch of B] -> pixels of A seen in B at that patch.

    Pixels of A are sampled every `stride` pixels in x and y (starting at stride // 2). A pixel counts where
    its depth is finite and positive, it lands in front of B and inside B, and B's depth at the landing
    pixel agrees with the transformed depth within `depth_tol` (relative); otherwise it is occluded in B
    or B has no depth there, and it is dropped (`lift_pixels`, `warp_visible`).
    """
    depth_a = np.asarray(depth_a)
    depth_b = np.asarray(depth_b)
    if depth_a.ndim != 2 or depth_b.ndim != 2:
        raise ValueError(f"depth maps must be 2D (H,W), got shapes {depth_a.shape} and {depth_b.shape}")
    h_a, w_a = depth_a.shape
    h_b, w_b = depth_b.shape
    n = grid * grid
    u, v, points = lift_pixels(depth_a, K_a, stride)
    seen, x_b, y_b = warp_visible(points, relative_transform(T_w2cam_a, T_w2cam_b), depth_b, K_b, depth_tol)
    u, v = u[seen], v[seen]
    patch_a = pixel_patches(u + 0.5, v + 0.5, w_a, h_a, grid)
    patch_b = pixel_patches(x_b, y_b, w_b, h_b, grid)
    return np.bincount(patch_a * n + patch_b, minlength=n * n).reshape(n, n)


def _patch_weights(xy: np.ndarray, width: float, height: float, grid: int) -> scipy.sparse.csr_matrix:
    """(M, grid^2) bilinear weights of points over the patch centres around them (rows sum to 1)."""
    u = xy[:, 0] * (grid / width) - 0.5  # in patch units, 0 at the centre of column 0
    v = xy[:, 1] * (grid / height) - 0.5
    c0, r0 = np.floor(u), np.floor(v)
    fu, fv = u - c0, v - r0
    rows, cols, vals = [], [], []
    for dr, wr in ((0, 1 - fv), (1, fv)):
        for dc, wc in ((0, 1 - fu), (1, fu)):
            r = np.clip(r0 + dr, 0, grid - 1).astype(np.int64)
            c = np.clip(c0 + dc, 0, grid - 1).astype(np.int64)
            rows.append(np.arange(len(xy)))
            cols.append(r * grid + c)
            vals.append(wr * wc)
    return scipy.sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                   shape=(len(xy), grid * grid))


def track_correspondences(xy_a: np.ndarray, ids_a: np.ndarray, size_a, xy_b: np.ndarray, ids_b: np.ndarray,
                          size_b, grid: int = GRID) -> np.ndarray:
    """Weights (grid^2, grid^2) float64: [patch of A, patch of B] -> the 3D points both images observe, there.

    xy (M,2) are the images' observations of 3D points in COLMAP pixels (continuous, the corner of the
    top-left pixel at (0, 0)), ids (M,) their point ids, size [w, h]; a point observed twice in one image
    counts at its first observation. Each shared point is spread over the four patches around it in each
    image by bilinear weights over the patch centres: a few points per patch cannot tell which of two
    neighbouring patches holds more of the shared surface, their positions can. The tracks' counterpart of
    `patch_correspondences` (whose dense pixels need no such care).
    """
    ids_a, ids_b = np.asarray(ids_a, np.int64).ravel(), np.asarray(ids_b, np.int64).ravel()
    _, in_a, in_b = np.intersect1d(ids_a, ids_b, return_indices=True)
    xy_a = np.asarray(xy_a, np.float64).reshape(-1, 2)[in_a]
    xy_b = np.asarray(xy_b, np.float64).reshape(-1, 2)[in_b]
    (w_a, h_a), (w_b, h_b) = np.asarray(size_a, np.float64).ravel()[:2], np.asarray(size_b, np.float64).ravel()[:2]
    weights_a = _patch_weights(xy_a, w_a, h_a, grid)
    weights_b = _patch_weights(xy_b, w_b, h_b, grid)
    return (weights_a.T @ weights_b).toarray()


def mutual_positives(counts: np.ndarray) -> np.ndarray:
    """(P,2) int64 pairs (a, b) that are each other's partner with most shared pixels, counts > 0.

    Ties go to the lowest index (np.argmax), so the result is deterministic and one to one.
    """
    counts = np.asarray(counts)
    if counts.ndim != 2:
        raise ValueError(f"counts must be 2D, got shape {counts.shape}")
    if counts.size == 0:
        return np.zeros((0, 2), np.int64)
    best_b = counts.argmax(axis=1)  # per patch of A
    best_a = counts.argmax(axis=0)  # per patch of B
    a = np.arange(counts.shape[0])
    mutual = (best_a[best_b] == a) & (counts[a, best_b] > 0)
    return np.stack([a[mutual], best_b[mutual]], axis=1)


# ---------------------------------------------------------------------------------------------
# Pair sampling


def sample_pairs(overlap: np.ndarray, bins, pairs_per_bin: int, num_negative: int, seed: int = 0,
                 eps: float = NEGATIVE_EPS) -> tuple[np.ndarray, np.ndarray]:
    """Unordered image pairs (M,2) int64 with i < j, and their bin index (M,) int64.

    Bins are half-open [lo, hi); up to `pairs_per_bin` pairs are drawn uniformly without replacement from
    each, then up to `num_negative` pairs with overlap <= eps get bin -1. An asymmetric overlap is read
    as min(o_ij, o_ji) so that a pair means the same whichever image comes first. Same seed, same pairs.
    """
    overlap = np.asarray(overlap, np.float64)
    if overlap.ndim != 2 or overlap.shape[0] != overlap.shape[1]:
        raise ValueError(f"overlap must be square (N,N), got shape {overlap.shape}")
    i, j = np.triu_indices(len(overlap), k=1)
    o = np.minimum(overlap[i, j], overlap[j, i])  # NaN stays NaN and matches no bin
    rng = np.random.default_rng(seed)
    groups = [((o >= lo) & (o < hi), k, pairs_per_bin) for k, (lo, hi) in enumerate(bins)]
    groups.append((o <= eps, -1, num_negative))
    picked, labels = [], []
    for mask, label, limit in groups:
        candidates = np.flatnonzero(mask)
        chosen = np.sort(rng.choice(candidates, size=min(int(limit), len(candidates)), replace=False))
        picked.append(chosen)
        labels.append(np.full(len(chosen), label, np.int64))
    picked = np.concatenate(picked).astype(np.int64)
    return np.stack([i[picked], j[picked]], axis=1).reshape(-1, 2), np.concatenate(labels)


# ---------------------------------------------------------------------------------------------
# One scene


def scene_labels(scene: SceneReader, gt_h5: str | Path, out_h5: str | Path, conf: LabelsConf = LabelsConf(),
                 bins=DEFAULT_BINS, grid: int = GRID, cache_size: int = 8) -> dict:
    """Sample pairs of one scene, compute their positive patch pairs and write the cache `out_h5`.

    `scene` is the scene's reader (`vop.datasets.open_scene`). `conf.geometry` "depth" reads its depth maps,
    lazily, in a small LRU cache (`cache_size` maps: full-resolution ETH3D depth is ~100 MB per image);
    "tracks" uses the observations of 3D points in gt.h5; "auto" takes depth where the reader has it, else
    tracks. Returns what `read_labels` would return.
    """
    gt_h5 = Path(gt_h5)
    source = conf.geometry if conf.geometry != "auto" else ("depth" if scene.has_depth else "tracks")
    pairs_per_bin, num_negative, seed, stride, depth_tol = (conf.pairs_per_bin, conf.num_negative, conf.seed,
                                                            conf.stride, conf.depth_tol)
    start = time.perf_counter()
    gt = read_gt(gt_h5, tracks=source == "tracks")
    if gt.overlap is None:
        raise ValueError(f"{gt_h5}: no `overlap` dataset (the scene has no poses or no 3D structure); pairs "
                         "cannot be binned by overlap: train on a posed dataset")
    if source == "tracks" and gt.tracks is None:
        raise ValueError(f"{gt_h5}: no tracks of 3D points (overlap from {gt.overlap_source}: "
                         f"{gt.overlap_info.get('fallback_reason', 'see its log')}), and {scene.scene_dir} has no "
                         "depth maps: labels need one or the other; fix the triangulation or train on another dataset")
    pairs, bin_index = sample_pairs(gt.overlap, bins, pairs_per_bin, num_negative, seed)

    cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def depth(k: int) -> np.ndarray:
        if k in cache:
            cache.move_to_end(k)
        else:
            cache[k] = scene.depth(gt.names[k], gt.image_size[k])
            if len(cache) > max(2, cache_size):
                cache.popitem(last=False)
        return cache[k]

    def counts(i: int, j: int) -> np.ndarray:
        if source == "tracks":
            t = gt.tracks
            return track_correspondences(t.xy[i], t.point_ids[i], gt.image_size[i], t.xy[j], t.point_ids[j],
                                         gt.image_size[j], grid)
        return patch_correspondences(depth(i), gt.K[i], gt.T_w2cam[i], depth(j), gt.K[j], gt.T_w2cam[j],
                                     grid, stride, depth_tol)

    # Visit pairs sorted by image so each depth map is read about once; store in sampling order.
    positives: list[np.ndarray] = [np.zeros((0, 2), np.int64)] * len(pairs)
    for m in progress(np.lexsort((pairs[:, 1], pairs[:, 0])), desc="labels", unit="pairs", logger=logger):
        positives[m] = mutual_positives(counts(*pairs[m]))
    sizes = np.array([len(p) for p in positives], np.int64)
    labels = {
        "names": list(gt.names),
        "pairs": pairs.astype(np.int32),
        "bins": bin_index.astype(np.int8),
        "offsets": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        "positives": np.concatenate(positives).reshape(-1, 2).astype(np.int16),
        # the value the pair was binned by (gt overlap is symmetric; min() matches sample_pairs otherwise)
        "overlap": np.minimum(gt.overlap[pairs[:, 0], pairs[:, 1]], gt.overlap[pairs[:, 1], pairs[:, 0]])
        .astype(np.float32).reshape(-1),
    }
    attrs = {"grid": grid, "pairs_per_bin": pairs_per_bin, "num_negative": num_negative, "seed": seed,
             "stride": stride, "depth_tol": depth_tol, "bin_edges": np.asarray(bins, np.float64).reshape(-1, 2),
             "negative_eps": NEGATIVE_EPS, "source": source}
    with atomic_path(out_h5) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("names", data=np.array(labels["names"], dtype=h5py.string_dtype()))
        for key in ("pairs", "bins", "offsets", "positives", "overlap"):
            f.create_dataset(key, data=labels[key])
        f.attrs.update(attrs)
    labels["attrs"] = attrs
    logger.info("%s: %d pairs (%s per bin, %d negative), %d positives from %s, %.1fs", out_h5, len(pairs),
                np.bincount(bin_index[bin_index >= 0], minlength=len(bins)).tolist(), int((bin_index < 0).sum()),
                int(sizes.sum()), source, time.perf_counter() - start)
    return labels


def read_labels(path: str | Path) -> dict:
    """The arrays of a labels cache (see the module docstring), plus `attrs`."""
    path = Path(path)
    with h5py.File(path, "r") as f:
        missing = [k for k in ("names", "pairs", "bins", "offsets", "positives") if k not in f]
        if missing:
            raise KeyError(f"{path}: not a labels cache (missing {missing}); delete it and rerun vop.labels")
        # `overlap` (the value a pair was binned by) is informative only: training does not need it
        out = {key: f[key][()] for key in ("pairs", "bins", "offsets", "positives", "overlap") if key in f}
        out["names"] = decode_names(f["names"])
        out["attrs"] = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
    return out


def pair_positives(labels: dict, m: int) -> np.ndarray:
    """Positive patch pairs (P,2) of pair m: column 0 indexes patches of pairs[m,0], column 1 of pairs[m,1]."""
    offsets = labels["offsets"]
    return labels["positives"][offsets[m]:offsets[m + 1]]
