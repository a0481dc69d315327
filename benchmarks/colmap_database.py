"""Write speed of vop.colmap_database.write_database on a large synthetic pair list.

Random keypoints and matches (the writer never looks at their geometry): `--images` images with
`--keypoints` keypoints each, `--pairs` distinct random pairs with `--matches` matches each. Written
twice: raw matches only (what verification reads), then raw matches plus the same rows as verified
two-view geometries (what skipping verification writes). Prints rows per second and the file size.

    PYTHONPATH=src .venv/bin/python benchmarks/colmap_database.py --images 2000 --pairs 100000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from vop.colmap_database import read_counts, write_database


def random_pairs(rng, num_images: int, num_pairs: int) -> np.ndarray:
    """`num_pairs` distinct unordered pairs (i < j) of image indices."""
    if num_pairs > num_images * (num_images - 1) // 2:
        raise SystemExit(f"--pairs {num_pairs} exceeds the {num_images * (num_images - 1) // 2} pairs of "
                         f"{num_images} images; raise --images")
    found = np.zeros((0, 2), np.int64)
    while len(found) < num_pairs:
        ij = np.sort(rng.integers(0, num_images, (2 * num_pairs, 2)), axis=1)
        ij = ij[ij[:, 0] != ij[:, 1]]
        found = np.unique(np.concatenate([found, ij]), axis=0)
    return found[rng.permutation(len(found))[:num_pairs]]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--keypoints", type=int, default=2000)
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--matches", type=int, default=200, help="matches per pair")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    names = [f"img{i:06d}.jpg" for i in range(args.images)]
    keypoints = {n: rng.uniform(0, 640, (args.keypoints, 2)).astype(np.float32) for n in names}
    cameras = [(None, (640, 480))] * args.images
    pairs = random_pairs(rng, args.images, args.pairs)
    # One match array shared by all pairs: generating 100k arrays would be timed otherwise.
    m = np.stack([rng.permutation(args.keypoints)[:args.matches],
                  rng.permutation(args.keypoints)[:args.matches]], axis=1)
    matches = {(names[i], names[j]): m for i, j in pairs}
    print(f"{args.images} images x {args.keypoints} keypoints, {len(pairs)} pairs x {args.matches} matches")

    with tempfile.TemporaryDirectory(prefix="vop-db-bench-") as tmp:
        for label, inliers in (("matches", None), ("matches + two-view geometries", matches)):
            path = Path(tmp) / "database.db"
            start = time.perf_counter()
            stats = write_database(path, names, cameras, keypoints, matches=matches, inlier_matches=inliers)
            seconds = time.perf_counter() - start
            counts = read_counts(path)
            rows = stats.pairs + stats.verified_pairs
            assert counts["matched_pairs"] == len(pairs) and counts["matches"] == len(pairs) * args.matches
            print(f"{label:32s} {rows:8d} rows in {seconds:6.2f}s = {rows / seconds:8.0f} rows/s "
                  f"({stats.pairs / seconds:8.0f} pairs/s), {path.stat().st_size / 1e6:7.1f} MB")


if __name__ == "__main__":
    main()
