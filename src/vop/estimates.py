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
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

from vop.conf import MatchingConf, PoseConf
from vop.io import atomic_path
from vop.match_store import Pair, names_to_pair

logger = logging.getLogger(__name__)

FORMAT = "vop-estimates/1"

# (num_matches, R (3,3) or None, t (3,) or None, num_inliers, threshold): T_{name0->name1} of a canonical pair
Estimate = tuple


def estimate_key(digest0: str, digest1: str, K0: np.ndarray, K1: np.ndarray, matching: MatchingConf,
                 conf: PoseConf) -> str:
    """Digest of everything an estimate depends on."""
    h = hashlib.blake2b(digest_size=16)
    for part in (FORMAT, digest0, digest1, repr(matching.to_dict()), repr(conf.to_dict()), repr(conf.thresholds)):
        h.update(part.encode())
        h.update(b"\0")
    for K in (K0, K1):
        h.update(np.ascontiguousarray(K, np.float64).tobytes())
    return h.hexdigest()


def read_estimates(paths: Sequence[str | Path], keys: Mapping[Pair, str]) -> tuple[dict[Pair, Estimate], dict]:
    """The estimates of the pairs of `keys` that the files `paths` hold with the same key; and {path: count}."""
    found: dict[Pair, Estimate] = {}
    taken = {}
    for path in map(Path, paths):
        missing = [pair for pair in keys if pair not in found]
        if not missing or not path.is_file():
            continue
        try:
            with h5py.File(path, "r") as f:
                if f.attrs.get("format") != FORMAT:
                    continue
                count = 0
                for pair in missing:
                    name = names_to_pair(*pair)
                    if name not in f:
                        continue
                    g = f[name]
                    if g.attrs.get("key") != keys[pair] or (g.attrs.get("name0"), g.attrs.get("name1")) != pair:
                        continue
                    R = g["R"][()] if "R" in g else None
                    t = g["t"][()] if "t" in g else None
                    found[pair] = (int(g.attrs["num_matches"]), R, t, int(g.attrs["num_inliers"]),
                                   float(g.attrs["threshold"]))
                    count += 1
                taken[path] = count
        except OSError as err:  # an unreadable cache is no cache
            logger.warning("%s: not reused (%s)", path, err)
    return found, taken


def write_estimates(path: str | Path, estimates: Mapping[Pair, Estimate], keys: Mapping[Pair, str]) -> None:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        for pair, (num_matches, R, t, num_inliers, threshold) in estimates.items():
            g = f.require_group(names_to_pair(*pair))
            g.attrs.update(name0=pair[0], name1=pair[1], key=keys[pair], num_matches=num_matches,
                           num_inliers=num_inliers, threshold=threshold)
            if R is not None:
                g.create_dataset("R", data=np.asarray(R, np.float64))
                g.create_dataset("t", data=np.asarray(t, np.float64))
