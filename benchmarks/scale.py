"""The sharded retrieval path at scale, on synthetic embeddings (no images): N = 10k and 100k by default.

    .venv/bin/python benchmarks/scale.py                        # N = 10000 and 100000, 2 shards timed each
    .venv/bin/python benchmarks/scale.py --sizes 10000 --run-shards 3 --images-per-job 2000

For each N it writes a scene as the pipeline's files (gt.h5 and an embeddings h5: float16 patches, M x D),
then runs the stages a sharded scene runs, each in its own process as a SLURM job would:

1. scene_index: the prefilter's index over the database (exact below `ivf_min_images`, IVF above) and the
   voting radius, once;
2. retrieve_shard for `--run-shards` query shards of `--images-per-job` queries (not all of them: the
   figures per shard are what a job sees, the total follows from the shard count).

It prints per stage the seconds, queries/s and the peak RSS of the process (VmHWM, its own pages only)
against the mem_mb the workflow would request (vop.shards.job_memory_mb + 1500 MB), and the prefilter's
recall@P against exact search on a sample of queries (the IVF index returns approximate neighbours).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from vop import io
from vop.conf import VopConf
from vop.shards import job_memory_mb, write_plan

CONF = {"type": "vop", "k": 5, "prefilter": 20, "radius": 0.25, "encoder": "synthetic"}


def write_scene(out: Path, num_images: int, patches: int, dim: int, global_dim: int, seed: int = 0) -> None:
    """gt.h5 and embeddings-synthetic.h5 of N images around N/50 places (so that neighbours exist)."""
    rng = np.random.default_rng(seed)
    names = [f"img_{i:07d}.jpg" for i in range(num_images)]
    nan3, nan4 = np.full((num_images, 3, 3), np.nan), np.full((num_images, 4, 4), np.nan)
    io.write_gt(out / "gt.h5", io.GroundTruth(names, nan3, nan4, np.tile([640, 480], (num_images, 1)), None))
    places = max(1, num_images // 50)
    place_glob = rng.normal(size=(places, global_dim)).astype(np.float32)
    place_patches = rng.normal(size=(places, patches, dim)).astype(np.float32)
    place_of = rng.integers(0, places, num_images)
    with h5py.File(out / "embeddings-synthetic.h5", "w") as f:
        for start in range(0, num_images, 1000):
            stop = min(start + 1000, num_images)
            p = place_of[start:stop]
            glob = place_glob[p] + 0.7 * rng.normal(size=(stop - start, global_dim)).astype(np.float32)
            local = place_patches[p] + 1.0 * rng.normal(size=(stop - start, patches, dim)).astype(np.float32)
            local /= np.linalg.norm(local, axis=-1, keepdims=True)
            for i, name in enumerate(names[start:stop]):
                g = f.create_group(name)
                g.create_dataset("global_descriptor", data=glob[i] / np.linalg.norm(glob[i]))
                g.create_dataset("patch_descriptors", data=local[i].astype(np.float16))


def child(stage: str, out: Path, shard: int) -> None:
    """One job of the sharded path, as its script runs it; prints its seconds and peak RSS (kB)."""
    from vop.conf import method_conf
    from vop.retrieval import MethodRun, load_scene_index, save_scene_index, save_shard
    from vop.shards import read_plan

    start = time.perf_counter()
    run = MethodRun.open(method_conf(CONF), "scale", out / "gt.h5", embeddings_h5=out / "embeddings-synthetic.h5")
    if stage == "index":
        save_scene_index(run.build_index("cpu"), out / "index.faiss", out / "index.json")
    else:
        rows = read_plan(out / "shards.json")["queries"][shard]
        shared = load_scene_index(out / "index.faiss", out / "index.json")
        save_shard(run.rank_shard(rows, shared, "cpu"), out / f"shard{shard}.npz")
    status = Path("/proc/self/status").read_text()
    peak = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_kb": int(peak)}))


def run_child(stage: str, out: Path, shard: int = 0) -> dict:
    cmd = [sys.executable, __file__, "--child", stage, str(out), str(shard)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])


def prefilter_recall(out: Path, sample: int, num: int) -> float:
    """Share of the exact top-`num` neighbours the scene's index returns, over `sample` queries."""
    import faiss

    from vop.prefilter import search
    from vop.retrieval import load_scene_index

    names = io.read_names(out / "gt.h5")
    glob = io.read_stacked(out / "embeddings-synthetic.h5", names, "global_descriptor", np.float32)
    rows = np.random.default_rng(1).choice(len(names), min(sample, len(names)), replace=False)
    index = load_scene_index(out / "index.faiss", out / "index.json").index
    exact = faiss.IndexFlatIP(glob.shape[1])
    exact.add(glob)
    got, _ = search(index, glob[rows], num, exclude=rows)
    want, _ = search(exact, glob[rows], num, exclude=rows)
    return float(np.mean([len(set(a) & set(b)) / num for a, b in zip(got, want, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--images-per-job", type=int, default=2000)
    parser.add_argument("--run-shards", type=int, default=2, help="query shards to time (of N / images-per-job)")
    parser.add_argument("--patches", type=int, default=256)
    parser.add_argument("--dim", type=int, default=256, help="patch dimension (the VOP head's is 256)")
    parser.add_argument("--global-dim", type=int, default=256)
    parser.add_argument("--recall-queries", type=int, default=1000)
    parser.add_argument("--workdir", type=Path, help="keep the generated scenes here and reuse them (default: a "
                        "temp folder)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), int(args.child[2]))
        return
    with contextlib.ExitStack() as stack:
        root = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for num in args.sizes:
            out = root / f"n{num}_{args.patches}x{args.dim}_{args.global_dim}"
            start = time.perf_counter()
            if not (out / "written").is_file():  # a kept scene is reused once complete
                out.mkdir(parents=True, exist_ok=True)
                write_scene(out, num, args.patches, args.dim, args.global_dim)
                (out / "written").touch()
            size_gb = (out / "embeddings-synthetic.h5").stat().st_size / 1e9
            plan = write_plan(out / "gt.h5", out / "shards.json", args.images_per_job)
            print(f"N={num}: embeddings {size_gb:.2f} GB (written or found in {time.perf_counter() - start:.0f} s); "
                  f"{len(plan['queries'])} query shards of {args.images_per_job}")
            conf = VopConf(k=5, prefilter=20, radius=0.25, encoder="synthetic").to_dict()
            declared = {"index": 1500 + job_memory_mb(out / "embeddings-synthetic.h5", out / "shards.json"),
                        "shard": 1500 + job_memory_mb(out / "embeddings-synthetic.h5", out / "shards.json", conf)}
            index = run_child("index", out)
            print(f"  scene_index: {index['seconds']:.1f} s, peak RSS {index['peak_kb'] / 1024:.0f} MB "
                  f"(declared mem_mb {declared['index']})")
            recall = prefilter_recall(out, args.recall_queries, CONF["prefilter"])
            print(f"  prefilter recall@{CONF['prefilter']} against exact search: {recall:.3f} "
                  f"({json.loads((out / 'index.json').read_text())['images']} images indexed)")
            for shard in range(min(args.run_shards, len(plan["queries"]))):
                result = run_child("shard", out, shard)
                queries = plan["queries"][shard][1] - plan["queries"][shard][0]
                print(f"  retrieve_shard {shard}: {queries} queries in {result['seconds']:.1f} s = "
                      f"{queries / result['seconds']:.1f} queries/s, peak RSS {result['peak_kb'] / 1024:.0f} MB "
                      f"(declared mem_mb {declared['shard']})")


if __name__ == "__main__":
    main()
