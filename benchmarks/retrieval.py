"""VOP retrieval speed: our batched voting against the straightforward per-query implementation.

    .venv/bin/python benchmarks/retrieval.py                 # N = 500 and 2000, P = 20, k = 5
    .venv/bin/python benchmarks/retrieval.py --memory 10000  # peak RSS of a 10,000-image scene from h5

Both implementations run in this process on the same synthetic embeddings and the same prefilter
candidates: `vop.reference` (a faiss range search per query and Python loops over its patches, as the
paper's code does) and `vop.voting.vote_scores` (batched matrix products, register mode: one block
per image pair). The script checks that the top-k agree and prints:

  ratio: ours / straightforward queries/s at the largest N
  coverage: ours with the predicted NSO (vote_scores(coverage=True)) / ours without, at the largest N
  roofline: our queries/s / (measured matmul FLOP/s / (2*M*M*D*P) FLOP per query)

A roofline above 1 means doing less work than the plain product of every query with its P candidates
(register mode computes a pair's block once for both directions).

The embeddings mimic a real scene: images are views along a path through a world of landmarks; an
image's 256 patches see consecutive landmarks, so nearby images share patches. A patch embedding is
its landmark's direction plus a component shared by all patches (background similarity ~0.2, like
real tokens) plus noise (matching patches ~0.8 cosine).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from vop import io, reference, retrieval, voting
from vop import prefilter as prefilter_
from vop.conf import VopConf


def synthetic_scene(num_images: int, num_patches: int = 256, dim: int = 256, seed: int = 0):
    """(global descriptors (N,D), patch embeddings (N,M,D) float32) with overlap structure."""
    rng = np.random.default_rng(seed)
    stride = num_patches // 12  # consecutive images share ~90% of their landmarks, the 12th none
    num_landmarks = num_images * stride + num_patches
    landmarks = rng.standard_normal((num_landmarks, dim), dtype=np.float32)
    landmarks /= np.linalg.norm(landmarks, axis=1, keepdims=True)
    shared = rng.standard_normal(dim).astype(np.float32)
    shared /= np.linalg.norm(shared)
    # Images in random order along the path, so that neighbours are not neighbours in index.
    position = rng.permutation(num_images) * stride + rng.integers(0, stride, num_images)
    patches = np.empty((num_images, num_patches, dim), np.float32)
    for i, start in enumerate(position):
        seen = landmarks[start + rng.permutation(num_patches)]
        noise = rng.standard_normal((num_patches, dim), dtype=np.float32) / np.sqrt(dim)
        patches[i] = seen + 0.5 * shared + 0.5 * noise
    patches /= np.linalg.norm(patches, axis=2, keepdims=True)
    # Global descriptor: the image's mean patch without the part every image shares, plus noise as large
    # as the signal, so that the prefilter is useful but imperfect.
    glob = patches.mean(1)
    glob -= glob.mean(0)
    glob /= np.linalg.norm(glob, axis=1, keepdims=True)
    glob += rng.standard_normal((num_images, dim), dtype=np.float32) / np.sqrt(dim)
    return glob / np.linalg.norm(glob, axis=1, keepdims=True), patches


def _timed_flops(products, flops_each: float, seconds: float, workers: int) -> float:
    """FLOP/s of running `products` (a callable) repeatedly on `workers` threads for about `seconds`."""
    def loop(_):
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            products()
            runs += 1
        return runs

    products()
    start = time.perf_counter()
    if workers == 1:
        runs = loop(0)
    else:
        with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            runs = sum(pool.map(loop, range(workers)))
    return flops_each * runs / (time.perf_counter() - start)


def matmul_flops(seconds: float = 1.0) -> dict[str, float]:
    """The machine's float32 matrix-product speed, measured several ways; the bound uses the best."""
    threads = torch.get_num_threads()
    square = torch.randn(2048, 2048)
    left, right = torch.randn(8, 256, 256), torch.randn(8, 256, 256)
    return {
        f"2048^2 matmul, {threads} threads": _timed_flops(lambda: square @ square, 2 * 2048**3, seconds, 1),
        f"8 x 256^3 bmm, {threads} threads": _timed_flops(lambda: torch.bmm(left, right), 16 * 256**3, seconds, 1),
        f"8 x 256^3 bmm, {threads} single-threaded workers": _timed_flops(lambda: torch.bmm(left, right),
                                                                          16 * 256**3, seconds, threads),
    }


