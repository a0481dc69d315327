"""Two-view and multi-view geometry that does not depend on any file format.

Pose errors (rotation angle, translation direction up to sign), the Sampson error, and the two overlaps
the ground truth uses: co-visibility of 3D points (|P_i & P_j| / min(|P_i|, |P_j|), D2-Net's score) and
the estimate from calibrated poses alone for models without points. Poses are world-to-camera (4,4);
pixel coordinates follow COLMAP (the corner of the top-left pixel is (0, 0)).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse

from vop.progress import progress


def qvec_to_rotmat(qvec) -> np.ndarray:
    """Unit quaternion (w, x, y, z) -> rotation matrix (3,3). The quaternion is normalised first."""
    w, x, y, z = np.asarray(qvec, np.float64) / np.linalg.norm(qvec)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def rotmat_to_qvec(R) -> np.ndarray:
    """Rotation matrix (3,3) -> unit quaternion (w, x, y, z) with w >= 0.

    The quaternion is the eigenvector of the largest eigenvalue of Bar-Itzhack's symmetric 4x4
    matrix, which stays accurate for every rotation (no division by a small trace).
    """
    R = np.asarray(R, np.float64)
    (r00, r01, r02), (r10, r11, r12), (r20, r21, r22) = R
    K = np.array([
        [r00 - r11 - r22, 0, 0, 0],
        [r01 + r10, r11 - r00 - r22, 0, 0],
        [r02 + r20, r12 + r21, r22 - r00 - r11, 0],
        [r21 - r12, r02 - r20, r10 - r01, r00 + r11 + r22],
    ]) / 3.0
    eigvals, eigvecs = np.linalg.eigh(K)  # uses the lower triangle
    x, y, z, w = eigvecs[:, np.argmax(eigvals)]
    qvec = np.array([w, x, y, z])
    return -qvec if w < 0 else qvec


def covisibility_overlap(point_sets: list[np.ndarray]) -> np.ndarray:
    """Overlap (N,N) float32 = |P_i & P_j| / min(|P_i|, |P_j|) of N sets of point ids.

    The D2-Net/MegaDepth co-visibility score. The diagonal is 1; a pair where either image sees no point
    has overlap 0. Intersections come from one sparse product of the image-by-point incidence matrix.
    """
    n = len(point_sets)
    if n == 0:
        return np.zeros((0, 0), np.float32)
    sets = [np.unique(np.asarray(s, np.int64)) for s in point_sets]
    rows = np.repeat(np.arange(n), [len(s) for s in sets])
    ids = np.concatenate(sets)
    _, cols = np.unique(ids, return_inverse=True)
    incidence = scipy.sparse.csr_matrix(
        (np.ones(len(ids), np.float64), (rows, cols.ravel())), shape=(n, int(cols.max(initial=-1)) + 1)
    )
    common = (incidence @ incidence.T).toarray()
    counts = np.diag(common).copy()
    smaller = np.minimum(counts[:, None], counts[None, :])
    overlap = np.divide(common, smaller, out=np.zeros_like(common), where=smaller > 0)
    np.fill_diagonal(overlap, 1.0)
    return overlap.astype(np.float32)



def _scene_depths(centers: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """A typical scene depth per camera (N,), from where its optical axis passes closest to the others'.

    For cameras i, j the points of closest approach of their axes lie at depths s_i, s_j; pairs whose axes
    meet in front of both cameras (gap below half the depth) vote, the median vote is camera i's depth.
    Cameras without a vote take the median of all votes (or twice the median baseline).
    """
    n = len(centers)
    w = centers[:, None, :] - centers[None, :, :]  # c_i - c_j
    b = axes @ axes.T
    d = np.einsum("ik,ijk->ij", axes, w)
    e = np.einsum("jk,ijk->ij", axes, w)
    denom = 1.0 - b**2
    with np.errstate(divide="ignore", invalid="ignore"):  # parallel axes: inf/nan, rejected below
        s = (b * e - d) / denom
        u = (e - b * d) / denom
        gap = np.linalg.norm(w + s[..., None] * axes[:, None, :] - u[..., None] * axes[None, :, :], axis=-1)
    ok = (denom > 1e-4) & (s > 0) & (u > 0) & (gap < 0.5 * np.minimum(s, u)) & ~np.eye(n, dtype=bool)
    votes = np.where(ok, s, np.nan)
    depths = np.full(n, np.nan)
    has_vote = ok.any(axis=1)
    depths[has_vote] = np.nanmedian(votes[has_vote], axis=1)
    if has_vote.any():
        fallback = float(np.median(depths[has_vote]))
    else:
        baselines = np.linalg.norm(w, axis=-1)[~np.eye(n, dtype=bool)]
        fallback = 2.0 * float(np.median(baselines)) if baselines.size and np.median(baselines) > 0 else 1.0
    depths[~has_vote] = fallback
    return depths


def pose_overlap(K: np.ndarray, T_w2cam: np.ndarray, image_size: np.ndarray, samples_per_side: int = 16,
                 max_angle: float = 60.0) -> np.ndarray:
    """Overlap (N,N) float32 estimated from calibrated poses alone, for models without 3D points.

    Each camera's scene is taken as a plane facing it at its typical depth (`_scene_depths`); a grid of
    samples_per_side^2 pixels of i is lifted onto it and projected into j. A point counts where it lands inside j,
    weighted by how squarely j sees i's plane: 1 when the rays from i and j to the point agree, falling
    linearly to 0 at `max_angle` degrees (a surface seen from the side or behind shares no features).
    f_ij is the mean weight; as the co-visibility |P_i & P_j| / min(|P_i|, |P_j|), overlap = max(f_ij, f_ji).
    An approximation (no occlusion, no relief) used only when a model has no 3D points.
    """
    K, T = np.asarray(K, np.float64), np.asarray(T_w2cam, np.float64)
    size = np.asarray(image_size, np.float64).reshape(-1, 2)
    n = len(K)
    if n == 0:
        return np.zeros((0, 0), np.float32)
    R, t = T[:, :3, :3], T[:, :3, 3]
    centers = -np.einsum("nji,nj->ni", R, t)
    axes = R[:, 2, :]  # the camera z axis in world coordinates
    depths = _scene_depths(centers, axes)
    min_cos = np.cos(np.radians(max_angle))
    frac = (np.arange(samples_per_side) + 0.5) / samples_per_side
    seen = np.zeros((n, n))
    for i in progress(range(n), desc="pose-based overlap", unit="images"):
        u, v = np.meshgrid(frac * size[i, 0], frac * size[i, 1])
        pix = np.stack([u.ravel(), v.ravel(), np.ones(u.size)])
        X = R[i].T @ (np.linalg.solve(K[i], pix) * depths[i] - t[i][:, None])  # (3,G) world points
        cam = np.einsum("nij,jg->nig", R, X) + t[:, :, None]  # (N,3,G) in every camera
        z = cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            proj = np.einsum("nij,njg->nig", K, cam)
            x, y = proj[:, 0] / proj[:, 2], proj[:, 1] / proj[:, 2]
        inside = (z > 0) & (x >= 0) & (x < size[:, :1]) & (y >= 0) & (y < size[:, 1:])
        ray_i = X - centers[i][:, None]  # (3,G)
        ray_j = X[None] - centers[:, :, None]  # (N,3,G)
        cos = np.einsum("kg,nkg->ng", ray_i, ray_j) / (
            np.linalg.norm(ray_i, axis=0) * np.linalg.norm(ray_j, axis=1) + 1e-12)
        weight = np.clip((cos - min_cos) / (1.0 - min_cos), 0.0, 1.0)
        seen[i] = (inside * weight).mean(axis=1)
    overlap = np.maximum(seen, seen.T)
    np.fill_diagonal(overlap, 1.0)
    return overlap.astype(np.float32)



def normalize_points(kpts: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pixel coordinates to the normalised image plane of camera K."""
    K = np.asarray(K, np.float64)
    return (kpts - K[[0, 1], [2, 2]]) / K[[0, 1], [0, 1]]


