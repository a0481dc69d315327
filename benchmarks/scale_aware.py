"""What matching at the relative scale buys (pose.scale_aware), with the predicted scale and with the true one.

On a finished run, a method's retrieved pairs are posed three ways, here, in a scratch folder: at the ordinary
scale (its pose.csv, copied), at the scale predicted from its votes (overlap.csv's relative_scale, what the
pipeline's pose_scale_aware does) and at the true scale (true_relative_scale: an oracle of the scale, which
separates what scale-aware matching can buy from how well the votes predict the scale). Pose AUC over every
retrieved pair and over those whose true scale differs by 2x or more, with how many pairs each run moves off
the ordinary scale, and the matches and inliers of the 2x pairs.

    PYTHONPATH=src .venv/bin/python benchmarks/scale_aware.py --results results/demo --images resources/demo
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from vop.conf import LocalFeaturesConf, MatchingConf, PoseConf
from vop.io import read_pairs
from vop.metrics import pair_errors, pose_auc, read_pose_csv
from vop.nso import large_scale_change, pair_values
from vop.scale_aware import estimate_scale_aware_poses, pair_buckets


def with_true_scale(overlap_csv: Path, out_csv: Path) -> None:
    """overlap.csv with the true relative scale in the predicted one's column."""
    with open(overlap_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    with open(out_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "relative_scale": r["true_relative_scale"]} for r in rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, required=True, help="results/{dataset} of a finished run")
    parser.add_argument("--images", type=Path, required=True, help="the folder holding each scene's images/")
    parser.add_argument("--method", default="vop")
    parser.add_argument("--config", type=Path, default=Path("config/config.yaml"))
    args = parser.parse_args()
    config = yaml.safe_load(args.config.read_text())
    local = LocalFeaturesConf.from_dict(config.get("local_features") or {})
    matching = MatchingConf.from_dict(config.get("matching") or {})
    pose = PoseConf.from_dict(config.get("pose") or {})

    runs = {"ordinary": [], "predicted scale": [], "true scale": []}
    large, moved, seconds = [], {k: 0 for k in runs}, {k: 0.0 for k in runs}
    with tempfile.TemporaryDirectory() as tmp:
        for scene in sorted(p.parent.parent for p in args.results.glob(f"*/{args.method}/overlap.csv")):
            run = scene / args.method
            pairs = read_pairs(run / "pairs.txt")
            large.append(large_scale_change(pair_values(run / "overlap.csv", "true_relative_scale", pairs)))
            runs["ordinary"].append(read_pose_csv(run / "pose.csv"))
            oracle = Path(tmp) / f"{scene.name}_overlap_true.csv"
            with_true_scale(run / "overlap.csv", oracle)
            for kind, overlap in (("predicted scale", run / "overlap.csv"), ("true scale", oracle)):
                moved[kind] += sum(1 for b in pair_buckets(overlap, pairs) if any(b))
                out = Path(tmp) / f"{scene.name}_{kind.replace(' ', '_')}"
                start = time.perf_counter()
                estimate_scale_aware_poses(pairs, overlap, scene / "gt.h5", scene / "local_features.h5",
                                           args.images / scene.name / "images", out.with_suffix(".csv"),
                                           out.with_suffix(".h5"), None, pose, matching, local, num_workers=2)
                seconds[kind] += time.perf_counter() - start
                runs[kind].append(read_pose_csv(out.with_suffix(".csv")))
    large = np.concatenate(large)
    print(f"{args.method}'s retrieved pairs in {args.results}: {len(large)}, {int(large.sum())} with a true scale "
          "change of 2x or more")
    print("| method | run | pairs moved off the ordinary scale | auc@5/10/20, all pairs | auc@5/10/20, 2x pairs | "
          "mean matches / inliers, 2x pairs | seconds |")
    print("|---|---|---|---|---|---|---|")
    for kind, tables in runs.items():
        errors = np.concatenate([pair_errors(t) for t in tables])
        matches = np.concatenate([t["num_matches"].to_numpy(np.float64) for t in tables])
        inliers = np.concatenate([t["num_inliers"].to_numpy(np.float64) for t in tables])
        every = "/".join(f"{a:.1f}" for a in pose_auc(errors))
        big = "/".join(f"{a:.1f}" for a in pose_auc(errors[large]))
        cost = f"{seconds[kind]:.1f}" if kind != "ordinary" else "-"
        print(f"| {args.method} | {kind} | {moved[kind] if kind != 'ordinary' else 0} | {every} | {big} | "
              f"{matches[large].mean():.0f} / {inliers[large].mean():.0f} | {cost} |")


if __name__ == "__main__":
    main()
