"""GPU throughput of the stages that run on one: run it on a machine with an NVIDIA GPU.

    .venv/bin/python benchmarks/gpu.py                      # everything, about 5 minutes on an H100/H200
    .venv/bin/python benchmarks/gpu.py --only voting prefilter

1. features: DINOv2 ViT-L/14 forward passes on 224x224 images (random weights: the same arithmetic as the
   real ones), float32 and bfloat16/float16 autocast, per batch size; images/s.
2. voting: VOP's batched voting (vop.voting.vote_scores) at P = 20 candidates, 256 patches of 256-d per image,
   register mode; queries/s, against the same on the CPU.
3. prefilter: faiss inner-product top-P of N global descriptors on the GPU (exact and IVF) when faiss has
   GPU support, else on the CPU; queries/s.

Every figure is the median of `--repeats` timed runs after a warm-up, with torch.cuda.synchronize().
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def timed(fn, repeats: int) -> float:
    """Median seconds of fn() after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_features(device: torch.device, repeats: int, batch_sizes: list[int]) -> None:
    from vop.backbones.dinov2 import load_dinov2

    backbone = load_dinov2("dinov2_vitl14", "random").to(device).eval()
    dtypes = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
    for batch in batch_sizes:
        images = torch.rand(batch, 3, 224, 224, device=device)
        for label, dtype in dtypes.items():
            if dtype is not None and device.type != "cuda":
                continue

            def run(images=images, dtype=dtype):
                with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    backbone(images)

            seconds = timed(run, repeats)
            print(f"features dinov2_vitl14 batch {batch:4d} {label:8s}: {batch / seconds:9.1f} images/s")


def bench_voting(device: torch.device, repeats: int, num_images: int) -> None:
    from vop.prefilter import prefilter
    from vop.voting import PatchStore, vote_scores

    rng = np.random.default_rng(0)
    patches = rng.normal(size=(num_images, 256, 256)).astype(np.float32)
    glob = patches.mean(1)
    ids = np.arange(num_images)
    cand, _ = prefilter(glob, glob, 20, exclude=ids)
    for dev in ([torch.device("cpu")] if device.type == "cpu" else [device, torch.device("cpu")]):
        store = PatchStore.from_array(patches, device=str(dev))
        queries = num_images if dev.type == "cuda" else min(num_images, 500)
        seconds = timed(lambda store=store, queries=queries: vote_scores(store, store, cand[:queries], 0.2, True),
                        repeats)
        print(f"voting P=20, 256x256-d patches, {queries} queries on {dev.type}: {queries / seconds:9.1f} queries/s")


def bench_prefilter(device: torch.device, repeats: int, num_images: int) -> None:
    import faiss

    from vop.prefilter import prefilter

    rng = np.random.default_rng(0)
    desc = rng.normal(size=(num_images, 1024)).astype(np.float32)
    gpu = device.type == "cuda" and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    where = "GPU" if gpu else "CPU (faiss without GPU support)" if device.type == "cuda" else "CPU"
    for label, ivf_min in (("exact", num_images + 1), ("IVF", 1)):
        seconds = timed(lambda ivf_min=ivf_min: prefilter(desc, desc, 20, exclude=np.arange(num_images),
                                                          ivf_min_images=ivf_min, device=str(device)), repeats)
        print(f"prefilter {label:5s} top-20 of {num_images} 1024-d descriptors on {where}: "
              f"{num_images / seconds:11.1f} queries/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=["features", "voting", "prefilter"],
                        default=["features", "voting", "prefilter"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--voting-images", type=int, default=10_000)
    parser.add_argument("--prefilter-images", type=int, default=100_000)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "no GPU: CPU figures only"
    print(f"device: {name}; torch {torch.__version__}")
    if "features" in args.only:
        bench_features(device, args.repeats, args.batch_sizes)
    if "voting" in args.only:
        bench_voting(device, args.repeats, args.voting_images)
    if "prefilter" in args.only:
        bench_prefilter(device, args.repeats, args.prefilter_images)


if __name__ == "__main__":
    main()
