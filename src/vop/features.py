"""Dump backbone features of a scene's images to features-{backbone}.h5 (DESIGN.md, "features").

Each image is resized to 224x224 (both axes, as the VOP reference), passed through the backbone in
batches while a thread pool reads the next batch, and written as one h5 group per image name:
`global_descriptor` (C,) float32, `patch_descriptors` (256,C) float16, `keypoints` (256,2) float32
(patch centres in resized-image pixels), `image_size` (2,) original [w,h].

    vop features --image-dir D --names-from gt.h5 --backbone dense_sift --out features.h5
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import cv2
import h5py
import numpy as np
import torch

from vop import io
from vop.backbones import Backbone
from vop.grid import patch_keypoints
from vop.images import read_image
from vop.progress import progress

logger = logging.getLogger(__name__)


def resize_image(image: np.ndarray, size: int = Backbone.image_size) -> np.ndarray:
    """Resize both axes to size x size (aspect not kept, as the VOP reference); INTER_AREA."""
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def read_names_file(path: str | Path) -> list[str]:
    """Image names from a gt.h5 (root dataset `names`) or a text file with one name per line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: names file not found")
    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as f:
            if "names" not in f:
                raise KeyError(f"{path}: no root dataset `names`; pass the scene's gt.h5 or a text file of names")
        return io.read_names(path)
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def crop_image(image: np.ndarray, box, path: str | Path = "") -> np.ndarray:
    """The pixels of integer box (x1, y1, x2, y2) of an image, x2 and y2 excluded (PIL's crop)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    if not (0 <= x0 < x1 <= image.shape[1] and 0 <= y0 < y1 <= image.shape[0]):
        raise ValueError(f"{path}: crop box {[x0, y0, x1, y1]} is not inside the {image.shape[1]}x{image.shape[0]} "
                         "image; the ground truth belongs to other images: rerun the ground_truth rule")
    return image[y0:y1, x0:x1]


def _load(image_dir: Path, name: str, size: int, view=None) -> tuple[np.ndarray, np.ndarray]:
    if view is None:
        image = read_image(image_dir / name)
    else:  # the image is a crop of a file (revisitop's queries)
        file, box = view
        image = crop_image(read_image(image_dir / file), box, image_dir / file)
    original_size = np.array([image.shape[1], image.shape[0]], np.int64)  # [w, h]
    return resize_image(image, size), original_size


def extract_features(
    image_dir: str | Path,
    names: Sequence[str],
    backbone: Backbone,
    batch_size: int,
    num_workers: int = 2,
    with_flipped: bool = False,
    views: Mapping[str, tuple[str, np.ndarray]] | None = None,
) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """Yield (name, groups of the features file) in the order of `names`, batch by batch.

    `views` (gt.h5's, vop.io.read_views) maps a name to (file, crop box) where the image is a crop of a
    file: the crop is what the backbone sees, and `image_size` is the crop's.

    With `with_flipped`, each group also holds `patch_descriptors_flipped`: the tokens of the
    horizontally mirrored image (in its own grid order), for the encoder's flip augmentation.

    The images of batch k+1 are read and resized in a thread pool while batch k runs through the
    backbone, so neither the disk nor the model waits on the other.
    """
    image_dir = Path(image_dir)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    keypoints = patch_keypoints(backbone.grid, backbone.patch_size)
    batches = [list(names[i : i + batch_size]) for i in range(0, len(names), batch_size)]
    pool = ThreadPoolExecutor(max(1, num_workers), thread_name_prefix="vop-read")
    try:

        def submit(batch: list[str]) -> list[Future]:
            return [pool.submit(_load, image_dir, name, backbone.image_size, (views or {}).get(name))
                    for name in batch]

        pending = submit(batches[0]) if batches else []
        for k, batch in enumerate(batches):
            loaded = [future.result() for future in pending]
            pending = submit(batches[k + 1]) if k + 1 < len(batches) else []
            pixels = torch.from_numpy(np.stack([image for image, _ in loaded]))
            images = pixels.to(backbone.device).permute(0, 3, 1, 2).float().div_(255.0)
            global_descriptors, patch_descriptors = backbone(images)
            global_descriptors = global_descriptors.float().cpu().numpy()
            patch_descriptors = patch_descriptors.cpu().numpy().astype(np.float16)
            if with_flipped:
                flipped = backbone(images.flip(-1))[1].cpu().numpy().astype(np.float16)
            for i, name in enumerate(batch):
                groups = {
                    "global_descriptor": global_descriptors[i],
                    "patch_descriptors": patch_descriptors[i],
                    "keypoints": keypoints,
                    "image_size": loaded[i][1],
                }
                if with_flipped:
                    groups["patch_descriptors_flipped"] = flipped[i]
                yield name, groups
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def dump_features(
    image_dir: str | Path,
    names: Sequence[str],
    backbone: Backbone,
    out_path: str | Path,
    batch_size: int,
    num_workers: int = 2,
    with_flipped: bool = False,
    views: Mapping[str, tuple[str, np.ndarray]] | None = None,
) -> Path:
    """Write features-{backbone}.h5 for `names` (paths relative to `image_dir`; crops of files where
    `views` says so), atomically."""
    names = list(names)
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise ValueError(f"duplicate image names {duplicates[:3]}: each image gets one group in {out_path}")
    start = time.perf_counter()
    groups = progress(extract_features(image_dir, names, backbone, batch_size, num_workers, with_flipped, views),
                      len(names), "features", "images", logger=logger)
    # Written while extracted (vitl14 is 0.5 MB per image) into a temporary file, moved into place at the end.
    io.write_image_groups(out_path, io.Streamed(groups))
    elapsed = time.perf_counter() - start
    logger.info(
        "wrote %s features of %d images to %s (%.1f images/s)",
        backbone.name, len(names), out_path, len(names) / max(elapsed, 1e-9),
    )
    return Path(out_path)
