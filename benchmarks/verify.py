"""Seconds per query of `verify` (a first stage's shortlist reranked by verified matches) against `vop`.

On a demo scene of a finished run (its features, local features and the trained head), each method's own
work is redone here, in this process, and timed (wall and CPU seconds, worker processes included), with the
configured methods (config/config.yaml): for vop its embeddings and its retrieval; for verify its first
stage (cls retrieving max(k, shortlist)), matching its shortlist from scratch (no other store to copy
from) and the verification itself (2 worker processes). Both also need the scene's backbone features;
verify the SIFT local features too (timed once, for reference), which the pose evaluation extracts anyway.

    PYTHONPATH=src .venv/bin/python benchmarks/verify.py --scene results/demo/courtyard_b
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the matches rule sets it (scripts/matches.py)

import yaml  # noqa: E402

from vop.conf import EncoderConf, method_conf  # noqa: E402
from vop.encoder import apply_encoder  # noqa: E402
from vop.io import read_names  # noqa: E402
from vop.local_features import extract_local_features  # noqa: E402
from vop.match_store import build_store  # noqa: E402
from vop.retrieval import run_first_stage, run_method  # noqa: E402


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(name, run, log):
    cpu0, start = cpu_seconds(), time.perf_counter()
    run()
    log.append((name, time.perf_counter() - start, cpu_seconds() - cpu0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scene", type=Path, default=Path("results/demo/courtyard_b"))
    parser.add_argument("--config", type=Path, default=Path("config/config.yaml"))
    parser.add_argument("--vop", default="vop")
    parser.add_argument("--verify", default="verify")
    parser.add_argument("--image-dir", type=Path, help="the scene's images (to time the SIFT extraction)")
    args = parser.parse_args()
    config = yaml.safe_load(args.config.read_text())
    vop, verify = (method_conf(config["methods"][m], f"methods.{m}") for m in (args.vop, args.verify))
    first = method_conf(config["methods"][verify.first_stage], f"methods.{verify.first_stage}")
    encoder = EncoderConf.from_dict(config["encoders"][vop.encoder], f"encoders.{vop.encoder}")
    checkpoint = Path(f"results/encoders/{vop.encoder}/checkpoint.pt")
    scene, gt = args.scene, args.scene / "gt.h5"
    queries = len(read_names(gt))
    backbone = config["datasets"]["demo"]["backbone"]
    vop_log, verify_log = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        timed("embeddings", lambda: apply_encoder(scene / f"features-{backbone}.h5", tmp / "emb.h5", encoder,
                                                   checkpoint=checkpoint, device="cpu"), vop_log)
        timed("retrieval", lambda: run_method(vop, scene.name, gt, tmp / "vop", embeddings_h5=tmp / "emb.h5",
                                              device="cpu"), vop_log)
        timed(f"first stage ({first.type}, top {max(verify.k, verify.shortlist)})",
              lambda: run_first_stage(verify, first, scene.name, gt, tmp / "first", tmp / "shortlist.txt",
                                      features_h5=scene / f"features-{backbone}.h5", device="cpu"), verify_log)
        counts = {}
        timed("matching the shortlist", lambda: counts.update(build_store(tmp / "m.h5", [tmp / "shortlist.txt"],
                                                                          scene / "local_features.h5")), verify_log)
        timed("verification (RANSAC, 2 workers)",
              lambda: run_method(verify, scene.name, gt, tmp / "verify", first_stage_scores=tmp / "first/scores.csv",
                                 matches_h5=tmp / "m.h5", local_features_h5=scene / "local_features.h5",
                                 num_workers=2), verify_log)
        if args.image_dir:
            timed("SIFT local features", lambda: extract_local_features(args.image_dir, read_names(gt),
                                                                        tmp / "local.h5"), verify_log)
    print(f"{scene}: {queries} queries; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    for method, log in (("vop", vop_log), ("verify", verify_log)):
        for step, wall, cpu in log:
            extra = f" ({counts['matched']} unordered pairs)" if step.startswith("matching") else ""
            print(f"  {method:6s} {step + extra:44s} {wall / queries:6.3f} s/query wall  {cpu / queries:6.3f} CPU")
        core = [entry for entry in log if entry[0] != "SIFT local features"]
        print(f"  {method:6s} {'total':44s} {sum(w for _, w, _ in core) / queries:6.3f} s/query wall  "
              f"{sum(c for _, _, c in core) / queries:6.3f} CPU")


if __name__ == "__main__":
    main()
