"""Throughput of the pose stage: the straightforward loop against the stage as the workflow runs it.

The scene is a demo scene of a finished run (`--scene`, default results/demo/courtyard_a: its gt.h5,
local_features.h5 and every method's pairs.txt, 720 pairs), or else a synthetic one rendered here (the
demo's renderer, 24 images of 640x480, SIFT up to 4096 keypoints) with two pairs lists, each image's 5 most
overlapping images and 5 random ones. The whole pose stage of the scene, every method's pairs, in two ways
that must give the same rows:

- the straightforward loop: method after method, pair after pair, in this process with OpenCV and BLAS at
  their default threading: match the pair in its canonical orientation (vop.matching.match_descriptors,
  numpy), estimate at every RANSAC threshold of the sweep, invert the estimate where the query is the
  pair's second image;
- the stage: per method the matches rule (vop.match_store.build_scene_shard: each unordered pair matched
  once per scene, batched matrix products in torch) and the pose rule (vop.pose.estimate_scene_poses: each
  unordered pair estimated once per scene, RANSAC in `--workers` single-threaded worker processes).

Then: the matchings that sharing pairs saves across the methods of a finished demo run (`--demo-results`;
before, every method's pose job matched every one of its pairs), and the batched matcher alone on
`--matching-pairs` pairs of 4096-keypoint SIFT, on CUDA when present, against the per-pair matcher (on a few
of them, on the CPU), with the identical-matches check.

    PYTHONPATH=src .venv/bin/python benchmarks/pose.py --repeats 2 --matching-pairs 40
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the matches rule sets it (scripts/matches.py)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from vop.conf import LocalFeaturesConf, PoseConf  # noqa: E402
from vop.datasets import open_scene, synthetic  # noqa: E402
from vop.estimation import estimate_relative_pose_sweep  # noqa: E402
from vop.geometry import relative_pose_error  # noqa: E402
from vop.io import read_gt, read_pairs, write_pairs  # noqa: E402
from vop.local_features import extract_local_features, read_local_features  # noqa: E402
from vop.match_store import build_scene_shard, canonical_pair, unique_pairs  # noqa: E402
from vop.matching import match_descriptors, match_pairs  # noqa: E402
from vop.pose import estimate_scene_poses  # noqa: E402
from vop.utils import l2_normalize, resolve_device  # noqa: E402


def sequential_loop(pairs, gt, features_h5, thresholds, estimator, ratio):
    index = gt.index()
    features = read_local_features(features_h5, list(index))
    rows = []
    for query, db in pairs:
        a, b = canonical_pair(query, db)
        f0, f1 = features[a], features[b]
        matches = match_descriptors(f0["descriptors"], f1["descriptors"], ratio)
        kpts0, kpts1 = f0["keypoints"][matches[:, 0]] + 0.5, f1["keypoints"][matches[:, 1]] + 0.5
        result = estimate_relative_pose_sweep(kpts0, kpts1, gt.K[index[a]], gt.K[index[b]], thresholds,
                                              estimator=estimator)
        if result is None:
            rows.append([query, db, len(matches), 0, math.nan, math.inf, math.inf])
            continue
        R, t, inliers, threshold = result
        if (a, b) != (query, db):
            R, t = R.T, -R.T @ t
        rows.append([query, db, len(matches), int(inliers.sum()), threshold,
                     *relative_pose_error(gt.relative_pose(index[query], index[db]), R, t)])
    return rows


def same_rows(a, b) -> bool:
    return len(a) == len(b) and all(
        list(x[:2]) == list(y[:2]) and np.allclose(np.asarray(x[2:], float), np.asarray(y[2:], float), equal_nan=True)
        for x, y in zip(a, b))


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def saved_matchings(results: Path) -> None:
    """Matchings of a finished demo run: per method and ordered pair (before) against per scene and
    unordered pair (the matches store)."""
    scenes = sorted(p.parent for p in results.glob("*/gt.h5"))
    if not scenes:
        print(f"saved matchings: no run under {results} (run the demo first)")
        return
    before = before_no_verify = after = 0
    methods = set()
    for scene in scenes:
        needed = []
        for pairs_txt in sorted(scene.glob("*/pairs.txt")):
            method = pairs_txt.parent.name
            methods.add(method)
            verify_first = pairs_txt.parent / "first_stage" / "pairs.txt"
            pairs = read_pairs(pairs_txt)
            # a verify method matches its first stage's ranking (its shortlist) and its pose reads from it
            if verify_first.exists():
                before += len(read_pairs(verify_first)) + len(pairs)  # once to verify, once more for pose
                needed += read_pairs(verify_first)
            else:
                before += len(pairs)
                before_no_verify += len(pairs)
                needed += pairs
        after += len(unique_pairs(needed))
    print(f"saved matchings across the methods of {results} ({len(scenes)} scenes, {', '.join(sorted(methods))}): "
          f"{before} matchings per method and ordered pair ({before_no_verify} without verify) -> {after} per scene "
          f"and unordered pair: {before - after} saved ({100 * (before - after) / before:.0f}%)")


def matching_throughput(features, num_pairs: int, device: str | None, check: int) -> None:
    """match_pairs on pairs of 4096-keypoint SIFT (descriptors drawn from the scene's, with noise)."""
    rng = np.random.default_rng(0)
    pool = np.concatenate([f["descriptors"] for f in features.values()])
    images = {}
    for k in range(48):
        d = pool[rng.integers(0, len(pool), 4096)] + rng.normal(0, 0.03, (4096, pool.shape[1])).astype(np.float32)
        images[f"im{k}"] = l2_normalize(np.maximum(d, 0)).astype(np.float16).astype(np.float32)
    names = list(images)
    pairs = [tuple(names[i] for i in rng.choice(len(names), 2, replace=False)) for _ in range(num_pairs)]
    device = resolve_device(device)
    match_pairs(images, pairs[:4], 0.8, device=device)  # warm-up (CUDA context, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    found = match_pairs(images, pairs, 0.8, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    batched = time.perf_counter() - start
    start = time.perf_counter()
    reference = [match_descriptors(images[a], images[b], 0.8) for a, b in pairs[:check]]
    loop = (time.perf_counter() - start) / check
    equal = sum(np.array_equal(m, r) for (m, _), r in zip(found, reference))
    print(f"matching {num_pairs} pairs of 4096-keypoint SIFT on {device}: {num_pairs / batched:8.1f} pairs/s "
          f"(batched); the per-pair numpy matcher on the CPU: {1 / loop:6.1f} pairs/s; identical matches "
          f"{equal}/{check}")


def synthetic_scene(tmp: Path, images: int, max_keypoints: int):
    """A rendered scene with two pairs lists: each image's 5 most overlapping images, and 5 random ones."""
    synthetic.generate_scene(tmp / "scene", seed=7, num_images=images)
    open_scene("synthetic", tmp, "scene").write_ground_truth(tmp / "gt.h5")
    gt = read_gt(tmp / "gt.h5")
    extract_local_features(tmp / "scene" / "images", gt.names, tmp / "local.h5",
                           LocalFeaturesConf(max_keypoints=max_keypoints))
    n = len(gt.names)
    overlap = np.array(gt.overlap, np.float64)
    np.fill_diagonal(overlap, -1.0)
    ranked = np.argsort(-overlap, axis=1, kind="stable")[:, :5]
    rng = np.random.default_rng(0)
    random = [rng.permutation([j for j in range(n) if j != i])[:5] for i in range(n)]
    methods = {"oracle": [(gt.names[i], gt.names[j]) for i in range(n) for j in ranked[i]],
               "random": [(gt.names[i], gt.names[j]) for i in range(n) for j in random[i]]}
    return tmp / "gt.h5", tmp / "local.h5", methods


def demo_scene(scene: Path):
    """A demo scene of a finished run: every method's pairs."""
    methods = {p.parent.name: read_pairs(p) for p in sorted(scene.glob("*/pairs.txt"))}
    return scene / "gt.h5", scene / "local_features.h5", methods


def run_stage(work: Path, gt_h5: Path, local_h5: Path, methods: dict, conf: PoseConf, workers: int, device):
    """The rules' code, method after method, in a fresh scene folder: {method: rows}, matching seconds."""
    rows, matching = {}, 0.0
    scene = work / "scene"
    for method, pairs in methods.items():
        write_pairs(scene / method / "pairs.txt", pairs)
        start = time.perf_counter()
        build_scene_shard(scene / method / "matches.h5", [scene / method / "pairs.txt"], local_h5, device=device)
        matching += time.perf_counter() - start
        rows[method] = estimate_scene_poses(pairs, gt_h5, local_h5, scene / method / "pose.csv",
                                            scene / method / "poses.h5", conf, num_workers=workers,
                                            matches_h5=scene / method / "matches.h5")
    return rows, matching


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scene", type=Path, default=Path("results/demo/courtyard_a"),
                        help="a demo scene of a finished run (else a synthetic scene is rendered)")
    parser.add_argument("--images", type=int, default=24, help="images of the synthetic scene")
    parser.add_argument("--estimator", default="opencv")
    parser.add_argument("--max_keypoints", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs per variant")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--demo-results", type=Path, default=Path("results/demo"))
    parser.add_argument("--matching-pairs", type=int, default=0,
                        help="also time the batched matcher alone on this many 4096-keypoint pairs (0: skip)")
    parser.add_argument("--device", help="where the matcher runs (default: CUDA when present)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if (args.scene / "local_features.h5").is_file():
            gt_h5, local_h5, methods = demo_scene(args.scene)
            where = f"{args.scene} (a demo scene)"
        else:
            gt_h5, local_h5, methods = synthetic_scene(tmp, args.images, args.max_keypoints)
            where = f"a synthetic scene ({args.scene} has no finished run)"
        gt = read_gt(gt_h5)
        conf = PoseConf(estimator=args.estimator)
        thresholds = list(conf.thresholds)
        features = read_local_features(local_h5, gt.names)
        sizes = [len(f["keypoints"]) for f in features.values()]
        every = [pair for pairs in methods.values() for pair in pairs]
        per_method = sum(len(unique_pairs(pairs)) for pairs in methods.values())
        print(f"{where}: {len(gt.names)} images of {min(sizes)}-{max(sizes)} keypoints; methods "
              f"{', '.join(methods)}: {len(every)} pairs, {per_method} unordered per method, "
              f"{len(unique_pairs(every))} unordered in the scene; estimator {args.estimator}, thresholds "
              f"{thresholds} px, torch threads {torch.get_num_threads()}, device {resolve_device(args.device)}")

        def loop():
            return {m: sequential_loop(pairs, gt, local_h5, thresholds, args.estimator, 0.8)
                    for m, pairs in methods.items()}

        loop_name = "straightforward loop (default threading)"
        variants = {loop_name: lambda: (loop(), math.nan)}
        for workers in sorted({1, args.workers}):
            variants[f"stage: matches + pose, {workers} worker{'s' * (workers > 1)}"] = (
                lambda w=workers: run_stage(Path(tempfile.mkdtemp(dir=tmp)), gt_h5, local_h5, methods, conf, w,
                                            args.device))
        # Interleaved repeats, best of each: load from other processes hits every variant alike.
        best = {name: (math.inf, math.nan, math.nan) for name in variants}
        rows = {}
        print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        for _ in range(args.repeats):
            for name, run in variants.items():
                cpu0, start = cpu_seconds(), time.perf_counter()
                rows[name], matching = run()
                wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
                if wall < best[name][0]:
                    best[name] = (wall, cpu, matching)
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        reference = rows[loop_name]
        for name, (wall, cpu, matching) in best.items():
            split = f"  (matching {matching:5.2f} s)" if math.isfinite(matching) else ""
            same = all(same_rows(rows[name][m], reference[m]) for m in methods)
            print(f"{name:42s} {wall:7.2f} s  {len(every) / wall:6.1f} pairs/s  CPU {cpu:6.1f} s{split}"
                  f"  same rows as the loop: {same}")
        new = best[f"stage: matches + pose, {args.workers} worker{'s' * (args.workers > 1)}"]
        print(f"ratio: {best[loop_name][0] / new[0]:.2f} (wall), {best[loop_name][1] / new[1]:.2f} (CPU): the stage "
              f"with {args.workers} workers against the straightforward loop")
        flat = [r for m in methods for r in reference[m]]
        failed = sum(1 for r in flat if not math.isfinite(r[5]))
        print(f"failed pairs: {failed}; median error {np.median([max(r[5], r[6]) for r in flat]):.2f} deg")

        unique = unique_pairs(every)
        descriptors = {name: f["descriptors"] for name, f in features.items()}
        start = time.perf_counter()
        match_pairs(descriptors, unique, 0.8, device=args.device)
        batched = time.perf_counter() - start
        start = time.perf_counter()
        for a, b in unique:
            match_descriptors(descriptors[a], descriptors[b], 0.8)
        per_pair = time.perf_counter() - start
        print(f"matching the scene's {len(unique)} unordered pairs: batched {len(unique) / batched:.1f} pairs/s, "
              f"per pair (numpy) {len(unique) / per_pair:.1f} pairs/s")
    saved_matchings(args.demo_results)
    if args.matching_pairs:
        on_gpu = resolve_device(args.device).type == "cuda"
        matching_throughput(features, args.matching_pairs, args.device, check=20 if on_gpu else 5)


if __name__ == "__main__":
    main()
