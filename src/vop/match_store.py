"""The matches store of a scene: every pair any stage needs, matched once, keyed by the unordered pair.

The store is one file per method, `results/{dataset}/{scene}/{method}/matches.h5` (DESIGN.md's per-method
shards), each in hloc's matches.h5 layout: one group per pair under `names_to_pair(name0, name1)` (each
name with "/" replaced by "-", joined by "/"), holding `matches0` (N0,) int32, the index in image 1 of each
keypoint's match or -1, and `matching_scores0` (N0,) float16, the cosine similarity of the match; hloc's
readers find a pair in either order. Each unordered pair is stored once per shard, in its canonical
orientation (the names in sorted order), and read in either orientation: pose and verify work on the
canonical one, so (a,b) and (b,a) share one matching and one estimate. A method's shard holds exactly the
pairs its readers need (pose: its pairs.txt; verify: its first stage's ranking).

A pair is matched once per scene: a shard's job copies every pair it needs that a shard of the scene
already holds, its own previous version included, and matches only the rest. The scene's shard jobs take
turns (a lock file in the scene folder), so a job finds the pairs the one before it matched.

What keeps it honest with Snakemake's caching:

- A shard is the output of its method's `matches` job, whose inputs are that method's pairs file and the
  scene's local features, and whose params are the `matching` conf: it reruns when one of those changes,
  and then only for the pairs it lacks. The output is flagged `update`, so Snakemake keeps the previous
  version for the job to reuse (and restores it if the job fails); the new one replaces it atomically.
- Its readers (that method's pose, and verify) take it as an ordinary input: a shard that changes reruns
  them, one that does not change (another method's did) leaves them alone.
- Reused means valid: every pair records the digest of both images' local features (keypoints and
  descriptors), every shard its matching conf and format. A pair is copied from a shard (its own old one or
  another method's, which are a cache, not an input) only if it was matched from the same features with the
  same conf; anything else is matched again. Every read (`read_matches`) checks the same against the
  features and conf the reader was given, so a stale store is never read: it is an error that names the fix.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

from vop.conf import MatchingConf
from vop.io import atomic_path, copy_cached, read_pairs
from vop.local_features import read_local_features
from vop.matching import match_pairs

logger = logging.getLogger(__name__)

FORMAT = "vop-matches/1"
MATCHER = "mutual nearest neighbours + ratio test (vop.matching)"

Pair = tuple[str, str]


def canonical_pair(name0: str, name1: str) -> Pair:
    """The stored orientation of an unordered pair: its names in sorted order."""
    return (name0, name1) if name0 <= name1 else (name1, name0)


def names_to_pair(name0: str, name1: str) -> str:
    """hloc's key of a pair in matches.h5."""
    return "/".join((name0.replace("/", "-"), name1.replace("/", "-")))


def unique_pairs(pairs: Iterable[Pair]) -> list[Pair]:
    """The canonical unordered pairs of `pairs`, each once, in order of first appearance."""
    return list(dict.fromkeys(canonical_pair(a, b) for a, b in pairs))


def _check_keys(pairs: Sequence[Pair], where: str) -> None:
    """hloc's key replaces "/" by "-": two names that differ only there would share a key."""
    seen: dict[str, Pair] = {}
    for pair in pairs:
        key = names_to_pair(*pair)
        if key in seen and seen[key] != pair:
            raise ValueError(f"{where}: pairs {seen[key]} and {pair} have the same matches.h5 key {key!r} "
                             "(hloc writes '/' in image names as '-'); rename one of the images")
        seen[key] = pair


