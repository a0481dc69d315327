"""A folder of images and nothing else ("your own photos" without a reconstruction).

Every image file under the folder (recursively; .jpg .jpeg .png .bmp .tif .tiff .webp, any case) is one
image, named by its path relative to the folder. There is no ground truth: gt.h5 holds the names and image
sizes with NaN calibration and poses and no overlap, so retrieval runs and pose metrics do not.

Image sizes come from the file headers without decoding (vop.images.image_size), as stored, i.e. before
any EXIF rotation, which is also how the feature stages read images (vop.images.read_image).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vop.conf import Conf
from vop.datasets import SceneReader, no_poses
from vop.images import IMAGE_SUFFIXES, image_sizes


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

    def image_names(self) -> list[str]:
        names = list_images(self.image_dir)
        if not names:
            raise FileNotFoundError(f"{self.image_dir}: no images ({', '.join(IMAGE_SUFFIXES)}); "
                                    "check the dataset's `root` and `images` in the config")
        return names

    def ground_truth(self):
        names = self.checked_image_names()
        return no_poses(names, image_sizes(self.image_dir, names))
