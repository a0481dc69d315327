"""Revisited Oxford 5k and Paris 6k (filipradenovic/revisitop), in the layout of its download script::

    {root}/roxford5k/gnd_roxford5k.pkl         imlist, qimlist, gnd: per query bbx, easy, hard, junk
    {root}/roxford5k/jpg/all_souls_000000.jpg  every image, flat (the archives' folders dropped)
    {root}/rparis6k/gnd_rparis6k.pkl
    {root}/rparis6k/jpg/paris_defense_000000.jpg

A scene is one of the two datasets (both by default). The ground-truth pickle is read with a restricted
unpickler (vop.protocols.revisitop.load_ground_truth): dicts, lists, strings and numpy arrays only.
Image names, relative to `jpg/`: the database is `imlist` (`all_souls_000000.jpg`), the queries are
`query/<qimlist>.jpg`, each the crop of its file to its `bbx` (rounded as PIL's `crop` rounds it, within
the image), which the feature stage cuts out before extracting: the protocol's query. The queries are
retrieved against the database (`mode: retrieve`), every method ranks the whole database, and
results/{dataset}/revisitop.csv scores the rankings under the Easy, Medium and Hard protocols.

gt.h5 has no poses; its `relevance` grades easy 3, hard 2 and junk 1, so that the oracle's ranking
(easy, hard, junk, then the rest) is perfect under every protocol.

Downloads (resumable, checked like the other sources): the images from the Oxford VGG servers, the
pickles from revisitop's server; with `url` set, every file from that one folder instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vop.datasets import ArchivePart, SceneReader, no_poses
from vop.images import image_size
from vop.io import GroundTruth, Relevance, check_image_name
from vop.protocols import revisitop

SCENES = ("roxford5k", "rparis6k")
# scene -> (server folder, image archives), as in revisitop's python/download.py
IMAGE_ARCHIVES = {
    "roxford5k": ("https://www.robots.ox.ac.uk/~vgg/data/oxbuildings", ("oxbuild_images-v1.tgz",)),
    "rparis6k": ("https://www.robots.ox.ac.uk/~vgg/data/parisbuildings", ("paris_1-v1.tgz", "paris_2-v1.tgz")),
}
GND_URL = "http://cmp.felk.cvut.cz/revisitop/data/datasets"
QUERY_PREFIX = "query/"
GRADES = {"easy": 3.0, "hard": 2.0, "junk": 1.0}  # the oracle's order


def gnd_file(scene: str) -> str:
    return f"gnd_{scene}.pkl"


def pil_box(bbx, width: int, height: int) -> np.ndarray:
    """The pixel box PIL's `Image.crop(bbx)` cuts (each coordinate rounded), kept inside the image."""
    x0, y0, x1, y1 = (int(round(float(v))) for v in bbx)
    x0, x1 = min(max(x0, 0), width), min(max(x1, 0), width)
    y0, y1 = min(max(y0, 0), height), min(max(y1, 0), height)
    return np.array([x0, y0, x1, y1], np.float64)


