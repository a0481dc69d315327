"""An image list, MIRorR's interface for matchable image retrieval, and the GL3D test set in it.

`image_list` source::

    {root}/image_list.txt     one image path per line, relative to root or absolute (the `image_list` key)
    {root}/gt_pairs.txt       optional (`gt_pairs`): `i j` per line, 0-based line numbers of the list, GL3D's
                              format; j is a partner of i (directed, as MIRorR reads it), `i i` is ignored

Every image is a query against all the others (register mode). Image names are the paths as the list
writes them, the list's order is the scene's image order (so the indices of match_pairs.txt and of the
pairs file are line numbers of the list). Each method writes, besides pairs.txt, MIRorR's
`match_pairs.txt` (`i j score`, each query's list starting with its self pair), K = 200 lines per query
by default (the dataset's `k`), and results/{dataset}/gl3d.csv scores them with mAP@K exactly as
MIRorR's retrieval/compute_overlap_benchmark.py (vop.protocols.gl3d). Without `gt_pairs` there is
nothing to score: the table says so, and the oracle is refused.

`gl3d` source: the GL3D test set as MIRorR releases it, downloaded (or under `root`)::

    {root}/eval_img_list.txt                          9368 lines, eval_data/<scene>/retrieval_eval/DJI_0001.JPG
    {root}/gl3d_gt_pairs                              the ground-truth pairs
    {root}/eval_data/<scene>/retrieval_eval/*.JPG     eval_data.zip, 896 x 896 images
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from vop.conf import Conf
from vop.datasets import ArchivePart, NoOptions, SceneReader, no_poses, refuse_spaces
from vop.images import image_sizes
from vop.io import GroundTruth, Relevance
from vop.protocols import gl3d


@dataclass(frozen=True, kw_only=True)
class ImageListOptions(Conf):
    """`datasets.<name>` keys of an image-list dataset: the list and the optional ground-truth pairs
    (relative to the scene folder, or absolute)."""

    image_list: str = "image_list.txt"
    gt_pairs: str | None = None


class ImageListScene(SceneReader):
    """Images named by a list file; ground truth (optional) as GL3D's pairs of list indices."""

    source = "image_list"
    Options = ImageListOptions
    has_poses = False
    single_scene = True
    protocol = "gl3d"
    default_k = gl3d.TOP_K
    min_k = 2  # the self pair and one image

    @classmethod
    def has_ground_truth(cls, options) -> bool:
        return getattr(options, "gt_pairs", None) is not None

    @classmethod
    def retrieval_depth(cls, k):
        return k - 1 if isinstance(k, int) else k  # the self pair is one of match_pairs.txt's K lines

    @property
    def image_dir(self) -> Path:
        return self.scene_dir

    @property
    def list_path(self) -> Path:
        return self.scene_dir / self.options.image_list

    @property
    def gt_pairs_path(self) -> Path | None:
        return self.scene_dir / self.options.gt_pairs if self.options.gt_pairs else None

    def input_files(self) -> list[Path]:
        return [self.list_path] + ([self.gt_pairs_path] if self.gt_pairs_path else [])

    def image_names(self) -> list[str]:
        """The list's paths, in its order; each must be a file, below root or absolute, and listed once."""
        if not self.list_path.is_file():
            raise FileNotFoundError(f"{self.list_path}: image list not found; check the dataset's `root` and "
                                    "`image_list`")
        names = gl3d.read_image_list(self.list_path)
        if not names:
            raise ValueError(f"{self.list_path}: the image list is empty")
        seen: dict[str, int] = {}
        for lineno, name in enumerate(names, 1):
            if ".." in PurePosixPath(name).parts:
                raise ValueError(f"{self.list_path}:{lineno}: {name!r} goes up with '..'; give paths below the "
                                 "root, or absolute ones")
            if name in seen:
                raise ValueError(f"{self.list_path}:{lineno}: {name!r} is listed again (first on line "
                                 f"{seen[name]}); every image once, pair files index the list by line")
            seen[name] = lineno
        refuse_spaces(names, self.list_path)
        missing = [n for n in names if not (self.image_dir / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{self.image_dir / missing[0]}: listed in {self.list_path} but not found "
                                    f"({len(missing)} missing in all); paths are relative to {self.image_dir} "
                                    "unless absolute")
        return names

    def partners(self, num_images: int) -> list[list[int]] | None:
        """Per image, its ground-truth partners (gl3d.read_gt_pairs), or None without `gt_pairs`."""
        if self.gt_pairs_path is None:
            return None
        if not self.gt_pairs_path.is_file():
            raise FileNotFoundError(f"{self.gt_pairs_path}: ground-truth pairs not found; check `gt_pairs`")
        return gl3d.read_gt_pairs(self.gt_pairs_path, num_images)

    def ground_truth(self) -> GroundTruth:
        names = self.image_names()
        gt = no_poses(names, image_sizes(self.image_dir, names))
        partners = self.partners(len(names))
        if partners is not None:
            gt.relevance = pairs_relevance(partners)
        return gt


def pairs_relevance(partners: list[list[int]]) -> Relevance:
    """Grade 1 for every (image, partner) of the ground truth, each once."""
    q = np.concatenate([np.full(len(set(p)), i, np.int64) for i, p in enumerate(partners)] or [np.zeros(0, np.int64)])
    d = np.concatenate([np.array(sorted(set(p)), np.int64) for p in partners] or [np.zeros(0, np.int64)])
    return Relevance(q, d, np.ones(len(q), np.float32))


# GL3D test set: the images from MIRorR's README, the lists from its repository
GL3D_IMAGES_URL = "https://s3-ap-southeast-1.amazonaws.com/awsiostest-deployments-mobilehub-806196172/GL3D"
GL3D_LISTS_URL = "https://raw.githubusercontent.com/hlzz/mirror/master/data/gl3d"
GL3D_LIST, GL3D_PAIRS, GL3D_ARCHIVE = "eval_img_list.txt", "gl3d_gt_pairs", "eval_data.zip"


class Gl3dScene(ImageListScene):
    """The GL3D test set (9368 images, MIRorR's list and ground-truth pairs)."""

    source = "gl3d"
    Options = NoOptions
    url = GL3D_IMAGES_URL

    @classmethod
    def has_ground_truth(cls, options) -> bool:
        return True

    @classmethod
    def archive_parts(cls, scene: str) -> list[ArchivePart]:
        return [ArchivePart("eval_data", GL3D_ARCHIVE, "eval_data/"), ArchivePart(GL3D_LIST, GL3D_LIST, ""),
                ArchivePart(GL3D_PAIRS, GL3D_PAIRS, "")]

    @classmethod
    def archive_url(cls, archive: str) -> str:
        return f"{GL3D_IMAGES_URL if archive == GL3D_ARCHIVE else GL3D_LISTS_URL}/{archive}"

    @property
    def list_path(self) -> Path:
        return self.scene_dir / GL3D_LIST

    @property
    def gt_pairs_path(self) -> Path:
        return self.scene_dir / GL3D_PAIRS

    def input_files(self) -> list[Path]:
        return [self.list_path, self.gt_pairs_path, self.scene_dir / "eval_data"]



