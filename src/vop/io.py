"""The files that pass between stages (DESIGN.md, "Stage contracts").

h5 files are keyed by image name like hloc's: one group per image, nested when the name holds a "/".
Every writer goes through `atomic_path`, so a killed job never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import json
import os
import re
import shutil
import unicodedata
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    # a run killed with SIGKILL skips `finally` and leaves its temp file; one job writes `path` at a time
    for stale in path.parent.glob(f".{glob.escape(path.name)}.tmp*"):
        stale.unlink(missing_ok=True)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def copy_cached(paths: Iterable[str | Path], wanted: Iterable, found: dict, entry: Callable,
                usable: Callable | None = None) -> dict[Path, int]:
    """Copy into `found` what the h5 caches `paths` hold of the keys `wanted` not found yet, in order:
    `entry(file, key)` gives a key's value, or None where the file lacks it or holds a stale one;
    `usable(file, path)` False skips a whole file. A file that cannot be read is no cache (logged). Returns
    {path: entries taken} (the matches store, the pose estimates, the scale-aware features)."""
    import logging

    wanted, taken = list(wanted), {}
    for path in map(Path, paths):
        missing = [key for key in wanted if key not in found]
        if not missing or not path.is_file():
            continue
        try:
            with h5py.File(path, "r") as f:
                if usable is not None and not usable(f, path):
                    continue
                count = 0
                for key in missing:
                    value = entry(f, key)
                    if value is not None:
                        found[key] = value
                        count += 1
                taken[path] = count
        except OSError as err:  # the entries are made again instead
            logging.getLogger(__name__).warning("%s: not reused (%s)", path, err)
    return taken


def replace_dir(src: Path, dst: Path) -> None:
    """Move the finished folder `src` to `dst`, swapping out an existing `dst` in two renames."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def list_h5_names(path: str | Path) -> list[str]:
    """Image names in an h5 keyed by name (groups that hold datasets), as hloc lists them; an external
    link stands for the image group it points to (a sharded scene's features, vop.shards)."""
    names: set[str] = set()

    def visit(_, obj):
        if isinstance(obj, h5py.Dataset) and obj.parent.name != "/":
            names.add(obj.parent.name.strip("/"))

    def visit_link(name, link):
        if isinstance(link, h5py.ExternalLink):
            names.add(name)

    with h5py.File(path, "r") as f:
        f.visititems(visit)
        f.visititems_links(visit_link)
    return sorted(names)


def require_images(path: Path, f: h5py.File, names: Iterable[str]) -> None:
    """Fail, naming the file and the fix, when an h5 keyed by image name lacks some of `names`."""
    missing = [n for n in names if n not in f]
    if missing:
        raise KeyError(
            f"{path}: {len(missing)} image(s) missing, e.g. {missing[:3]}; "
            "the file is stale or from another scene: delete it and rerun its rule"
        )


# pose.csv, one row per retrieved pair (vop.pose writes it, vop.metrics reads it)
POSE_COLUMNS = ["query", "db", "num_matches", "num_inliers", "threshold", "R_err_deg", "t_err_deg"]


@dataclass
class Relevance:
    """Sparse graded relevance of database images to queries (indices into `names`), for sources whose
    ground truth is a protocol's labels rather than an overlap matrix (VPR positives, revisitop's
    easy/hard/junk, GL3D pairs). Grades are > 0, higher first; the oracle ranks by them."""

    query: np.ndarray  # (M,) int64
    db: np.ndarray  # (M,) int64
    grade: np.ndarray  # (M,) float32


@dataclass
class Tracks:
    """Per image (in the ground truth's order) the observations of 3D points: where, and which point.

    xy[i] (M_i,2) float32 in COLMAP's pixel convention (the corner of the top-left pixel is (0, 0)),
    point_ids[i] (M_i,) int64. Shipped with a model's 3D points or triangulated (vop.ground_truth).
    """

    xy: list[np.ndarray]
    point_ids: list[np.ndarray]

    def point_sets(self) -> list[np.ndarray]:
        """The sorted ids of the points each image observes (what the co-visibility overlap counts)."""
        return [np.unique(ids) for ids in self.point_ids]