def feature_digest(features: Mapping[str, np.ndarray]) -> str:
    """Digest of one image's local features as read (vop.local_features.read_local_features)."""
    h = hashlib.blake2b(digest_size=16)
    for key in ("keypoints", "descriptors"):
        array = np.ascontiguousarray(features[key])
        h.update(f"{key}{array.dtype.str}{array.shape}".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def _conf_attrs(conf: MatchingConf) -> dict:
    return {"format": FORMAT, "matcher": MATCHER, "ratio": float(conf.ratio)}


def _stale_conf(f: h5py.File, conf: MatchingConf) -> str | None:
    """Why a store cannot be read with `conf` (None: it can)."""
    for key, want in _conf_attrs(conf).items():
        have = f.attrs.get(key)
        if isinstance(have, bytes):
            have = have.decode()
        elif isinstance(have, np.generic):
            have = have.item()
        if have != want:
            return f"it was written with {key} {have!r}, the conf asks for {want!r}"
    return None


def _pair_matches(group: h5py.Group) -> np.ndarray:
    matches0 = group["matches0"][()]
    rows = np.flatnonzero(matches0 >= 0)
    return np.stack([rows, matches0[rows]], axis=1).astype(np.int64)


def _write_pair(f: h5py.File, pair: Pair, matches0: np.ndarray, scores0: np.ndarray,
                digests: tuple[str, str]) -> None:
    g = f.require_group(names_to_pair(*pair))
    g.create_dataset("matches0", data=np.asarray(matches0, np.int32))
    g.create_dataset("matching_scores0", data=np.asarray(scores0, np.float16))
    g.attrs.update(name0=pair[0], name1=pair[1], digest0=digests[0], digest1=digests[1])


def _hloc_arrays(matches: np.ndarray, scores: np.ndarray, num0: int) -> tuple[np.ndarray, np.ndarray]:
    """(M,2) matches and their scores as hloc's per-keypoint matches0 / matching_scores0."""
    matches0 = np.full(num0, -1, np.int32)
    scores0 = np.zeros(num0, np.float16)
    matches0[matches[:, 0]] = matches[:, 1]
    scores0[matches[:, 0]] = scores
    return matches0, scores0


def _valid_entry(f: h5py.File, pair: Pair, digests: tuple[str, str]) -> h5py.Group | None:
    key = names_to_pair(*pair)
    if key not in f:
        return None
    g = f[key]
    if not isinstance(g, h5py.Group) or "matches0" not in g:
        return None
    attrs = tuple(str(g.attrs.get(k, "")) for k in ("name0", "name1", "digest0", "digest1"))
    return g if attrs == (*pair, *digests) else None


def _cached_entries(paths: Sequence[Path], needed: Sequence[Pair], digests: Mapping[str, str], conf: MatchingConf,
                    found: dict[Pair, tuple[np.ndarray, np.ndarray]]) -> dict[Path, int]:
    """Copy into `found` the valid entries of `needed` that the stores `paths` hold; {path: pairs taken}."""

    def usable(f: h5py.File, path: Path) -> bool:
        why = _stale_conf(f, conf)
        if why:
            logger.info("%s: not reused, %s", path, why)
        return not why

    def entry(f: h5py.File, pair: Pair):
        g = _valid_entry(f, pair, (digests[pair[0]], digests[pair[1]]))
        return None if g is None else (g["matches0"][()], g["matching_scores0"][()])

    return copy_cached(paths, needed, found, entry, usable)


def update_store(store_h5: str | Path, pairs: Iterable[Pair], features: Mapping[str, Mapping[str, np.ndarray]],
                 conf: MatchingConf = MatchingConf(), device: str | None = None,
                 shared: Sequence[str | Path] = ()) -> dict[str, int]:
    """Make `store_h5` hold exactly the unordered pairs of `pairs`, each matched from `features`.

    `features` maps every image of the pairs to its local features (read_local_features). A pair that the
    store itself or one of the `shared` stores (the scene's other shards) holds, matched from the same
    features with the same conf, is copied; the others are matched (vop.matching.match_pairs, on `device`);
    pairs no longer asked for are dropped. The new store replaces the old one atomically. Returns the counts
    {needed, reused (from the store itself), shared (from the others), matched, dropped}.
    """
    store_h5 = Path(store_h5)
    needed = sorted(unique_pairs(pairs))
    _check_keys(needed, str(store_h5))
    digests = {name: feature_digest(features[name]) for name in dict.fromkeys(n for p in needed for n in p)}
    found: dict[Pair, tuple[np.ndarray, np.ndarray]] = {}
    own = _cached_entries([store_h5], needed, digests, conf, found).get(store_h5, 0)
    stored = len(stored_pairs(store_h5)) if store_h5.is_file() else 0
    others = [Path(p) for p in shared if Path(p).resolve() != store_h5.resolve()]
    from_others = sum(_cached_entries(others, needed, digests, conf, found).values())
    todo = [pair for pair in needed if pair not in found]
    descriptors = {name: features[name]["descriptors"] for name in dict.fromkeys(n for p in todo for n in p)}
    for pair, (matches, scores) in zip(todo, match_pairs(descriptors, todo, conf.ratio, device=device)):
        found[pair] = _hloc_arrays(matches, scores, len(features[pair[0]]["keypoints"]))
    with atomic_path(store_h5) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(_conf_attrs(conf))
        for pair in needed:
            _write_pair(f, pair, *found[pair], (digests[pair[0]], digests[pair[1]]))
    counts = {"needed": len(needed), "reused": own, "shared": from_others, "matched": len(todo),
              "dropped": stored - own}
    logger.info("%s: %d unordered pairs: %d reused, %d from the scene's other stores, %d matched; %d stored "
                "pairs not kept (no longer needed, or stale)", store_h5, counts["needed"], counts["reused"],
                counts["shared"], counts["matched"], counts["dropped"])
    return counts


@contextlib.contextmanager
def scene_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created): the scene's store jobs take turns, so that each finds the
    pairs the one before it matched. Where the filesystem has no locks, go on without (pairs may then be
    matched by two jobs at once: the same result, twice the work)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as err:
            logger.warning("%s: no lock (%s); matching without waiting for the scene's other stores", path, err)
        yield


