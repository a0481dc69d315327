"""Dataset sources: the one place that knows each layout.

A source is a reader class in its own module, registered by name in `SOURCES`. It answers everything the
stages and the workflow ask about a scene in its native layout:

    scene = open_scene("megadepth", "resources/megadepth", "0015")
    scene.image_dir                 # image names are relative to it
    scene.image_names()             # the images, in ground-truth order, from the listing alone
    scene.ground_truth()            # GroundTruth: names, K, T_w2cam, image sizes, overlap (or None), tracks
    scene.needs_tracks()            # posed but no 3D points: the ground-truth stage triangulates
    scene.depth(name, (w, h))       # z-depth (h, w) float32 for training labels; NoDepthError without
    scene.input_files()             # the native files its ground truth reads
    MegaDepthScene.archive_parts("0015")   # what to download and unpack for it

and class attributes: `has_poses`, `has_depth`, `url` (downloaded sources), `generated` (synthetic),
`default_scenes`, `single_scene`, and `Options`, the conf of the source's own keys in a dataset entry.
`Dataset` wraps a config entry with its source for the workflow: roots, scenes, rule inputs, reader
arguments. A source outside the package is named `module:Class` in the config (imported and registered
on first use), so a plugin needs no edit of the workflow.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from vop.conf import Conf, ConfigError, DatasetConf, did_you_mean, fields_of, listing
from vop.io import GroundTruth, check_image_name

# name -> "module:Class"; the modules are imported when a source is first used
SOURCES = {
    "synthetic": "vop.datasets.synthetic:SyntheticScene",
    "eth3d": "vop.datasets.eth3d:Eth3dScene",
    "megadepth": "vop.datasets.megadepth:MegaDepthScene",
    "inloc": "vop.datasets.inloc:InLocScene",
    "colmap": "vop.datasets.colmap:ColmapScene",
    "folder": "vop.datasets.folder:FolderScene",
    "vpr": "vop.datasets.vpr:VprScene",
    "revisitop": "vop.datasets.revisitop:RevisitopScene",
    "image_list": "vop.datasets.image_list:ImageListScene",
    "gl3d": "vop.datasets.image_list:Gl3dScene",
    "synthetic_vpr": "vop.datasets.synthetic_protocols:SyntheticVprScene",
    "synthetic_revisitop": "vop.datasets.synthetic_protocols:SyntheticRevisitopScene",
    "synthetic_image_list": "vop.datasets.synthetic_protocols:SyntheticImageListScene",
}
# The table each protocol writes, results/{dataset}/{protocol}.csv (auc: the pose protocol, vop.metrics)
PROTOCOLS = ("auc", "vpr", "revisitop", "gl3d")
_CLASSES: dict[str, type[SceneReader]] = {}


class NoDepthError(FileNotFoundError):
    """A scene (or an image of it) without the ground-truth depth that training labels need."""


@dataclass(frozen=True, kw_only=True)
class NoOptions(Conf):
    """A source without keys of its own."""


@dataclass(frozen=True)
class ArchivePart:
    """The members of one downloaded archive that a scene needs, unpacked by their own job.

    `target` is the folder below the dataset's download folder (resources/{dataset}) that the members
    land in, with their paths in the archive (`flatten`: by their basenames, several parts may then fill
    one folder); `role` says which stage reads them. An `archive` that is not an archive by its name (a
    .pkl, a .txt) is one file, copied into `target`.
    """

    name: str
    archive: str
    member_prefix: str
    target: str = ""
    role: str = "ground_truth"  # or "depth" (training labels only)
    flatten: bool = False  # every file straight into `target` by its basename (revisitop's jpg/)

    @property
    def placed(self) -> bool:
        """Put in place by the `place_part` rule (a plain file copied, or an archive flattened) rather
        than unpacked with its paths by `extract_part`."""
        from vop.download import archive_kind

        return self.flatten or archive_kind(self.archive) is None


@dataclass(frozen=True)
class Needs:
    """What a stage of one scene reads: files on disk, archive parts to unpack, or the generated scene;
    `local_features`: the scene's local features too (ground truth triangulated from tracks)."""

    files: tuple[str, ...] = ()
    parts: tuple[str, ...] = ()
    generated: bool = False
    local_features: bool = False