# How a gt.h5's overlap was made: its `overlap_source` attribute (`overlap_info` holds the details, JSON).
OVERLAP_SOURCES = {
    "points3D": "co-visibility of the model's own 3D points",
    "tracks": "co-visibility of tracks triangulated from SIFT matches with the poses held fixed",
    "poses": "estimated from the camera poses alone (no occlusion, no relief)",
    "scene_info": "the dataset's published co-visibility overlap",
    "none": "no overlap (no poses or no 3D structure)",
}


@dataclass
class GroundTruth:
    """Per-image calibration and poses of one scene, plus the co-visibility overlap.

    `relevance` stands in for `overlap` where a source has labels instead (the oracle reads either);
    `views` maps an image name to (file relative to the image folder, crop box x1, y1, x2, y2 in pixels)
    where the image is a crop of a file (revisitop's queries), so features see the crop.
    """

    names: list[str]
    K: np.ndarray  # (N,3,3) float64
    T_w2cam: np.ndarray  # (N,4,4) float64
    image_size: np.ndarray  # (N,2) [w,h]
    overlap: np.ndarray | None  # (N,N) float32, None where the dataset has no 3D points
    relevance: Relevance | None = None
    views: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)
    tracks: Tracks | None = None  # the 3D points' observations the overlap came from, where it did
    overlap_source: str | None = None  # a key of OVERLAP_SOURCES (None: "none" without overlap)
    overlap_info: dict = field(default_factory=dict)  # how, in figures (triangulation: points, errors, ...)
    # (N,N) float32 normalized surface overlap, nso[x, y] = the share of x's surface seen in y (vop.nso)
    nso: np.ndarray | None = None
    nso_source: str | None = None  # a key of vop.nso.NSO_SOURCES

    def index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}

    def relative_pose(self, i: int, j: int) -> np.ndarray:
        """T_{i->j}: maps points in camera i to camera j."""
        return self.T_w2cam[j] @ np.linalg.inv(self.T_w2cam[i])

    def subset(self, indices) -> GroundTruth:
        """The ground truth of some of the images (co-visibility of a pair does not depend on the others)."""
        k = np.asarray(indices, np.int64)
        tracks = None if self.tracks is None else Tracks([self.tracks.xy[i] for i in k],
                                                         [self.tracks.point_ids[i] for i in k])
        relevance = None
        if self.relevance is not None:  # the pairs among the kept images, renumbered
            new = np.full(len(self.names), -1, np.int64)
            new[k] = np.arange(len(k))
            keep = (new[self.relevance.query] >= 0) & (new[self.relevance.db] >= 0)
            relevance = Relevance(new[self.relevance.query[keep]], new[self.relevance.db[keep]],
                                  self.relevance.grade[keep])
        names = [self.names[i] for i in k]
        return GroundTruth(names, self.K[k], self.T_w2cam[k], self.image_size[k],
                           None if self.overlap is None else self.overlap[np.ix_(k, k)], relevance=relevance,
                           views={n: v for n, v in self.views.items() if n in set(names)}, tracks=tracks,
                           overlap_source=self.overlap_source, overlap_info=dict(self.overlap_info),
                           nso=None if self.nso is None else self.nso[np.ix_(k, k)], nso_source=self.nso_source)


RESERVED_GT_KEYS = ("names", "overlap", "relevance", "nso")  # root entries of gt.h5 besides the image groups
def check_pair_names(pairs: Iterable[tuple[str, str]], index: Container[str], where: str | Path,
                     error: type[Exception] = KeyError) -> None:
    """Fail, naming the pair, the image and the fix, when a pair names an image that is not in `index`
    (`where`: the file or the images the names should come from)."""
    for a, b in pairs:
        for name in (a, b):
            if name not in index:
                raise error(f"pair ({a}, {b}): image {name!r} is not in {where}; the pairs are from another "
                            "scene or stale: rerun their retrieval rule")