def run(num_images: int, prefilter: int, k: int, radius: float, straightforward_queries: int) -> dict:
    glob, patches = synthetic_scene(num_images)
    ids = np.arange(num_images)
    cand, _ = prefilter_.prefilter(glob, glob, prefilter, exclude=ids)
    tau = 1.0 - radius

    store = voting.PatchStore.from_array(patches)
    start = time.perf_counter()
    votes = voting.vote_scores(store, store, cand, tau, True, shared=True)
    ours = num_images / (time.perf_counter() - start)
    blocks = len(voting._blocks(cand, shared=True).a)
    # The same with the predicted NSO (vop.nso): enclosure and concentration from the same blocks.
    start = time.perf_counter()
    with_coverage, _, _ = voting.vote_scores(store, store, cand, tau, True, shared=True, coverage=True)
    coverage = num_images / (time.perf_counter() - start)
    if not np.array_equal(with_coverage, votes):
        sys.exit("votes differ with coverage")

    # The straightforward implementation on a subset of the queries (it is slow), same candidates.
    queries = ids[:: max(1, num_images // straightforward_queries)]
    start = time.perf_counter()
    want = reference.retrieve_vop(glob, patches, queries, ids, k, prefilter, radius, True,
                                  candidates=[cand[q] for q in queries])
    straightforward = len(queries) / (time.perf_counter() - start)

    best = np.take_along_axis(cand, retrieval.rank_rows(votes, k), 1)
    agree = all(list(best[q]) == dbs for q, dbs, _ in want)
    max_diff = max(float(np.max(np.abs(np.sort(votes[q])[::-1][:k] - np.array(v)))) for q, _, v in want)
    return dict(num_images=num_images, ours=ours, coverage=coverage, straightforward=straightforward, agree=agree,
                checked=len(queries), max_diff=max_diff, blocks=blocks,
                hits=float((votes > 0).mean()))


def measure_memory(num_images: int, out_dir: Path) -> None:
    """Write a num_images scene as our pipeline's h5 files, retrieve it in a child process, report peak RSS."""
    glob, patches = synthetic_scene(num_images)
    names = [f"img_{i:06d}.jpg" for i in range(num_images)]
    eye3, eye4 = np.eye(3)[None], np.eye(4)[None]
    io.write_gt(out_dir / "gt.h5", io.GroundTruth(names, np.repeat(eye3, num_images, 0), np.repeat(eye4, num_images, 0),
                                                  np.tile([640, 480], (num_images, 1)), None))
    io.write_image_groups(out_dir / "embeddings-vop.h5", {
        name: {"global_descriptor": glob[i], "patch_descriptors": patches[i].astype(np.float16)}
        for i, name in enumerate(names)})
    del glob, patches
    size_gb = (out_dir / "embeddings-vop.h5").stat().st_size / 1e9
    # The child reports its own peak (VmHWM): getrusage would count the pages it shared with this
    # process (which held the generated scene) when it was forked.
    cmd = [sys.executable, __file__, "--retrieve-scene", str(out_dir)]
    start = time.perf_counter()
    peak_kb = int(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()[-1])
    seconds = time.perf_counter() - start
    print(f"memory: N={num_images} embeddings h5 {size_gb:.2f} GB (float16), retrieval {seconds:.0f} s, "
          f"{num_images / seconds:.0f} queries/s, peak RSS {peak_kb / 1e6:.2f} GB")


def retrieve_scene(out_dir: Path) -> None:
    """The pipeline's retrieve step on a scene written by measure_memory; prints the peak RSS in kB."""
    method = VopConf(k=5, prefilter=20, radius=0.25, encoder="vop")
    retrieval.run_method(method, "memory", out_dir / "gt.h5", out_dir / "vop",
                         embeddings_h5=out_dir / "embeddings-vop.h5", device="cpu")
    status = Path("/proc/self/status").read_text()
    print(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--prefilter", type=int, default=20)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--radius", type=float, default=0.25)
    parser.add_argument("--straightforward-queries", type=int, default=200,
                        help="queries timed for the straightforward implementation (it is slow)")
    parser.add_argument("--memory", type=int, metavar="N", help="instead: peak memory of an N-image scene from h5")
    parser.add_argument("--retrieve-scene", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.retrieve_scene:
        retrieve_scene(args.retrieve_scene)
        return
    if args.memory:
        with tempfile.TemporaryDirectory() as tmp:
            measure_memory(args.memory, Path(tmp))
        return

    speeds = matmul_flops()
    flops = max(speeds.values())
    per_query = 2 * 256 * 256 * 256 * args.prefilter
    bound = flops / per_query
    print(f"torch {torch.__version__}; matmul GFLOP/s: "
          + ", ".join(f"{name} {value / 1e9:.1f}" for name, value in speeds.items()))
    print(f"bound: {flops / 1e9:.1f} GFLOP/s / {per_query / 1e9:.2f} GFLOP per query = {bound:.1f} queries/s "
          f"at P={args.prefilter}")
    result = None
    for n in args.sizes:
        result = run(n, args.prefilter, args.k, args.radius, args.straightforward_queries)
        print(f"N={n}: ours {result['ours']:.1f} queries/s ({result['coverage']:.1f} with coverage), "
              f"straightforward {result['straightforward']:.1f} "
              f"queries/s ({result['checked']} queries), top-{args.k} agree: {result['agree']}, "
              f"max |score diff| {result['max_diff']:.1e}, {result['blocks']} blocks for {n * args.prefilter} "
              f"query-candidate pairs, {100 * result['hits']:.0f}% of candidates voted for")
    print(f"ratio: {result['ours'] / result['straightforward']:.2f}")
    print(f"roofline: {result['ours'] / bound:.2f}")
    print(f"coverage: {result['coverage'] / result['ours']:.2f}")
    if not result["agree"]:
        sys.exit("top-k differ between the implementations")


if __name__ == "__main__":
    main()