class SceneReader:
    """Base of the readers: `root` is the dataset folder, `scene` one scene in it (None: root is the scene)."""

    source: ClassVar[str] = ""
    Options: ClassVar[type[Conf]] = NoOptions
    has_poses: ClassVar[bool] = True
    has_depth: ClassVar[bool] = False
    generated: ClassVar[bool] = False  # a rule renders its scenes (synthetic)
    url: ClassVar[str | None] = None  # where its archives are downloaded from; None: never downloaded
    resources_root: ClassVar[str] = ""  # its root below resources/{dataset} when downloaded or generated
    default_scenes: ClassVar[tuple[str, ...]] = ()
    single_scene: ClassVar[bool] = False  # without `scenes`, the root is one scene named after the dataset
    default_mode: ClassVar[str] = "register"
    default_queries: ClassVar[str | None] = None
    protocol: ClassVar[str] = "auc"  # its table: results/{dataset}/{protocol}.csv (PROTOCOLS)
    # how many database images each query's list holds: None (each method's k), a number, or "all"
    default_k: ClassVar[int | str | None] = None
    min_k: ClassVar[int] = 1  # the protocol's deepest cut (VPR's R@20)

    def __init__(self, root: str | Path, scene: str | None = None, **options):
        self.root = Path(root)
        self.scene = scene
        self.options = self.Options.from_dict(options, f"source {self.source}")

    @property
    def scene_dir(self) -> Path:
        return self.root / self.scene if self.scene else self.root

    @property
    def image_dir(self) -> Path:
        raise NotImplementedError

    def ground_truth(self) -> GroundTruth:
        raise NotImplementedError

    def image_names(self) -> list[str]:
        """The scene's image names (relative to `image_dir`) in the ground truth's order, i.e. sorted.

        The workflow asks at start for the images a job reads: readers answer from their listing (model
        file, folder, scene info) without computing the ground truth; this default computes it.
        """
        return list(self.ground_truth().names)

    def checked_image_names(self) -> list[str]:
        """`image_names()`, each checked where it enters the pipeline: a name that a pairs file cannot hold
        (whitespace, a leading '#', control characters; vop.io.check_image_name) is refused, naming the image
        and saying to rename it."""
        names = self.image_names()
        for name in names:
            check_image_name(name, self.image_dir)
        return names

    def image_files(self) -> list[Path]:
        """The files the images of `checked_image_names()` are read from (a source whose images are crops of
        files, revisitop's queries, lists the files)."""
        return [self.image_dir / n for n in self.checked_image_names()]

    def needs_tracks(self) -> bool:
        """Posed images without 3D points: the ground-truth stage matches their local features and
        triangulates tracks with the poses held fixed (vop.ground_truth) for the overlap and for labels."""
        return False

    def input_files(self) -> list[Path]:
        """The native files the ground truth reads (checked when the dataset's `root` is configured)."""
        return [self.scene_dir]

    def depth_files(self) -> list[Path]:
        """The native files training labels read besides the ground truth (depth maps)."""
        return []

    @classmethod
    def archive_parts(cls, scene: str) -> list[ArchivePart]:
        """The parts of the source's archives that `scene` needs (downloaded sources)."""
        return []

    @classmethod
    def archive_url(cls, archive: str) -> str:
        """Where `archive` is downloaded from when the dataset sets no `url` (sources whose files live on
        several servers override it)."""
        return f"{str(cls.url).rstrip('/')}/{archive}"

    @classmethod
    def retrieval_depth(cls, k: int | str) -> int | str:
        """How many database images retrieval lists per query for a dataset depth `k` (MIRorR's K counts
        the self pair, which retrieval does not list)."""
        return k

    @classmethod
    def has_ground_truth(cls, options: Conf) -> bool:
        """Whether scenes of this source (with these options) come with ground truth to score and to rank
        the oracle by (overlap or relevance)."""
        return cls.has_poses

    def depth(self, name: str, size) -> np.ndarray:
        raise NoDepthError(
            f"{self.scene_dir}: image {name}: a `{self.source}` scene has no depth maps, and training labels need "
            "ground-truth depth for every image; train encoders on datasets whose source has depth"
        )

    def write_ground_truth(self, out_h5: str | Path, **kwargs) -> GroundTruth:
        """gt.h5 of this scene: the ground-truth stage (vop.ground_truth.write_scene_ground_truth)."""
        from vop.ground_truth import write_scene_ground_truth

        return write_scene_ground_truth(self, out_h5, **kwargs)


