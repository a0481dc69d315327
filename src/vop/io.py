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
import shutil
from collections.abc import Iterable, Iterator, Sequence
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
    """Image names in an h5 keyed by name (groups that hold datasets), as hloc lists them."""
    names: set[str] = set()

    def visit(_, obj):
        if isinstance(obj, h5py.Dataset) and obj.parent.name != "/":
            names.add(obj.parent.name.strip("/"))

    with h5py.File(path, "r") as f:
        f.visititems(visit)
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

    def index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}

    def relative_pose(self, i: int, j: int) -> np.ndarray:
        """T_{i->j}: maps points in camera i to camera j."""
        return self.T_w2cam[j] @ np.linalg.inv(self.T_w2cam[i])


RESERVED_GT_KEYS = ("names", "overlap", "relevance")  # root entries of gt.h5 besides the image groups


def write_gt(path: str | Path, gt: GroundTruth) -> None:
    clash = [n for n in gt.names if n.strip("/").split("/")[0] in RESERVED_GT_KEYS]
    if clash:
        raise ValueError(f"{path}: image name {clash[0]!r} starts with a key gt.h5 keeps for itself "
                         f"({', '.join(RESERVED_GT_KEYS)}); rename that file or folder")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("names", data=np.array(gt.names, dtype=h5py.string_dtype()))
        if gt.overlap is not None:
            f.create_dataset("overlap", data=np.asarray(gt.overlap, np.float32))
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


def decode_names(dataset: h5py.Dataset) -> list[str]:
    """A root `names` dataset as Python strings (h5py returns variable-length strings as bytes)."""
    return [n.decode() if isinstance(n, bytes) else str(n) for n in dataset[()]]


def read_gt(path: str | Path) -> GroundTruth:
    path = Path(path)
    with h5py.File(path, "r") as f:
        names = decode_names(f["names"])
        K = np.stack([f[n]["K"][()] for n in names]) if names else np.zeros((0, 3, 3))
        T = np.stack([f[n]["T_w2cam"][()] for n in names]) if names else np.zeros((0, 4, 4))
        size = np.stack([f[n]["image_size"][()] for n in names]) if names else np.zeros((0, 2))
        overlap = f["overlap"][()] if "overlap" in f else None
        relevance = None
        if "relevance" in f and isinstance(f["relevance"], h5py.Group) and "grade" in f["relevance"]:
            r = f["relevance"]
            relevance = Relevance(r["query"][()], r["db"][()], r["grade"][()])
        views = _read_views(f, names)
    return GroundTruth(names, K, T, size, overlap, relevance, views)


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


def write_pairs(path: str | Path, pairs: Iterable[tuple[str, str]]) -> None:
    """hloc pairs format: `query db` per line."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        for q, d in pairs:
            f.write(f"{q} {d}\n")


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    pairs = []
    with open(path) as f:
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
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write_json(path: str | Path, data: dict) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
