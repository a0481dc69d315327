"""Visual place recognition datasets, in the layout of GeoWarp and the VPR datasets downloader::

    {root}/images/test/database/@0543256.96@4178906.65@10@S@037.75643@-122.50972@...@.jpg
    {root}/images/test/queries/@0543270.11@4178899.02@10@S@...@.jpg

(GeoWarp calls the database folder `gallery`; either name is read, not both.) Every `.jpg` below the two
folders is an image, found recursively as GeoWarp's `glob("**/*.jpg")` does; its name is its path relative
to `images/{split}` (`database/@...@.jpg`, `queries/@...@.jpg`). Its position is in the file name,
`@UTM_east@UTM_north@...`: only the file name is parsed, never the folders above it
(vop.protocols.vpr.parse_utm). A database image is a positive of a query within `positive_dist_m` metres
(default 25, GeoWarp's). There is no calibration, so no pose stage: the queries are retrieved against the
database (`mode: retrieve`, queries `queries/*`) and scored by recall@N (results/{dataset}/vpr.csv).

gt.h5 holds names and sizes, and as `relevance` each query's positives graded 1 / (1 + distance in m),
so that the oracle ranks the nearest positive first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from vop.conf import Conf
from vop.datasets import SceneReader, no_poses, refuse_spaces
from vop.images import image_sizes
from vop.io import GroundTruth, Relevance
from vop.protocols import vpr

DATABASE_DIRS = ("database", "gallery")  # VPR datasets downloader, GeoWarp
QUERY_DIR = "queries"


@dataclass(frozen=True, kw_only=True)
class VprOptions(Conf):
    """`datasets.<name>` keys of a VPR dataset."""

    split: str = "test"
    positive_dist_m: float = 25.0


def list_jpgs(folder: Path) -> list[str]:
    """`.jpg` files below `folder` (recursively, as GeoWarp globs them), sorted, relative POSIX paths."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg") if p.is_file())


class VprScene(SceneReader):
    """A VPR split: queries against the database, positives by UTM distance."""

    source = "vpr"
    Options = VprOptions
    has_poses = False
    single_scene = True
    default_mode = "retrieve"
    default_queries = f"{QUERY_DIR}/*"
    protocol = "vpr"
    default_k = max(vpr.RECALL_NS)
    min_k = max(vpr.RECALL_NS)

    @classmethod
    def has_ground_truth(cls, options) -> bool:
        return True

    @property
    def image_dir(self) -> Path:
        return self.scene_dir / "images" / self.options.split

    def database_dir(self) -> Path:
        found = [d for d in DATABASE_DIRS if (self.image_dir / d).is_dir()]
        if len(found) != 1:
            what = "both" if found else "neither"
            raise FileNotFoundError(
                f"{self.image_dir}: {what} of {' and '.join(f'{d}/' for d in DATABASE_DIRS)} found; a VPR split "
                f"holds one database folder and {QUERY_DIR}/ (the layout of the VPR datasets downloader, "
                f"{{root}}/images/{self.options.split}/database/*.jpg); check the dataset's `root` and `split`")
        return self.image_dir / found[0]

    def input_files(self) -> list[Path]:
        return [self.database_dir(), self.image_dir / QUERY_DIR]

    def ground_truth(self) -> GroundTruth:
        database_dir, query_dir = self.database_dir(), self.image_dir / QUERY_DIR
        if not query_dir.is_dir():
            raise FileNotFoundError(f"{query_dir}: the queries of the VPR split are missing; check `root` and `split`")
        database = [f"{database_dir.name}/{n}" for n in list_jpgs(database_dir)]
        queries = [f"{QUERY_DIR}/{n}" for n in list_jpgs(query_dir)]
        for folder, names in ((database_dir, database), (query_dir, queries)):
            if not names:
                raise FileNotFoundError(f"{folder}: no .jpg images; check the dataset's `root` and `split`")
        names = database + queries
        refuse_spaces(names, self.image_dir)
        utm = np.array([vpr.parse_utm(str(self.image_dir / n)) for n in names], np.float64)
        gt = no_poses(names, image_sizes(self.image_dir, names))
        gt.relevance = positives_relevance(utm[:len(database)], utm[len(database):], self.options.positive_dist_m,
                                           query_offset=len(database))
        return gt


def positives_relevance(db_utm: np.ndarray, query_utm: np.ndarray, dist_m: float, query_offset: int) -> Relevance:
    """Each query's positives (within dist_m, inclusive) graded 1 / (1 + distance): indices into the names,
    the database first (0..) and the queries from `query_offset`."""
    pairs = cKDTree(query_utm).sparse_distance_matrix(cKDTree(db_utm), dist_m, output_type="ndarray")
    order = np.lexsort((pairs["j"], pairs["i"]))
    pairs = pairs[order]
    return Relevance(pairs["i"].astype(np.int64) + query_offset, pairs["j"].astype(np.int64),
                     (1.0 / (1.0 + pairs["v"])).astype(np.float32))