def no_poses(names: list[str], sizes: np.ndarray) -> GroundTruth:
    """Ground truth of images without calibration or poses: NaN K and T_w2cam, no overlap."""
    n = len(names)
    return GroundTruth(list(names), np.full((n, 3, 3), np.nan), np.full((n, 4, 4), np.nan),
                       np.asarray(sizes, np.int64).reshape(n, 2), None)


def refuse_spaces(names: Sequence[str], where: str | Path) -> None:
    """pairs.txt (hloc's and COLMAP's format) separates the two names of a pair by a space."""
    spaced = [n for n in names if any(c.isspace() for c in n)]
    if spaced:
        raise ValueError(f"{where}: image name {spaced[0]!r} holds white space ({len(spaced)} such names), which "
                         "pairs.txt (hloc's and COLMAP's `name0 name1` lines) cannot hold; rename the files")


def reader_class(source: str) -> type[SceneReader]:
    """The reader of a source name, or of a `module:Class` path (imported and registered on first use)."""
    if source in _CLASSES:
        return _CLASSES[source]
    target = SOURCES.get(source) or (source if ":" in source else None)
    if target is None:
        raise ConfigError(f"unknown dataset source {source!r}{did_you_mean(source, SOURCES)}\n"
                          f"  allowed: {listing(SOURCES)}, or a reader class as `module:Class`")
    module, _, name = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"dataset source {source!r}: cannot import {target} ({err}); is the module on the "
                          "Python path of the workflow and its jobs?") from err
    if not (isinstance(cls, type) and issubclass(cls, SceneReader)):
        raise ConfigError(f"dataset source {source!r}: {target} is not a vop.datasets.SceneReader subclass")
    _CLASSES[source] = cls
    return cls


def open_scene(source: str, root: str | Path, scene: str | None = None, **options) -> SceneReader:
    """The reader of one scene; `options` are the source's own keys (colmap: images, model; ...)."""
    return reader_class(source)(root, scene, **options)