class RevisitopScene(SceneReader):
    """One of Revisited Oxford / Paris: cropped queries against the database."""

    source = "revisitop"
    has_poses = False
    url = GND_URL
    default_scenes = SCENES
    default_mode = "retrieve"
    default_queries = f"{QUERY_PREFIX}*"
    protocol = "revisitop"
    default_k = "all"

    def __init__(self, root: str | Path, scene: str | None = None, **options):
        if not scene:
            raise ValueError(f"{root}: a revisitop dataset holds one folder per dataset; name the scene "
                             f"({' or '.join(SCENES)})")
        super().__init__(root, scene, **options)

    @classmethod
    def has_ground_truth(cls, options) -> bool:
        return True

    @classmethod
    def archive_parts(cls, scene: str) -> list[ArchivePart]:
        parts = [ArchivePart(f"{scene}-gnd", gnd_file(scene), "", target=scene)]
        _, archives = IMAGE_ARCHIVES.get(scene, ("", ()))
        if not archives:
            raise ValueError(f"revisitop: no download known for scene {scene!r} (known: {', '.join(SCENES)}); "
                             "set the dataset's `root` to a folder holding it")
        parts += [ArchivePart(f"{scene}-{archive.split('.')[0]}", archive, "", target=f"{scene}/jpg", flatten=True)
                  for archive in archives]
        return parts

    @classmethod
    def archive_url(cls, archive: str) -> str:
        for scene, (folder, archives) in IMAGE_ARCHIVES.items():
            if archive in archives:
                return f"{folder}/{archive}"
            if archive == gnd_file(scene):
                return f"{GND_URL}/{scene}/{archive}"
        raise ValueError(f"revisitop: unknown file {archive!r}")

    @property
    def gnd_path(self) -> Path:
        return self.scene_dir / gnd_file(self.scene)

    @property
    def image_dir(self) -> Path:
        return self.scene_dir / "jpg"

    def input_files(self) -> list[Path]:
        return [self.gnd_path, self.image_dir]

    def image_files(self) -> list[Path]:
        database, queries = self.names(self.ground())
        for name in database + queries:
            check_image_name(name, self.image_dir)
        return [self.image_dir / f for f in dict.fromkeys(database + [q[len(QUERY_PREFIX):] for q in queries])]

    def ground(self) -> revisitop.Ground:
        """The revisitop ground truth of the scene (imlist, qimlist, per-query labels)."""
        if not self.gnd_path.is_file():
            raise FileNotFoundError(f"{self.gnd_path}: revisitop ground truth not found; {self.root} must hold "
                                    f"{self.scene}/{gnd_file(self.scene)} and {self.scene}/jpg/ (revisitop's "
                                    "python/download.py layout)")
        return revisitop.load_ground_truth(self.gnd_path)

    @staticmethod
    def names(ground: revisitop.Ground) -> tuple[list[str], list[str]]:
        """(database names, query names) of a ground truth, in imlist and qimlist order."""
        return [f"{n}.jpg" for n in ground.imlist], [f"{QUERY_PREFIX}{n}.jpg" for n in ground.qimlist]

    def ground_truth(self) -> GroundTruth:
        ground = self.ground()
        database, queries = self.names(ground)
        files = database + [f"{n}.jpg" for n in ground.qimlist]
        missing = [f for f in files if not (self.image_dir / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{self.image_dir / missing[0]}: image listed in {self.gnd_path} is missing "
                                    f"({len(missing)} in all); download and extract the images again")
        if len(set(database)) != len(database) or len(set(ground.qimlist)) != len(ground.qimlist):
            raise ValueError(f"{self.gnd_path}: imlist or qimlist names an image twice")
        sizes = [image_size(self.image_dir / f) for f in database]
        views = {}
        for name, file, q in zip(queries, files[len(database):], ground.queries, strict=True):
            box = pil_box(q.bbx, *image_size(self.image_dir / file))
            if box[2] <= box[0] or box[3] <= box[1]:
                raise ValueError(f"{self.gnd_path}: the bbx {q.bbx.tolist()} of query {file} is empty inside the image")
            views[name] = (file, box)
            sizes.append((int(box[2] - box[0]), int(box[3] - box[1])))
        gt = no_poses(database + queries, np.array(sizes, np.int64))
        gt.views = views
        gt.relevance = labels_relevance(ground, query_offset=len(database))
        return gt


def labels_relevance(ground: revisitop.Ground, query_offset: int) -> Relevance:
    """easy 3, hard 2, junk 1 per query (the highest where an image carries two labels)."""
    q_idx, d_idx, grade = [], [], []
    for q, labels in enumerate(ground.queries):
        for key, value in GRADES.items():
            idx = getattr(labels, key)
            q_idx.append(np.full(len(idx), q + query_offset, np.int64))
            d_idx.append(np.asarray(idx, np.int64))
            grade.append(np.full(len(idx), value, np.float32))
    q_arr, d_arr, g_arr = (np.concatenate(x) if x else np.zeros(0) for x in (q_idx, d_idx, grade))
    order = np.lexsort((-g_arr, d_arr, q_arr))
    q_arr, d_arr, g_arr = q_arr[order], d_arr[order], g_arr[order]
    first = np.r_[True, (np.diff(q_arr) != 0) | (np.diff(d_arr) != 0)] if len(q_arr) else np.zeros(0, bool)
    return Relevance(q_arr[first].astype(np.int64), d_arr[first].astype(np.int64), g_arr[first].astype(np.float32))