def build_store(store_h5: str | Path, pairs_files: Sequence[str | Path], local_features_h5: str | Path,
                conf: MatchingConf = MatchingConf(), device: str | None = None,
                shared: Sequence[str | Path] = ()) -> dict[str, int]:
    """`update_store` with the pairs of every pairs file (hloc format) and the features of their images."""
    pairs = [pair for path in pairs_files for pair in read_pairs(path)]
    names = list(dict.fromkeys(name for pair in pairs for name in pair))
    return update_store(store_h5, pairs, read_local_features(local_features_h5, names), conf, device, shared)


def build_scene_shard(store_h5: str | Path, pairs_files: Sequence[str | Path], local_features_h5: str | Path,
                      conf: MatchingConf = MatchingConf(), device: str | None = None) -> dict[str, int]:
    """The rule's `build_store`: a method's shard results/{dataset}/{scene}/{method}/matches.h5, sharing the
    pairs of the scene's other shards, in turns under the scene's lock."""
    store_h5 = Path(store_h5)
    scene_dir = store_h5.parent.parent
    with scene_lock(scene_dir / f".{store_h5.name}.lock"):
        return build_store(store_h5, pairs_files, local_features_h5, conf, device,
                           shared=sorted(scene_dir.glob(f"*/{store_h5.name}"))
                           + sorted(scene_dir.glob(f"*/sfm/{store_h5.name}")))  # and vop.sfm's sweep stores


def _stored_pairs(f: h5py.File):
    """(name0, name1) of every pair group of an open store."""
    for first in f.values():
        if isinstance(first, h5py.Group):
            for g in first.values():
                if isinstance(g, h5py.Group) and "matches0" in g:
                    yield str(g.attrs.get("name0", "")), str(g.attrs.get("name1", ""))


def stored_pairs(store_h5: str | Path) -> list[Pair]:
    """The canonical pairs a store holds."""
    with h5py.File(store_h5, "r") as f:
        return sorted(_stored_pairs(f))


def read_matches(store_h5: str | Path, pairs: Iterable[Pair], features: Mapping[str, Mapping[str, np.ndarray]],
                 conf: MatchingConf = MatchingConf(), local_features_h5: str | Path | None = None
                 ) -> dict[Pair, np.ndarray]:
    """{canonical pair: (M,2) matches [i0, i1] in its canonical orientation} for the unordered `pairs`.

    Raises, naming the store and the fix, when the store was written with another conf or format, lacks a
    pair, or matched a pair from other local features than `features` (read from `local_features_h5`).
    """
    store_h5 = Path(store_h5)
    source = local_features_h5 or "the local features"
    fix = "the store is stale: rerun its rule (snakemake ... -R matches), or delete it"
    digests: dict[str, str] = {}
    out: dict[Pair, np.ndarray] = {}
    with h5py.File(store_h5, "r") as f:
        why = _stale_conf(f, conf)
        if why:
            raise ValueError(f"{store_h5}: cannot be read: {why}; {fix}")
        for pair in unique_pairs(pairs):
            for name in pair:
                if name not in digests:
                    digests[name] = feature_digest(features[name])
            key = names_to_pair(*pair)
            if key not in f:
                raise KeyError(f"{store_h5}: pair {pair} is not in the store (key {key!r}); {fix}")
            g = _valid_entry(f, pair, (digests[pair[0]], digests[pair[1]]))
            if g is None:
                raise ValueError(f"{store_h5}: pair {pair} was matched from other local features than {source}; "
                                 f"{fix}")
            out[pair] = _pair_matches(g)
    return out


def oriented(matches: Mapping[Pair, np.ndarray], name0: str, name1: str) -> np.ndarray:
    """The (M,2) matches of (name0, name1) from canonical ones: [index in name0, index in name1]."""
    pair = canonical_pair(name0, name1)
    m = matches[pair]
    return m if pair == (name0, name1) else m[:, ::-1]