def write_gt(path: str | Path, gt: GroundTruth) -> None:
    clash = [n for n in gt.names if n.strip("/").split("/")[0] in RESERVED_GT_KEYS]
    if clash:
        raise ValueError(f"{path}: image name {clash[0]!r} starts with a key gt.h5 keeps for itself "
                         f"({', '.join(RESERVED_GT_KEYS)}); rename that file or folder")
    source = gt.overlap_source or ("none" if gt.overlap is None else "points3D")
    if source not in OVERLAP_SOURCES:
        raise ValueError(f"{path}: unknown overlap source {source!r}; expected one of {list(OVERLAP_SOURCES)}")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("names", data=np.array(gt.names, dtype=h5py.string_dtype()))
        f.attrs["overlap_source"] = source
        f.attrs["overlap_info"] = json.dumps(gt.overlap_info, sort_keys=True)
        if gt.overlap is not None:
            f.create_dataset("overlap", data=np.asarray(gt.overlap, np.float32))
        if gt.nso is not None:
            f.create_dataset("nso", data=np.asarray(gt.nso, np.float32))
            f.attrs["nso_source"] = gt.nso_source or "depth"
        if gt.relevance is not None:
            r = f.create_group("relevance")  # a root group without image datasets: not an image name
            r.create_dataset("query", data=np.asarray(gt.relevance.query, np.int64))
            r.create_dataset("db", data=np.asarray(gt.relevance.db, np.int64))
            r.create_dataset("grade", data=np.asarray(gt.relevance.grade, np.float32))
        for i, name in enumerate(gt.names):
            g = f.create_group(name)
            g.create_dataset("K", data=np.asarray(gt.K[i], np.float64))
            g.create_dataset("T_w2cam", data=np.asarray(gt.T_w2cam[i], np.float64))
            g.create_dataset("image_size", data=np.asarray(gt.image_size[i], np.int64))
            if name in gt.views:
                file, box = gt.views[name]
                g.create_dataset("file", data=str(file), dtype=h5py.string_dtype())
                g.create_dataset("crop", data=np.asarray(box, np.float64))
            if gt.tracks is not None:
                g.create_dataset("points2D", data=np.asarray(gt.tracks.xy[i], np.float32).reshape(-1, 2))
                g.create_dataset("point3D_ids", data=np.asarray(gt.tracks.point_ids[i], np.int64).reshape(-1))


def decode_names(dataset: h5py.Dataset) -> list[str]:
    """A root `names` dataset as Python strings (h5py returns variable-length strings as bytes)."""
    return [n.decode() if isinstance(n, bytes) else str(n) for n in dataset[()]]


def read_gt(path: str | Path, tracks: bool = False) -> GroundTruth:
    """A gt.h5; with `tracks`, also the observations of 3D points (None when the file has none)."""
    path = Path(path)
    with h5py.File(path, "r") as f:
        names = decode_names(f["names"])
        K = np.stack([f[n]["K"][()] for n in names]) if names else np.zeros((0, 3, 3))
        T = np.stack([f[n]["T_w2cam"][()] for n in names]) if names else np.zeros((0, 4, 4))
        size = np.stack([f[n]["image_size"][()] for n in names]) if names else np.zeros((0, 2))
        overlap = f["overlap"][()] if "overlap" in f else None
        nso = f["nso"][()] if "nso" in f and isinstance(f["nso"], h5py.Dataset) else None
        nso_source = str(f.attrs["nso_source"]) if nso is not None and "nso_source" in f.attrs else None
        found = None
        if tracks and names and all("point3D_ids" in f[n] for n in names):
            found = Tracks([f[n]["points2D"][()] for n in names], [f[n]["point3D_ids"][()] for n in names])
        source = str(f.attrs.get("overlap_source", "none" if overlap is None else "points3D"))
        info = json.loads(f.attrs["overlap_info"]) if "overlap_info" in f.attrs else {}
        relevance = None
        if "relevance" in f and isinstance(f["relevance"], h5py.Group) and "grade" in f["relevance"]:
            r = f["relevance"]
            relevance = Relevance(r["query"][()], r["db"][()], r["grade"][()])
        views = _read_views(f, names)
    return GroundTruth(names, K, T, size, overlap, relevance=relevance, views=views, tracks=found,
                       overlap_source=source, overlap_info=info, nso=nso, nso_source=nso_source)


def _read_views(f: h5py.File, names: Sequence[str]) -> dict[str, tuple[str, np.ndarray]]:
    views = {}
    for name in names:
        g = f[name]
        if "crop" in g:
            file = g["file"][()]
            views[name] = (file.decode() if isinstance(file, bytes) else str(file), g["crop"][()])
    return views