def split_queries(names: Sequence[str], mode: str = "register", queries: str | None = None,
                  scene: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(query indices, database indices) of a scene.

    register: every image is a query and the database is the whole scene (the query itself is excluded
    when ranking). retrieve: queries are the names matching the glob `queries`, the database the rest.
    """
    num = len(names)
    if num < 2:  # the ground-truth stage refuses such scenes first, with the fix (vop.ground_truth)
        raise ValueError(f"scene {scene!r} has {num} image(s): retrieval needs at least 2")
    everything = np.arange(num)
    if mode == "register":
        return everything, everything
    if mode != "retrieve":
        raise ValueError(f"unknown mode {mode!r}: expected register or retrieve")
    if not queries:
        raise ValueError("mode retrieve needs the dataset's `queries` glob (e.g. 'query/*') in config/config.yaml")
    is_query = np.array([fnmatch.fnmatchcase(n, queries) for n in names])
    if not is_query.any() or is_query.all():
        raise ValueError(
            f"scene {scene!r}: the queries glob {queries!r} matches {int(is_query.sum())} of {num} images; "
            "it must match some images (the queries) and not all (the database): fix `queries` in config/config.yaml"
        )
    return everything[is_query], everything[~is_query]


class Dataset:
    """A `datasets:` entry of the config with its source: what the workflow asks about its files."""

    def __init__(self, name: str, entry: Mapping[str, Any]):
        self.name = name
        self.where = f"datasets.{name}"
        self._cache: dict[tuple[str, str], Needs] = {}  # the workflow asks per job: once per scene
        self.reader = reader_class(entry["source"])
        common = fields_of(DatasetConf)
        self.conf = DatasetConf.from_dict({k: v for k, v in entry.items() if k in common}, self.where)
        own = {k: v for k, v in entry.items() if k not in common}
        try:
            self.options = self.reader.Options.from_dict(own, self.where)
        except ConfigError as err:
            known = [*common, *fields_of(self.reader.Options)]
            key = next(k for k in own if k not in fields_of(self.reader.Options))
            raise ConfigError(f"{self.where}.{key}: not a key of a `{self.conf.source}` dataset"
                              f"{did_you_mean(key, known)}\n  allowed here: {listing(known)}",
                              (*err.path[:-1], key)) from err
        self._check()

    def _check(self) -> None:
        """What the schema cannot say about one entry, with the fix."""
        where, reader, conf = self.where, self.reader, self.conf
        if reader.generated and conf.root is not None:
            raise ConfigError(f"{where}.root: remove it; `{conf.source}` scenes are always generated under "
                              f"resources/{self.name}")
        if not reader.generated and reader.url is None and conf.root is None:
            raise ConfigError(f"{where}.root: missing; set it to the folder holding your images (and model)")
        if conf.scenes is None and not reader.default_scenes and not reader.single_scene:
            raise ConfigError(f"{where}.scenes: missing; list the dataset's scenes (folders under its root)")
        if self.mode == "retrieve" and not self.queries:
            raise ConfigError(f"{where}.queries: missing; mode retrieve needs a glob over image names such as "
                              "'query/*'")
        if reader.protocol != "auc" and ((conf.mode or reader.default_mode) != reader.default_mode or conf.queries):
            fixed = f"{reader.default_mode} mode" + (f", queries {reader.default_queries!r}" if reader.default_queries
                                                      else "")
            raise ConfigError(f"{where}.mode: the {reader.protocol} protocol of a `{conf.source}` dataset fixes its "
                              f"queries ({fixed}); remove `mode` and `queries`")
        if reader.default_k == "all" and conf.k is not None:
            raise ConfigError(f"{where}.k: a `{conf.source}` dataset ranks the whole database for every query "
                              f"(its metrics score the full ranking); remove `k`")
        if isinstance(self.k, int) and self.k < reader.min_k:
            raise ConfigError(f"{where}.k: {self.k} is below {reader.min_k}, the deepest cut of the "
                              f"{reader.protocol} protocol (e.g. R@{reader.min_k}); set {self.where}.k: "
                              f"{reader.min_k} or more")

    @property
    def has_poses(self) -> bool:
        return self.reader.has_poses

    @property
    def has_depth(self) -> bool:
        return self.reader.has_depth

    @property
    def protocol(self) -> str:
        """The table this dataset's scenes are scored in: auc (poses), vpr, revisitop or gl3d."""
        return self.reader.protocol

    @property
    def has_ground_truth(self) -> bool:
        """Whether its scenes can be scored (and ranked by the oracle): overlap or the protocol's labels."""
        return self.reader.has_ground_truth(self.options)

    @property
    def k(self) -> int | str | None:
        """The depth of every method's lists on this dataset: its `k`, else the source's (None: each
        method's own k; "all": the whole database)."""
        return self.conf.k if self.conf.k is not None else self.reader.default_k

    @property
    def retrieval_k(self) -> int | str | None:
        """The k that replaces every method's k in retrieval on this dataset (None: each method's own)."""
        return None if self.k is None else self.reader.retrieval_depth(self.k)

    @property
    def resources_dir(self) -> str:
        """Where downloads, extractions and generated scenes of this dataset go."""
        return f"resources/{self.name}"

    @property
    def root(self) -> str:
        if self.conf.root is not None:
            return self.conf.root.rstrip("/")
        return f"{self.resources_dir}/{self.reader.resources_root}".rstrip("/")

    @property
    def url(self) -> str | None:
        return self.conf.url or self.reader.url

    @property
    def scenes(self) -> list[str]:
        if self.conf.scenes is not None:
            return list(self.conf.scenes)
        return list(self.reader.default_scenes) or [self.name]

    @property
    def single_scene(self) -> bool:
        """One scene named after the dataset, at the root itself (colmap, folder without `scenes`)."""
        return self.conf.scenes is None and self.reader.single_scene

    @property
    def mode(self) -> str:
        return self.conf.mode or self.reader.default_mode

    @property
    def queries(self) -> str | None:
        return self.conf.queries or (self.reader.default_queries if self.mode == "retrieve" else None)

    @property
    def downloaded(self) -> bool:
        """Its files come from archives (not under a configured root, not generated)."""
        return self.conf.root is None and self.reader.url is not None and not self.reader.generated

    def reader_args(self, scene: str) -> dict[str, Any]:
        """What `open_scene` needs for one scene (passed to jobs through `params:`)."""
        if self.single_scene and scene != self.name:
            raise ConfigError(f"dataset {self.name!r} has one scene, called {self.name!r}; asked for {scene!r}")
        return {"source": self.conf.source, "root": self.root, "scene": None if self.single_scene else scene,
                **self.options.to_dict()}

    def open(self, scene: str) -> SceneReader:
        return open_scene(**self.reader_args(scene))

    def image_dir(self, scene: str) -> str:
        return str(self.open(scene).image_dir)

    def ground_truth_needs(self, scene: str) -> Needs:
        """What the ground truth of `scene` reads (and whether it triangulates from local features)."""
        key = ("ground_truth", scene)
        if key not in self._cache:
            needs = self._needs(scene, "ground_truth", lambda reader: reader.input_files())
            if needs.files and self.open(scene).needs_tracks():
                needs = Needs(needs.files, local_features=True)
            self._cache[key] = needs
        return self._cache[key]

    def depth_needs(self, scene: str) -> Needs:
        """What training labels of `scene` read besides its ground truth."""
        return self._needs(scene, "depth", lambda reader: reader.depth_files())

    def image_needs(self, scene: str) -> Needs:
        """What the stages that read the images of `scene` need: under a configured root the image files
        themselves (so that replacing or touching one reruns exactly what reads it), else the archive parts
        or the generated scene they come with. Names are checked here, where they enter."""
        key = ("images", scene)
        if key not in self._cache:  # asked by every rule that reads images, for every job
            self._cache[key] = self._needs(scene, "ground_truth", lambda reader: reader.image_files())
        return self._cache[key]

    def _needs(self, scene: str, role: str, files) -> Needs:
        reader = self.open(scene)
        if self.reader.generated:
            return Needs(generated=True)
        if self.downloaded:
            return Needs(parts=tuple(p.name for p in self.reader.archive_parts(scene) if p.role == role))
        try:
            paths = [str(p) for p in files(reader)]
        except FileNotFoundError as err:
            raise ConfigError(f"{self.where}.root: {err}; set it to the folder that holds it (relative paths "
                              "start at the working directory)") from err
        missing = [p for p in paths if not Path(p).exists()]
        if missing:
            raise ConfigError(f"{self.where}.root: {missing[0]} not found ({len(missing)} missing in all); set it to "
                              f"the folder that holds it (now {self.root!r}; relative paths start at the working "
                              "directory)")
        return Needs(files=tuple(paths))

    def archive_part(self, part: str) -> ArchivePart:
        parts = {p.name: p for scene in self.scenes for p in self.reader.archive_parts(scene)}
        if part not in parts:
            raise ConfigError(f"dataset {self.name!r}: unknown archive part {part!r} (known: {sorted(parts)})")
        return parts[part]

    def part_target(self, part: str) -> str:
        """The folder the members of an archive part are extracted into (with their archive paths)."""
        return f"{self.resources_dir}/{self.archive_part(part).target}".rstrip("/")

    def archive_url(self, archive: str) -> str:
        if self.conf.url:
            return f"{self.conf.url.rstrip('/')}/{archive}"
        if not self.reader.url:
            raise ConfigError(f"{self.where}.url: missing; set it to the folder its archives are downloaded from")
        return self.reader.archive_url(archive)
