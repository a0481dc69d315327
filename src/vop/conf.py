"""Typed configuration of every stage: the project's defaults, in one place.

Each block of config/config.yaml maps to one frozen dataclass whose field names are its keys
(`labels:` -> LabelsConf, `pose:` -> PoseConf, a `methods:` entry -> the conf of its `type`, ...). The
workflow hands a block to its script as written, the script builds the conf with `from_dict`, and the
stage function takes the conf; the `vop` command line builds its flags from the same fields. So a default
lives here and nowhere else, and tests/test_conf.py checks that the JSON schema states the same ones.

This module imports nothing heavy: the Snakefile, the CLI and the readers' layouts use it at start.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

C = TypeVar("C", bound="Conf")


class ConfigError(ValueError):
    """A configuration value that cannot be used. The message leads with the fix: its first line is the
    key path, what is wrong and the closest valid key or value; `path` holds the keys of that place."""

    def __init__(self, message: str, path: tuple = ()):
        super().__init__(message)
        self.path = tuple(path)


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def key_path(path) -> str:
    """methods.vop.k, datasets.demo.scenes[1], datasets['my data']; 'config' for the top level. A string
    is taken as a path written already (`methods.vop`)."""
    if isinstance(path, str):
        return path or "config"
    text = ""
    for key in path:
        if isinstance(key, int):
            text += f"[{key}]"
        elif isinstance(key, str) and _PLAIN_KEY.match(key):
            text += f".{key}" if text else key
        else:
            text += f"[{key!r}]"
    return text or "config"


def suggest(name, candidates) -> str | None:
    """The candidate closest to `name` (difflib, cutoff 0.6), or None."""
    match = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.6)
    return match[0] if match else None


def did_you_mean(name, candidates) -> str:
    """The text "; did you mean 'x'?" for the closest candidate, or ''."""
    match = suggest(name, candidates)
    return f"; did you mean {match!r}?" if match else ""


def listing(names, limit: int = 12) -> str:
    """a, b, c (at most `limit` names, then how many in all)."""
    names = [str(n) for n in names]
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def unknown_key(where: str, key: str, known) -> ConfigError:
    """'<where>.<key>: unknown key; did you mean ...?' with the keys allowed there on the next line."""
    place = f"{where}.{key}" if where else key
    return ConfigError(f"{place}: unknown key{did_you_mean(key, known)}\n  allowed here: {listing(known)}",
                       _keys(where, key))


def _keys(where: str, key: str) -> tuple:
    return (*where.split("."), key) if where else (key,)


@dataclass(frozen=True, kw_only=True)
class Conf:
    """Base of the stage confs: built from a config block, checked, and turned back into one."""

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any] | None = None, where: str = "") -> C:
        """The conf of a config block; unknown keys and missing required ones name `where.key`."""
        data = dict(data or {})
        hints = typing.get_type_hints(cls)
        known = [f.name for f in dataclasses.fields(cls) if f.init]
        prefix = f"{where}." if where else ""
        for key in data:
            if key not in known:
                raise unknown_key(where, key, known)
        values = {key: _convert(hints[key], value, f"{prefix}{key}") for key, value in data.items()}
        missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in data
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ConfigError(f"{prefix}{missing[0]}: missing; this key is required\n"
                              f"  {where or 'the block'} has: {listing(data) or 'nothing'}", _keys(where, missing[0]))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The config block of this conf (tuples as lists, nested confs as dicts)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.init}

    def replace(self: C, **changes) -> C:
        return dataclasses.replace(self, **changes)


def _convert(hint, value, where: str):
    """Nested confs from dicts, lists to tuples; everything else as given (the schema checked types)."""
    for option in typing.get_args(hint) or (hint,):
        if isinstance(option, type) and issubclass(option, Conf) and isinstance(value, Mapping):
            return option.from_dict(value, where)
    if isinstance(value, list):
        return tuple(value)
    return value


def _plain(value):
    if isinstance(value, Conf):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def fields_of(conf: type[Conf]) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(conf) if f.init}


def default_of(f: dataclasses.Field):
    """A field's default as a config value (None where the key is required)."""
    if f.default is not dataclasses.MISSING:
        return _plain(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return _plain(f.default_factory())
    return None


# ---------------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True, kw_only=True)
class SyntheticConf(Conf):
    """`datasets.<name>.synthetic`: how the offline generator renders each scene."""

    seed: int = 0
    num_images: int = 24
    width: int = 640
    height: int = 480
    textures: Literal["eval", "train"] = "eval"


@dataclass(frozen=True, kw_only=True)
class DatasetConf(Conf):
    """The keys every `datasets:` entry has; a source's own keys (images, model, synthetic, ...) are
    its reader's `Options` (vop.datasets)."""

    source: str
    backbone: str
    methods: tuple[str, ...]
    root: str | None = None
    url: str | None = None
    scenes: tuple[str, ...] | None = None
    mode: Literal["register", "retrieve"] | None = None  # None: the source's (vop.datasets)
    queries: str | None = None
    k: int | None = None  # None: the source's depth (vpr 20, image_list 200, revisitop all), else each method's k
    images_per_job: int | None = None  # None: a scene is one job; else features and retrieval in shards (vop.shards)


@dataclass(frozen=True, kw_only=True)
class TriangulationConf(Conf):
    """`triangulation`: ground-truth tracks of posed scenes without 3D points (vop.ground_truth): the
    scene's local features matched over pose-neighbour pairs and triangulated with the poses held fixed."""

    neighbours: int = 20  # pairs per image, the best by pose-based overlap (all pairs up to neighbours + 1 images)
    ratio: float = 0.8  # Lowe's ratio of the mutual nearest-neighbour matching
    verification: Literal["poses", "ransac"] = "poses"  # epipolar test against the known poses, or COLMAP's
    max_error_px: float = 4.0  # inlier bound of the verification and reprojection bound of the triangulation
    min_angle_deg: float = 1.5  # the smallest triangulation angle of a point
    min_points: int = 100  # fewer points: the overlap falls back to the pose-only estimate


@dataclass(frozen=True, kw_only=True)
class NsoConf(Conf):
    """`nso`: the ground-truth normalized surface overlap of every ordered pair, in gt.h5 (vop.nso): from
    depth (every `stride`-th pixel warped, `depth_tol` relative), from tracks, or none; auto: depth where the
    source has it (its depth maps become inputs of the ground truth), else tracks where the scene has them."""

    geometry: Literal["auto", "depth", "tracks", "none"] = "auto"
    stride: int = 4
    depth_tol: float = 0.05


# ---------------------------------------------------------------------------------------------------
# Features, encoders, training


@dataclass(frozen=True, kw_only=True)
class BackboneConf(Conf):
    """`backbones.<name>`: weights (auto: the local caches, then a download; a file, a Hugging Face
    folder, hf, hub, random; null: the local caches only)."""

    weights: str | None = "auto"
    batch_size: int = 16


@dataclass(frozen=True, kw_only=True)
class LabelsConf(Conf):
    """`labels`: ground-truth patch correspondences of sampled pairs, from depth or from the tracks of 3D
    points (vop.labels); `geometry` auto: depth where the dataset has it, else tracks."""

    geometry: Literal["auto", "depth", "tracks"] = "auto"
    pairs_per_bin: int = 40
    num_negative: int = 40
    stride: int = 2
    seed: int = 0
    depth_tol: float = 0.05


@dataclass(frozen=True, kw_only=True)
class TrainConf(Conf):
    """`encoders.<name>.train`: training of the VOP head (vop.training)."""

    datasets: tuple[str, ...] = ()
    epochs: int = 30
    batch_size: int = 32
    lr: float = 0.001
    weight_decay: float = 0.0001
    dropout: float = 0.1
    out_dim: int = 256
    val_fraction: float = 0.15
    flip: bool = True
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class EncoderConf(Conf):
    """`encoders.<name>`: identity (normalised tokens) or the VOP head, trained here or loaded."""

    type: Literal["identity", "vop"]
    backbone: str | None = None
    checkpoint: str | None = None
    train: TrainConf | None = None
    batch_size: int = 64


# ---------------------------------------------------------------------------------------------------
# Retrieval methods (vop.retrieval registers a function per type)


@dataclass(frozen=True, kw_only=True)
class MethodConf(Conf):
    """A `methods:` entry. `needs` says which scene file the method reads besides gt.h5."""

    needs: ClassVar[str | None] = None
    type: str
    k: int


@dataclass(frozen=True, kw_only=True)
class PrefilterIndexConf(Conf):
    """The faiss index of a global-descriptor search (vop.prefilter): exact below `ivf_min_images`
    database images, IVF above, `ivf_nprobe` lists visited per query."""

    ivf_min_images: int = 100_000
    ivf_nprobe: int = 32


@dataclass(frozen=True, kw_only=True)
class NsoChanceConf(Conf):
    """The patch threshold of the predicted NSO (vop.nso): a patch has a partner in another image above the
    cosine at which a patch of an unrelated image finds one among its patches with probability `nso_chance`
    (estimated from patches of different images; None: the voting radius's threshold)."""

    nso_chance: float | None = 0.1


@dataclass(frozen=True, kw_only=True)
class ClsConf(NsoChanceConf, PrefilterIndexConf, MethodConf):
    """Top-k by cosine of the global descriptors (faiss: exact below ivf_min_images, IVF above)."""

    needs: ClassVar[str | None] = "features"
    type: Literal["cls"] = "cls"


@dataclass(frozen=True, kw_only=True)
class VopConf(NsoChanceConf, PrefilterIndexConf, MethodConf):
    """Top-`prefilter` by global descriptor, then patch voting (radius search + TF-IDF), top-k by votes."""

    needs: ClassVar[str | None] = "embeddings"
    type: Literal["vop"] = "vop"
    encoder: str
    prefilter: int
    radius: float | Literal["auto"] = "auto"
    tfidf: bool = True
    seed: int = 0
    chunk_images: int = 4096


@dataclass(frozen=True, kw_only=True)
class OracleConf(MethodConf):
    """Top-k by ground-truth overlap: the upper bound."""

    needs: ClassVar[str | None] = "overlap"
    type: Literal["oracle"] = "oracle"


@dataclass(frozen=True, kw_only=True)
class RandomConf(MethodConf):
    """Seeded random database images: the lower bound."""

    type: Literal["random"] = "random"
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class VerifyConf(MethodConf):
    """The first stage's top-`shortlist` reranked by geometrically verified local matches (SIFT +
    fundamental-matrix RANSAC, vop.verification); ties and pairs below `min_inliers` keep first-stage order,
    ranks past the shortlist too."""

    needs: ClassVar[str | None] = "matches"
    type: Literal["verify"] = "verify"
    first_stage: str
    shortlist: int = 100
    min_inliers: int = 15
    threshold_px: float = 4.0


@dataclass(frozen=True, kw_only=True)
class ExhaustiveConf(MethodConf):
    """Every image with every other (N - 1 per image): the reference reconstruction, refused above
    `max_images` (N^2/2 pairs to match)."""

    type: Literal["exhaustive"] = "exhaustive"
    k: int = 0  # not a depth: exhaustive pairs every image with all N - 1 others (0 says so)
    max_images: int = 150


@dataclass(frozen=True, kw_only=True)
class SequentialConf(MethodConf):
    """The k images nearest in name order (i+1, i-1, i+2, ...): COLMAP's sequential matching, for video
    frames or a capture named in the order it was taken."""

    type: Literal["sequential"] = "sequential"


METHOD_CONFS: dict[str, type[MethodConf]] = {"cls": ClsConf, "vop": VopConf, "oracle": OracleConf,
                                              "random": RandomConf, "verify": VerifyConf,
                                              "exhaustive": ExhaustiveConf, "sequential": SequentialConf}


def method_conf(entry: Mapping[str, Any], where: str = "methods") -> MethodConf:
    """The conf of a `methods:` entry, by its `type`."""
    kind = entry.get("type")
    if kind not in METHOD_CONFS:
        raise ConfigError(f"{where}.type: {kind!r} is not a method type{did_you_mean(kind, METHOD_CONFS)}\n"
                          f"  allowed: {listing(METHOD_CONFS)}", _keys(where, "type"))
    return METHOD_CONFS[kind].from_dict(entry, where)


# ---------------------------------------------------------------------------------------------------
# Poses and metrics


@dataclass(frozen=True, kw_only=True)
class LocalFeaturesConf(Conf):
    """`local_features`: SIFT once per image of a scene (vop.local_features)."""

    extractor: Literal["opencv", "pycolmap"] = "opencv"
    max_keypoints: int = 4096
    resize_max: int = 1600
    root_sift: bool = True


@dataclass(frozen=True, kw_only=True)
class MatchingConf(Conf):
    """`matching`: mutual nearest neighbours that pass Lowe's ratio test, once per unordered pair of a
    scene (vop.matching, the scene's matches store vop.match_store); read by pose and verify."""

    ratio: float = 0.8


@dataclass(frozen=True, kw_only=True)
class PoseConf(Conf):
    """`pose`: relative pose of every retrieved pair from its stored matches (vop.pose)."""

    estimator: Literal["opencv", "poselib", "pycolmap"] = "opencv"
    threshold_px: float | tuple[float, ...] = (0.5, 1.5, 2.0, 3.0)
    # vop and cls methods also get `{method}+scale` rows: their pairs matched with local features extracted at
    # the predicted relative scale (vop.scale_aware), and results/{dataset}/scale.csv
    scale_aware: bool = False

    @property
    def thresholds(self) -> tuple[float, ...]:
        """The RANSAC thresholds of the sweep (one number: no sweep)."""
        values = self.threshold_px if isinstance(self.threshold_px, tuple) else (self.threshold_px,)
        return tuple(float(v) for v in values)


@dataclass(frozen=True, kw_only=True)
class MetricsConf(Conf):
    """`metrics`: a database image is relevant to a query when their overlap is >= overlap_tau."""

    overlap_tau: float = 0.1


@dataclass(frozen=True, kw_only=True)
class SoftwareConf(Conf):
    """`software`: the conda env of the GPU rules (the workflow reads it; no stage does)."""

    gpu_env: bool = False


@dataclass(frozen=True, kw_only=True)
class SfmConf(Conf):
    """`sfm`: a COLMAP reconstruction from each method's pairs (vop.sfm): their stored matches verified by
    COLMAP's two-view geometry and mapped incrementally (pycolmap), scored in results/{dataset}/sfm.csv."""

    baselines: tuple[str, ...] = ("exhaustive", "sequential")  # methods reconstructed besides the dataset's own
    sweep: tuple[int, ...] = (2, 5, 10, 20)  # pairs per query: each method's ranking cut at these depths
    known_intrinsics: bool = True  # the ground truth's K as fixed PINHOLE cameras; False: COLMAP's guess, refined
    max_error_px: float = 4.0  # the two-view verification's RANSAC threshold
    max_num_trials: int = 2000  # its RANSAC iterations (COLMAP: 10000; README "Build a 3D model" measures both)
    min_num_inliers: int = 15  # fewer verified inliers: the pair is not used
    min_model_size: int = 3  # smaller models are dropped (COLMAP's 10 would hide a split into small parts)
    seed: int = 0


# Top-level config blocks that are one conf each.
STAGE_CONFS: dict[str, type[Conf]] = {"labels": LabelsConf, "local_features": LocalFeaturesConf,
                                      "matching": MatchingConf, "pose": PoseConf, "metrics": MetricsConf,
                                      "triangulation": TriangulationConf, "nso": NsoConf,
                                      "software": SoftwareConf, "sfm": SfmConf}

__all__ = [
    "BackboneConf", "ClsConf", "Conf", "ConfigError", "DatasetConf", "EncoderConf", "ExhaustiveConf", "LabelsConf",
    "LocalFeaturesConf", "METHOD_CONFS", "MatchingConf", "MethodConf", "MetricsConf", "NsoChanceConf", "NsoConf",
    "OracleConf", "PoseConf", "RandomConf", "STAGE_CONFS", "SequentialConf", "SfmConf", "SoftwareConf",
    "SyntheticConf", "TrainConf", "TriangulationConf", "VerifyConf", "VopConf",
    "method_conf",
]
