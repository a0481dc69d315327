"""pose.scale_aware: the retrieved pairs of a vop or cls method posed again, each image matched with local
features extracted at the pair's predicted relative scale (overlap.csv, vop.nso).

A pair of relative scale s is brought to one scale by downsampling only (vop.nso.downsampling); each factor is
quantised to a half-octave scale bucket (vop.local_features.scale_bucket), so an image is extracted once per
bucket, whichever pairs ask for it. Bucket 0 is the scene's local_features.h5 as it is.

The extractions live in a cache per method, `{method}/local_features_scaled.h5`: a group per bucket,
`bucket{j}`, holding hloc-like image groups (keypoints in the original pixels, descriptors (128,N) float16,
scores, image_size), each with the attribute `key`: the digest of the local_features conf, the bucket and
the image's ordinary features (so a changed image or conf never reads an old entry). A job copies the valid
entries of its own previous cache and of the scene's other methods' caches, extracts the rest, and writes
exactly the entries its pairs need; the scene's jobs take turns (a lock, as vop.match_store's).

Estimation is vop.pose's on features keyed by (name, bucket): matched here (vop.matching), estimated and
scored as pose.csv's rows. The estimates are shared through vop.estimates like the pose jobs': a pair with
both images at bucket 0 has the ordinary features, so it copies the method's poses.h5 estimate.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np

from vop.conf import LocalFeaturesConf, MatchingConf, PoseConf
from vop.io import POSE_COLUMNS, GroundTruth, atomic_path, copy_cached, read_gt, write_csv
from vop.local_features import extract_at_bucket, read_local_features, scale_bucket
from vop.match_store import canonical_pair, feature_digest, scene_lock, unique_pairs
from vop.nso import downsampling, large_scale_change, pair_values
from vop.pose import _check_image_sizes, _check_pairs, estimate_unique, pose_row
from vop.progress import progress

logger = logging.getLogger(__name__)

FORMAT = "vop-scaled-features/1"
STORED = ("keypoints", "descriptors", "scores", "image_size")

Variant = tuple[str, int]  # (image name, scale bucket)


def pair_buckets(overlap_csv: str | Path, pairs: Sequence[tuple[str, str]]) -> list[tuple[int, int]]:
    """(query bucket, db bucket) of each (query, db) of `pairs` from its predicted relative scale in overlap.csv
    (an empty cell, no scale: both 0)."""
    query, db = downsampling(pair_values(overlap_csv, "relative_scale", pairs))
    return [(scale_bucket(float(q)), scale_bucket(float(d))) for q, d in zip(np.atleast_1d(query), np.atleast_1d(db))]


def _group(bucket: int) -> str:
    return f"bucket{bucket}"


def entry_key(conf: LocalFeaturesConf, bucket: int, source_digest: str) -> str:
    """Digest of what a cached extraction depends on: the conf, the bucket and the image (as its ordinary
    features' digest, vop.match_store.feature_digest)."""
    h = hashlib.blake2b(digest_size=16)
    for part in (FORMAT, repr(conf.to_dict()), str(bucket), source_digest):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _cached(paths: Iterable[Path], keys: Mapping[Variant, str], found: dict[Variant, dict]) -> dict[Path, int]:
    """Copy into `found` the entries of `keys` that the caches `paths` hold with the same key; {path: count}."""

    def entry(f: h5py.File, variant: Variant) -> dict | None:
        g = f.get(f"{_group(variant[1])}/{variant[0]}")
        if isinstance(g, h5py.Group) and g.attrs.get("key") == keys[variant] and "keypoints" in g:
            return {k: g[k][()] for k in STORED}
        return None

    return copy_cached(paths, keys, found, entry, lambda f, _: f.attrs.get("format") == FORMAT)


def update_scaled_features(cache_h5: str | Path, image_dir: str | Path, variants: Iterable[Variant],
                           ordinary: Mapping[str, Mapping[str, np.ndarray]],
                           conf: LocalFeaturesConf = LocalFeaturesConf(), shared: Sequence[str | Path] = (),
                           num_workers: int = 2) -> tuple[dict[Variant, dict[str, np.ndarray]], dict[str, int]]:
    """Make `cache_h5` hold exactly the extractions of `variants` at buckets > 0, and read them.

    `ordinary` maps each image to its local_features.h5 entry (read_local_features), which ties an entry to the
    image. Entries of the cache itself or of the `shared` caches made with the same conf from the same image
    are copied, the others extracted (vop.local_features.extract_at_bucket, on `num_workers` threads). Returns
    ({(name, bucket): features as read_local_features gives them}, counts {needed, reused, shared, extracted}).
    """
    cache_h5, image_dir = Path(cache_h5), Path(image_dir)
    wanted = sorted({(str(n), int(b)) for n, b in variants if b > 0})
    digests = {name: feature_digest(ordinary[name]) for name in dict.fromkeys(n for n, _ in wanted)}
    keys = {v: entry_key(conf, v[1], digests[v[0]]) for v in wanted}
    found: dict[Variant, dict] = {}
    own = _cached([cache_h5], keys, found).get(cache_h5, 0)
    others = [Path(p) for p in shared if Path(p).resolve() != cache_h5.resolve()]
    from_others = sum(_cached(others, keys, found).values())
    todo = [v for v in wanted if v not in found]

    def run(variant: Variant) -> dict[str, np.ndarray]:
        return extract_at_bucket(image_dir / variant[0], variant[1], conf)

    with ThreadPoolExecutor(max(1, num_workers)) as pool:  # OpenCV and COLMAP release the GIL
        found.update(zip(todo, progress(pool.map(run, todo), len(todo), "scaled local features", "images",
                                        logger=logger)))
    with atomic_path(cache_h5) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(format=FORMAT, local_features=repr(conf.to_dict()))
        for variant in wanted:
            g = f.create_group(f"{_group(variant[1])}/{variant[0]}")
            for k in STORED:
                g.create_dataset(k, data=found[variant][k])
            g.attrs["key"] = keys[variant]
    features: dict[Variant, dict[str, np.ndarray]] = {}
    for bucket in sorted({b for _, b in wanted}):  # read back: the very arrays a later copy reads
        names = [n for n, b in wanted if b == bucket]
        read = read_local_features(cache_h5, names, _group(bucket))
        features.update(((name, bucket), feats) for name, feats in read.items())
    counts = {"needed": len(wanted), "reused": own, "shared": from_others, "extracted": len(todo)}
    logger.info("%s: %d (image, scale bucket) extractions: %d reused, %d from the scene's other caches, %d extracted",
                cache_h5, counts["needed"], counts["reused"], counts["shared"], counts["extracted"])
    return features, counts


def estimate_scale_aware_poses(pairs: Sequence[tuple[str, str]], overlap_csv: str | Path, gt: GroundTruth | str | Path,
                               local_features_h5: str | Path, image_dir: str | Path, out_csv: str | Path,
                               cache_h5: str | Path, estimates_h5: str | Path | None = None,
                               conf: PoseConf = PoseConf(), matching: MatchingConf = MatchingConf(),
                               local_features: LocalFeaturesConf = LocalFeaturesConf(), num_workers: int = 2,
                               gt_path: str | Path | None = None, shared_features: Sequence[str | Path] = (),
                               shared_estimates: Sequence[str | Path] = (), device: str | None = None) -> list[list]:
    """pose.csv's rows (POSE_COLUMNS, in order) of `pairs`, each image matched at its scale bucket (`pair_buckets`
    of overlap.csv), written to `out_csv`. `local_features` must be the conf local_features.h5 was made with.
    Extractions at buckets > 0 come from `cache_h5` (and `shared_features`), estimates from `estimates_h5` and
    `shared_estimates` (vop.estimates: the method's poses.h5 gives the pairs at bucket 0); returns the rows."""
    if not isinstance(gt, GroundTruth):
        gt_path, gt = gt, read_gt(gt)
    gt_path = gt_path or "the ground truth (gt.h5)"
    pairs = [tuple(p) for p in pairs]
    index = _check_pairs(pairs, gt, gt_path)
    buckets = pair_buckets(overlap_csv, pairs)
    variant_pairs = [((q, bq), (d, bd)) for (q, d), (bq, bd) in zip(pairs, buckets)]
    names = list(dict.fromkeys(n for pair in pairs for n in pair))
    ordinary = read_local_features(local_features_h5, names)
    _check_image_sizes(ordinary, gt, index, local_features_h5, gt_path)
    features, counts = update_scaled_features(cache_h5, image_dir, [v for p in variant_pairs for v in p], ordinary,
                                              local_features, shared_features, num_workers)
    features.update(((name, 0), feats) for name, feats in ordinary.items())
    unique = unique_pairs(variant_pairs)  # sorted by name first: the canonical orientation of the image pair
    estimates, estimated = estimate_unique(unique, features, gt, index, conf, matching, num_workers, device=device,
                                           estimates_h5=estimates_h5, shared=shared_estimates)
    rows = [pose_row(q, d, estimates[canonical_pair(vq, vd)], gt, index)
            for (q, d), (vq, vd) in zip(pairs, variant_pairs)]
    write_csv(out_csv, POSE_COLUMNS, rows)
    rescaled = sum(1 for bq, bd in buckets if bq or bd)
    logger.info("Estimated %d scale-aware relative poses (%d at another scale than the ordinary run's; %d unordered "
                "variant pairs: %d estimated, %d copied; %d extractions, %d new) into %s", len(rows), rescaled,
                len(unique), estimated, len(unique) - estimated, counts["needed"], counts["extracted"], out_csv)
    return rows


def estimate_scene_scale_aware_poses(pairs: Sequence[tuple[str, str]], overlap_csv: str | Path, gt_h5: str | Path,
                                     local_features_h5: str | Path, image_dir: str | Path, out_csv: str | Path,
                                     cache_h5: str | Path, estimates_h5: str | Path, poses_h5: str | Path,
                                     conf: PoseConf = PoseConf(), matching: MatchingConf = MatchingConf(),
                                     local_features: LocalFeaturesConf = LocalFeaturesConf(),
                                     num_workers: int = 2) -> list[list]:
    """The rule's `estimate_scale_aware_poses`: a method's run in results/{dataset}/{scene}/{method}/, sharing
    the scene's other methods' caches and estimates (their scale-aware ones, and the ordinary poses.h5 of
    every method, `poses_h5` among them), in turns under the scene's lock."""
    cache_h5, estimates_h5 = Path(cache_h5), Path(estimates_h5)
    scene_dir = cache_h5.parent.parent
    with scene_lock(scene_dir / f".{cache_h5.name}.lock"):
        shared_features = sorted(scene_dir.glob(f"*/{cache_h5.name}"))
        shared_estimates = [Path(poses_h5), *sorted(scene_dir.glob(f"*/{estimates_h5.name}")),
                            *sorted(scene_dir.glob(f"*/{Path(poses_h5).name}"))]
        return estimate_scale_aware_poses(pairs, overlap_csv, gt_h5, local_features_h5, image_dir, out_csv, cache_h5,
                                          estimates_h5, conf, matching, local_features, num_workers, gt_h5,
                                          shared_features, shared_estimates)


# ---------------------------------------------------------------------------------------------------
# scale.csv: the pairs with a large scale change


SCALE_COLUMNS = ["method", "scene", "pairs", "auc@5_all", "auc@10_all", "auc@20_all", "large_scale_pairs",
                 "auc@5_large", "auc@10_large", "auc@20_large"]


def _run_parts(run: Mapping) -> tuple[np.ndarray, np.ndarray]:
    """(error of every retrieved pair, whether its true scale change is large) of one run."""
    from vop.metrics import pair_errors, read_pose_csv

    pose = read_pose_csv(run["pose_csv"])
    true = pair_values(run["overlap_csv"], "true_relative_scale", list(zip(pose["query"], pose["db"])),
                       str(run["pose_csv"]))
    return pair_errors(pose), large_scale_change(true)


def _scale_row(method: str, scene: str, parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> list:
    from vop.metrics import pose_auc

    errors = np.concatenate([e for e, _ in parts])
    large = np.concatenate([g for _, g in parts])
    return [method, scene, len(errors), *(round(a, 4) for a in pose_auc(errors)), int(large.sum()),
            *(round(a, 4) for a in pose_auc(errors[large]))]


def scale_table(runs: Sequence[Mapping], out_csv: str | Path) -> list[list]:
    """scale.csv: per method (each NSO method, then its +scale run) and scene, then ALL: the retrieved pairs'
    pose AUC over every pair (auc.csv's `_all` kind), and over the pairs with a large true scale change.
    `runs`: dicts with method, scene, pose_csv and overlap_csv (the method's, also for its +scale run)."""
    by_method: dict[str, list] = {}
    for run in runs:
        if run["scene"] == "ALL":
            raise ValueError(f"scale_table: a scene may not be called 'ALL' (method {run['method']!r})")
        by_method.setdefault(str(run["method"]), []).append((str(run["scene"]), _run_parts(run)))
    rows = []
    for method, scenes in by_method.items():
        rows += [_scale_row(method, scene, [part]) for scene, part in sorted(scenes, key=lambda s: s[0])]
        rows.append(_scale_row(method, "ALL", [part for _, part in scenes]))
    write_csv(out_csv, SCALE_COLUMNS, rows)
    logger.info("Wrote %d rows to %s", len(rows), out_csv)
    return rows
