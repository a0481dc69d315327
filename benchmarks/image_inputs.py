"""What the workflow pays at start to make the images inputs of the jobs that read them.

The workflow lists each scene's images when it builds the DAG (vop.datasets.Dataset.image_needs), so a
replaced image reruns what reads it. For a COLMAP model that listing reads the image names from images.bin
alone (vop.datasets.colmap.model_image_names); the straightforward way reads the whole model with pycolmap.
Both run here on one synthetic binary model (N images, M observations each, a third of them 3D points), and
the names are checked as the readers check them (vop.io.check_image_name), with the plain-name fast path and
without it.

    python benchmarks/image_inputs.py --images 5000 --observations 2000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pycolmap

from vop import io
from vop.datasets import colmap


def write_model(path: Path, num_images: int, observations: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    model = pycolmap.Reconstruction()
    model.add_camera_with_trivial_rig(pycolmap.Camera(model="PINHOLE", width=1600, height=1200,
                                                      params=[1200.0, 1200.0, 800.0, 600.0], camera_id=1))
    for i in range(num_images):
        xy = rng.uniform(0, 1200, (observations, 2))
        image = pycolmap.Image(name=f"seq{i % 7}/IMG_{i:06d}.JPG", points2D=[pycolmap.Point2D(p) for p in xy],
                               camera_id=1, image_id=i + 1)
        model.add_image_with_trivial_frame(image, pycolmap.Rigid3d())
    used = np.zeros(num_images, np.int64)  # observations of each image given a point so far
    for _ in range(num_images * observations // 9):  # tracks of 3: a third of the observations have a point
        track = pycolmap.Track()
        for image in rng.choice(num_images, 3, replace=False):
            track.add_element(int(image) + 1, int(used[image] % observations))
            used[image] += 1
        model.add_point3D(rng.normal(size=3), track, np.zeros(3, np.uint8))
    path.mkdir(parents=True, exist_ok=True)
    model.write_binary(str(path))


def timed(fn, repeats: int = 3):
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--observations", type=int, default=2000, help="points2D per image")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "sparse"
        start = time.perf_counter()
        write_model(model_dir, args.images, args.observations)
        size = sum(f.stat().st_size for f in model_dir.iterdir()) / 1e6
        print(f"model: {args.images} images x {args.observations} observations, {size:.0f} MB binary "
              f"(written in {time.perf_counter() - start:.0f} s)")
        t_ours, names = timed(lambda: colmap.model_image_names(model_dir))
        t_full, full = timed(lambda: sorted(im.name for im in pycolmap.Reconstruction(str(model_dir)).images.values()),
                             repeats=1)
        assert names == full
        print(f"image names: images.bin alone {t_ours * 1e3:.1f} ms, the whole model with pycolmap "
              f"{t_full * 1e3:.0f} ms ({t_full / t_ours:.0f}x)")
        t_check, _ = timed(lambda: [io.check_image_name(n, model_dir) for n in names])
        t_loop, _ = timed(lambda: [io._character_problem(n) for n in names])
        print(f"name checks of {len(names)} names: {t_check * 1e3:.1f} ms (plain names at once), "
              f"{t_loop * 1e3:.1f} ms character by character")


if __name__ == "__main__":
    main()
