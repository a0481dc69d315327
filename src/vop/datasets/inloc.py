"""InLoc: iPhone 7 queries against the database cutouts (the archives at www.ok.sc.e.titech.ac.jp/INLOC)::

    {root}/database/cutouts/DUC1/024/DUC_cutout_024_0_0.jpg      database (cutouts.tar.gz -> database/)
    {root}/query/iphone7/IMG_0731.JPG                            queries (iphone7.tar.gz -> query/)

Image names are relative to root, so the config's `queries: "query/iphone7/*"` picks the queries in
`mode: retrieve`. A scene is `all` (every building) or one building (DUC1, DUC2), always with every query.
InLoc publishes no query poses (it is scored by localising on visuallocalization.net), so gt.h5 holds names
and sizes only: retrieval runs, pose metrics do not.
"""

from __future__ import annotations

from pathlib import Path

from vop.datasets import ArchivePart, SceneReader, no_poses
from vop.datasets.folder import list_images
from vop.images import image_sizes

DEFAULT_URL = "http://www.ok.sc.e.titech.ac.jp/INLOC/materials/"
CUTOUTS_DIR, QUERY_DIR = "database/cutouts", "query/iphone7"
# archive -> (folder it unpacks into, its top-level folder)
ARCHIVES = {"cutouts.tar.gz": ("database", "cutouts"), "iphone7.tar.gz": ("query", "iphone7")}


class InLocScene(SceneReader):
    source = "inloc"
    has_poses = False
    url = DEFAULT_URL
    default_scenes = ("all",)
    default_mode = "retrieve"
    default_queries = f"{QUERY_DIR}/*"

    def __init__(self, root: str | Path, scene: str | None = "all", **options):
        super().__init__(root, scene or "all", **options)

    @classmethod
    def archive_parts(cls, scene: str) -> list[ArchivePart]:
        return [ArchivePart(top, archive, f"{top}/", target) for archive, (target, top) in ARCHIVES.items()]

    def input_files(self) -> list[Path]:
        return [self.root / CUTOUTS_DIR, self.root / QUERY_DIR]

    @property
    def scene_dir(self) -> Path:
        return self.root

    @property
    def image_dir(self) -> Path:
        return self.root

    def image_names(self) -> list[str]:
        cutouts = self.root / CUTOUTS_DIR
        if self.scene != "all":
            cutouts = cutouts / self.scene
        hint = (f"; {self.root} must hold {CUTOUTS_DIR}/ and {QUERY_DIR}/ (unpack {', '.join(ARCHIVES)} from "
                f"{DEFAULT_URL} into database/ and query/)")
        if not cutouts.is_dir():
            raise FileNotFoundError(f"{cutouts}: InLoc cutouts not found{hint}")
        if not (self.root / QUERY_DIR).is_dir():
            raise FileNotFoundError(f"{self.root / QUERY_DIR}: InLoc queries not found{hint}")
        database = [f"{cutouts.relative_to(self.root).as_posix()}/{n}" for n in list_images(cutouts)]
        queries = [f"{QUERY_DIR}/{n}" for n in list_images(self.root / QUERY_DIR)]
        if not database or not queries:
            raise FileNotFoundError(f"{cutouts if not database else self.root / QUERY_DIR}: no images{hint}")
        return sorted(database + queries)

    def ground_truth(self):
        names = self.checked_image_names()
        return no_poses(names, image_sizes(self.root, names))
