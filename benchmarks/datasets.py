"""Dataset readers: the two loops that grow with the dataset, against straightforward versions.

1. Image sizes of a folder (InLoc has ~10k cutouts): JPEG/PNG header parsing vs decoding with OpenCV.
2. Overlap from poses (COLMAP models without 3D points): `pose_overlap` (one vectorised pass per camera)
   vs a loop over every pair of cameras. Both must give the same matrix.

    python benchmarks/datasets.py [--images 200] [--cameras 300]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from vop import geometry
from vop.images import image_size


def pose_overlap_per_pair(K, T, size, grid=16, max_angle=60.0):
    """The straightforward version: the same model, one pair at a time."""
    R, t = T[:, :3, :3], T[:, :3, 3]
    centers = -np.einsum("nji,nj->ni", R, t)
    depths = geometry._scene_depths(centers, R[:, 2, :])
    min_cos = np.cos(np.radians(max_angle))
    frac = (np.arange(grid) + 0.5) / grid
    n = len(K)
    seen = np.zeros((n, n))
    for i in range(n):
        u, v = np.meshgrid(frac * size[i, 0], frac * size[i, 1])
        pix = np.stack([u.ravel(), v.ravel(), np.ones(u.size)])
        X = R[i].T @ (np.linalg.solve(K[i], pix) * depths[i] - t[i][:, None])
        for j in range(n):
            cam = R[j] @ X + t[j][:, None]
            proj = K[j] @ cam
            with np.errstate(divide="ignore", invalid="ignore"):
                x, y = proj[0] / proj[2], proj[1] / proj[2]
            inside = (cam[2] > 0) & (x >= 0) & (x < size[j, 0]) & (y >= 0) & (y < size[j, 1])
            ray_i, ray_j = X - centers[i][:, None], X - centers[j][:, None]
            cos = (ray_i * ray_j).sum(0) / (np.linalg.norm(ray_i, axis=0) * np.linalg.norm(ray_j, axis=0) + 1e-12)
            seen[i, j] = (inside * np.clip((cos - min_cos) / (1 - min_cos), 0, 1)).mean()
    overlap = np.maximum(seen, seen.T)
    np.fill_diagonal(overlap, 1.0)
    return overlap.astype(np.float32)


def orbit(n, rng):
    """n cameras on a ring around the origin, looking at it, 1600x1200 with f=1200."""
    K = np.tile(np.array([[1200.0, 0, 800], [0, 1200, 600], [0, 0, 1]]), (n, 1, 1))
    T = np.tile(np.eye(4), (n, 1, 1))
    for k, a in enumerate(rng.uniform(0, 2 * np.pi, n)):
        c = np.array([10 * np.sin(a), rng.normal(0, 0.5), -10 * np.cos(a)])
        z = -c / np.linalg.norm(c)
        x = np.cross([0, 1, 0], z)
        x /= np.linalg.norm(x)
        R = np.stack([x, np.cross(z, x), z])  # world -> camera rows
        T[k, :3, :3], T[k, :3, 3] = R, -R @ c
    return K, T, np.tile([1600, 1200], (n, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--cameras", type=int, default=300)
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        image = cv2.GaussianBlur(rng.integers(0, 255, (1200, 1600, 3), dtype=np.uint8), (9, 9), 3)
        for k in range(args.images):
            paths.append(Path(tmp) / f"{k}.jpg")
            cv2.imwrite(str(paths[-1]), image)
        start = time.perf_counter()
        header = [image_size(p) for p in paths]
        t_header = time.perf_counter() - start
        start = time.perf_counter()
        decoded = []
        for p in paths:
            im = cv2.imread(str(p), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
            decoded.append((im.shape[1], im.shape[0]))
        t_decode = time.perf_counter() - start
    assert header == decoded
    print(f"image sizes of {args.images} JPEGs 1600x1200: headers {t_header * 1e3:.1f} ms, "
          f"decoding {t_decode * 1e3:.0f} ms ({t_decode / t_header:.0f}x)")

    K, T, size = orbit(args.cameras, rng)
    start = time.perf_counter()
    fast = geometry.pose_overlap(K, T, size)
    t_fast = time.perf_counter() - start
    start = time.perf_counter()
    slow = pose_overlap_per_pair(K, T, size)
    t_slow = time.perf_counter() - start
    np.testing.assert_allclose(fast, slow, atol=1e-6)
    print(f"pose_overlap of {args.cameras} cameras: vectorised {t_fast:.2f} s, per pair {t_slow:.2f} s "
          f"({t_slow / t_fast:.1f}x), same matrix")


if __name__ == "__main__":
    main()
