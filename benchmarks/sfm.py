"""Speed of the SfM sweep on a demo scene: verifying the pairs once for every depth (vop.sfm.run_sweep)
against the straightforward way (each depth's reconstruction verifies its own database), and COLMAP's
10000 RANSAC trials against the 2000 of `sfm.max_num_trials`. Checks that both sweeps verify the same pairs.

Needs a method's ranking and store of a demo scene (`snakemake --cores all results/demo/courtyard_a/oracle/
matches.h5`); the ranking is cut at the depths it has (scores.csv), so no retrieval runs here.

    PYTHONPATH=src .venv/bin/python benchmarks/sfm.py --scene results/demo/courtyard_a --method oracle
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from vop.conf import SfmConf
from vop.io import read_names
from vop.sfm import ranking_pairs, reconstruct_method, run_sweep, sweep_ranking


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scene", type=Path, default=Path("results/demo/courtyard_a"))
    parser.add_argument("--method", default="oracle")
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 3, 4, 5])
    args = parser.parse_args()
    gt, local = args.scene / "gt.h5", args.scene / "local_features.h5"
    store = args.scene / args.method / "matches.h5"
    names = read_names(gt)
    ranking = sweep_ranking(args.scene / args.method / "scores.csv", names, max(args.depths))
    conf = SfmConf(sweep=tuple(args.depths))
    with tempfile.TemporaryDirectory(prefix="vop-sfm-bench-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        rows = run_sweep(conf, ranking, gt, local, tmp / "once", shared=[store])
        once = time.perf_counter() - t
        t = time.perf_counter()
        loop = [reconstruct_method(conf, ranking_pairs(ranking, names, row["k"]), gt, local, store,
                                   tmp / "loop" / str(row["k"]), write_metrics=False) for row in rows]
        looped = time.perf_counter() - t
        same = all(a["pairs_verified"] == b["pairs_verified"] for a, b in zip(rows, loop))
        print(f"{args.scene}/{args.method}, depths {args.depths}: pairs {[r['pairs'] for r in rows]}")
        print(f"  verified once: {once:.1f} s; each depth verifying its own: {looped:.1f} s "
              f"(ratio {looped / once:.2f}); same verified pairs: {same}")
        print(f"  registered (once / own): {[r['registered'] for r in rows]} / {[r['registered'] for r in loop]}")
        deepest = ranking_pairs(ranking, names, max(args.depths))
        for trials in (10000, conf.max_num_trials):
            t = time.perf_counter()
            m = reconstruct_method(conf.replace(max_num_trials=trials), deepest, gt, local, store,
                                   tmp / f"trials{trials}", write_metrics=False)
            print(f"  max_num_trials {trials}: verify {m['verify_s']:.1f} s, {m['pairs_verified']} pairs verified, "
                  f"{m['registered']} registered, {time.perf_counter() - t:.1f} s in all")
        if not same:
            raise SystemExit("the two sweeps verified different pairs")


if __name__ == "__main__":
    main()
