"""A folder of images and nothing else ("your own photos" without a reconstruction).

Every image file under the folder (recursively; .jpg .jpeg .png .bmp .tif .tiff .webp, any case) is one
image, named by its path relative to the folder. There is no ground truth: gt.h5 holds the names and image
sizes with NaN calibration and poses and no overlap, so retrieval runs and pose metrics do not.

Image sizes come from the file headers (JPEG SOF, PNG IHDR) without decoding, as stored, i.e. before any
EXIF rotation, which is also how the feature stages read images; other formats are decoded with OpenCV.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vop.conf import Conf
from vop.datasets import SceneReader, no_poses

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# JPEG start-of-frame markers (baseline, progressive, lossless, ...): they carry the image size.
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def list_images(folder: str | Path) -> list[str]:
    """Image files under `folder`, as sorted POSIX paths relative to it (hidden files and folders skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: image folder not found; check the dataset's `root` and `images`")
    names = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and not any(p.startswith(".") for p in rel.parts):
            names.append(rel.as_posix())
    return sorted(names)


def _jpeg_size(f) -> tuple[int, int] | None:
    f.seek(2)
    while True:
        byte = f.read(1)
        while byte and byte != b"\xff":  # skip to the next marker
            byte = f.read(1)
        while byte == b"\xff":  # fill bytes
            byte = f.read(1)
        if not byte:
            return None
        marker = byte[0]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            continue
        length_bytes = f.read(2)
        if len(length_bytes) < 2:
            return None
        length = struct.unpack(">H", length_bytes)[0]
        if marker in _SOF_MARKERS:
            data = f.read(5)
            if len(data) < 5:
                return None
            height, width = struct.unpack(">HH", data[1:5])
            return width, height
        f.seek(length - 2, 1)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file, from its header when it is a JPEG or PNG."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(24)
        size = None
        if head[:2] == b"\xff\xd8":
            size = _jpeg_size(f)
        elif head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            size = struct.unpack(">II", head[16:24])
    if size is None or min(size) <= 0:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
        if image is None:
            raise ValueError(f"{path}: not a readable image (corrupt or unsupported format); remove or replace it")
        size = (image.shape[1], image.shape[0])
    return int(size[0]), int(size[1])


def image_sizes(image_dir: str | Path, names: list[str]) -> np.ndarray:
    """(N,2) [w,h] of the named images."""
    return np.array([image_size(Path(image_dir) / n) for n in names], np.int64).reshape(len(names), 2)


@dataclass(frozen=True, kw_only=True)
class FolderOptions(Conf):
    """`datasets.<name>` keys of a folder dataset: the image folder relative to the scene folder."""

    images: str = ""


class FolderScene(SceneReader):
    """Images only, found recursively in the image folder."""

    source = "folder"
    Options = FolderOptions
    has_poses = False
    single_scene = True

    @property
    def image_dir(self) -> Path:
        return self.scene_dir / self.options.images if self.options.images else self.scene_dir

    def input_files(self) -> list[Path]:
        return [self.image_dir]

    def ground_truth(self):
        names = list_images(self.image_dir)
        if not names:
            raise FileNotFoundError(f"{self.image_dir}: no images ({', '.join(IMAGE_SUFFIXES)}); "
                                    "check the dataset's `root` and `images` in the config")
        return no_poses(names, image_sizes(self.image_dir, names))