def mean_focal(K0: np.ndarray, K1: np.ndarray) -> float:
    return float(np.mean([K0[0, 0], K0[1, 1], K1[0, 0], K1[1, 1]]))


def sampson_error_px(kpts0: np.ndarray, kpts1: np.ndarray, K0: np.ndarray, K1: np.ndarray,
                     R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(M,) Sampson distance of each match to the epipolar geometry of (R, t), in pixels (mean focal)."""
    K0, K1 = np.asarray(K0, np.float64), np.asarray(K1, np.float64)
    x0 = np.c_[normalize_points(np.asarray(kpts0, np.float64), K0), np.ones(len(kpts0))]
    x1 = np.c_[normalize_points(np.asarray(kpts1, np.float64), K1), np.ones(len(kpts1))]
    t = np.asarray(t, np.float64).ravel()
    E = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]]) @ np.asarray(R, np.float64)
    Ex0 = x0 @ E.T  # epipolar lines in image 1
    Etx1 = x1 @ E  # epipolar lines in image 0
    num = np.einsum("ij,ij->i", x1, Ex0)
    den = Ex0[:, 0] ** 2 + Ex0[:, 1] ** 2 + Etx1[:, 0] ** 2 + Etx1[:, 1] ** 2
    return np.abs(num) / np.sqrt(np.maximum(den, 1e-300)) * mean_focal(K0, K1)


def _angle_deg(cos: float) -> float:
    return math.degrees(math.acos(float(np.clip(cos, -1.0, 1.0))))


def relative_pose_error(T_0to1: np.ndarray | None, R: np.ndarray | None, t: np.ndarray | None,
                        ignore_gt_t_norm: float = 0.0) -> tuple[float, float]:
    """(rotation error, translation-direction error) in degrees; (inf, inf) when R or t is None.

    The translation error is the angle between directions up to sign (min(a, 180-a)): an essential
    matrix fixes t only up to sign, as the SuperGlue/LoFTR evaluation accounts for. A ground-truth
    baseline of norm <= ignore_gt_t_norm has no direction, so its error is 0.
    """
    if R is None or t is None or T_0to1 is None:
        return math.inf, math.inf
    T_0to1 = np.asarray(T_0to1, np.float64)
    R_gt, t_gt = T_0to1[:3, :3], T_0to1[:3, 3]
    R = np.asarray(R, np.float64)
    t = np.asarray(t, np.float64).ravel()
    R_err = _angle_deg((np.trace(R_gt.T @ R) - 1.0) / 2.0)

    norm_gt, norm = np.linalg.norm(t_gt), np.linalg.norm(t)
    if norm_gt <= ignore_gt_t_norm or norm_gt == 0.0:
        t_err = 0.0
    elif norm == 0.0:
        t_err = math.inf
    else:
        t_err = _angle_deg(t @ t_gt / (norm * norm_gt))
        t_err = min(t_err, 180.0 - t_err)
    return R_err, t_err