def read_views(path: str | Path) -> dict[str, tuple[str, np.ndarray]]:
    """{name: (file, crop box)} of the images of a gt.h5 that are crops of a file (revisitop queries)."""
    with h5py.File(path, "r") as f:
        return _read_views(f, decode_names(f["names"]))


def read_names(path: str | Path) -> list[str]:
    """The scene's image order, from the root `names` of a gt.h5."""
    with h5py.File(path, "r") as f:
        return decode_names(f["names"])


class Streamed:
    """Hands a generator of (name, groups) to `write_image_groups` as {name: groups}.items(), so a file
    is written while it is computed instead of held in memory."""

    def __init__(self, groups: Iterator[tuple[str, dict[str, np.ndarray]]]):
        self._groups = groups

    def items(self) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        return self._groups


def write_image_groups(path: str | Path, per_image) -> None:
    """Write {image name: {key: array}} as one group per image (features, embeddings, local features).

    Only `per_image.items()` is used, once: a streaming object whose items() is a generator works too.
    """
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for name, data in per_image.items():
            g = f.create_group(name)
            for key, value in data.items():
                g.create_dataset(key, data=value)


def read_stacked(path: str | Path, names: Sequence[str], key: str, dtype=None) -> np.ndarray:
    """Stack one key over `names` into an array (N, ...), in the order given."""
    path = Path(path)
    with h5py.File(path, "r") as f:
        require_images(path, f, names)
        if not names:
            return np.zeros((0,), dtype=dtype or np.float32)
        out = np.stack([f[n][key][()] for n in names])
    return out.astype(dtype) if dtype is not None else out


# --- image names and pairs files -------------------------------------------------------------------

_PLAIN_NAME = re.compile(r"[!-~]+")  # printable ASCII without space: the common case, accepted at once


def _name_problem(name: str) -> str | None:
    if _PLAIN_NAME.fullmatch(name) and name[0] != "#":
        return None
    return _character_problem(name)


def _character_problem(name: str) -> str | None:
    """What makes `name` unfit for a pairs file, character by character (None: nothing)."""
    if not name:
        return "is empty"
    if name.startswith("#"):
        return "starts with '#', which pairs files read as a comment line"
    for i, c in enumerate(name):
        if c.isspace():  # exactly what str.split() splits on, in the pairs files' `query db` lines
            what = unicodedata.name(c, f"U+{ord(c):04X}")
            return f"contains whitespace ({what}, {c!r}, at position {i}), which separates names in pairs files"
        category = unicodedata.category(c)
        if category == "Cc":
            return f"contains the control character {c!r} at position {i}"
        if category == "Cs":
            return (f"is not valid text ({c!r} at position {i}: file name bytes that are not UTF-8), "
                    "which a UTF-8 pairs file cannot hold")
    return None


def check_image_name(name: str, where: str | Path) -> None:
    """Raise ValueError when `name` cannot be written to an hloc/COLMAP pairs file and read back as itself.

    Refused: the empty name; a leading '#' (read as a comment); any whitespace, i.e. every character
    str.split() splits on (space, tab, newlines, NBSP, U+3000, ...): it separates `query db`; control
    characters (invisible in logs, and NUL cannot be in a path); unpaired surrogates (undecodable file
    name bytes: they cannot be encoded to a UTF-8 text file). Everything else round-trips through
    write_pairs/read_pairs, including '/', quotes, commas, '#' after the first character,
    backslashes, 'NA' and non-ASCII letters (kept as given: no Unicode normalisation).
    """
    problem = _name_problem(name)
    if problem:
        raise ValueError(f"{where}: image name {name!r} {problem}; rename the image (in the folder and, for a "
                         "COLMAP model, in the model too), e.g. with '_' for whitespace")


def write_pairs(path: str | Path, pairs: Iterable[tuple[str, str]]) -> None:
    """hloc pairs format: `query db` per line, UTF-8. A name that would not read back as itself (see
    `check_image_name`) is refused before anything is written."""
    pairs = list(pairs)
    for name in {name for pair in pairs for name in pair}:
        check_image_name(name, path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for q, d in pairs:
            f.write(f"{q} {d}\n")


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    pairs = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"{path}:{lineno}: expected 'query db', got {line!r}")
            pairs.append((parts[0], parts[1]))
    return pairs


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write_json(path: str | Path, data: dict) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
