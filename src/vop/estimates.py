"""Relative-pose estimates of a scene's unordered pairs, estimated once and shared by its pose jobs.

Each pose job writes, beside its pose.csv, the estimates it scored: `{method}/poses.h5`, one group per
canonical pair (hloc's `names_to_pair` key) with `R` (3,3), `t` (3,), `num_matches`, `num_inliers` and
`threshold` (none of R, t when the estimation failed). Before estimating, a pose job copies from the
scene's poses.h5 files (its own previous one included) every estimate it needs that was made from the same
inputs, and estimates only the rest: the same pair retrieved by several methods is estimated once per
scene. The jobs of a scene take turns (a lock file, as the matches store's).

The same inputs are recorded as one digest per pair (`estimate_key`): both images' local features (which,
with the matching conf, fix the matches), both intrinsics, the matching conf and the pose conf (estimator,
thresholds). The estimators are seeded, so an estimate is a function of these: copying it gives the very
rows estimating would. Another method's poses.h5 is a cache, not an input; an entry whose key differs is
never used.

The pose of pose.scale_aware (vop.scale_aware) pairs feature variants, an image at a scale bucket: a pair of
(name, bucket) keys. Its entry is the plain pair's where both buckets are 0 (the same features, so the same
key: it copies the ordinary pose job's estimate), else the pair key with the buckets appended.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

from vop.conf import MatchingConf, PoseConf
from vop.io import atomic_path, copy_cached
from vop.match_store import Pair, names_to_pair

FORMAT = "vop-estimates/1"

# (num_matches, R (3,3) or None, t (3,) or None, num_inliers, threshold): T_{name0->name1} of a canonical pair
Estimate = tuple


def _variant(key) -> tuple[str, int]:
    """(image name, scale bucket) of a pair's side: an image name, or a (name, bucket) variant."""
    return (key, 0) if isinstance(key, str) else (str(key[0]), int(key[1]))


def _entry(pair) -> tuple[str, tuple]:
    """The group name of a pair's estimate and the (name0, name1, bucket0, bucket1) it records."""
    (name0, bucket0), (name1, bucket1) = _variant(pair[0]), _variant(pair[1])
    group = names_to_pair(name0, name1)
    if bucket0 or bucket1:
        group += f"@{bucket0}-{bucket1}"
    return group, (name0, name1, bucket0, bucket1)


def _recorded(g: h5py.Group) -> tuple:
    return (g.attrs.get("name0"), g.attrs.get("name1"), int(g.attrs.get("bucket0", 0)), int(g.attrs.get("bucket1", 0)))


def estimate_key(digest0: str, digest1: str, K0: np.ndarray, K1: np.ndarray, matching: MatchingConf,
                 conf: PoseConf) -> str:
    """Digest of everything an estimate depends on (not scale_aware, which says which runs exist: the
    ordinary and the scale-aware run share the keys of identical inputs, and turning it on keeps the cache)."""
    estimation = {key: value for key, value in conf.to_dict().items() if key != "scale_aware"}
    h = hashlib.blake2b(digest_size=16)
    for part in (FORMAT, digest0, digest1, repr(matching.to_dict()), repr(estimation), repr(conf.thresholds)):
        h.update(part.encode())
        h.update(b"\0")
    for K in (K0, K1):
        h.update(np.ascontiguousarray(K, np.float64).tobytes())
    return h.hexdigest()


def read_estimates(paths: Sequence[str | Path], keys: Mapping[Pair, str]) -> tuple[dict[Pair, Estimate], dict]:
    """The estimates of the pairs of `keys` that the files `paths` hold with the same key; and {path: count}."""

    def entry(f: h5py.File, pair: Pair) -> Estimate | None:
        name, recorded = _entry(pair)
        g = f.get(name)
        if g is None or g.attrs.get("key") != keys[pair] or _recorded(g) != recorded:
            return None
        R = g["R"][()] if "R" in g else None
        t = g["t"][()] if "t" in g else None
        return int(g.attrs["num_matches"]), R, t, int(g.attrs["num_inliers"]), float(g.attrs["threshold"])

    found: dict[Pair, Estimate] = {}
    taken = copy_cached(paths, keys, found, entry, lambda f, _: f.attrs.get("format") == FORMAT)
    return found, taken


def write_estimates(path: str | Path, estimates: Mapping[Pair, Estimate], keys: Mapping[Pair, str]) -> None:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        for pair, (num_matches, R, t, num_inliers, threshold) in estimates.items():
            name, (name0, name1, bucket0, bucket1) = _entry(pair)
            g = f.require_group(name)
            g.attrs.update(name0=name0, name1=name1, key=keys[pair], num_matches=num_matches,
                           num_inliers=num_inliers, threshold=threshold)
            if bucket0 or bucket1:
                g.attrs.update(bucket0=bucket0, bucket1=bucket1)
            if R is not None:
                g.create_dataset("R", data=np.asarray(R, np.float64))
                g.create_dataset("t", data=np.asarray(t, np.float64))
