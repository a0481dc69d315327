"""Scenes too big for one job: image shards for feature dumping, query shards for retrieval.

A dataset's `images_per_job` sets the size of a shard. The plan of a scene (`shards.json`, made from its
gt.h5 by the workflow's `shard_plan` checkpoint) lists contiguous ranges of its images (in the ground
truth's order) and of its queries (in the order of vop.datasets.split_queries). Every shard is one job:

- features: each image shard writes its own h5; the scene's features file then holds HDF5 external links
  to those groups (no copy), so every later stage reads it as one file;
- retrieval (cls, vop): the prefilter's index over the database (and vop's radius) is built once, by its
  own job; each query shard ranks its queries against the whole database, register mode keeping its
  shared (a,b)/(b,a) similarity blocks among the shard's own queries; the shards' rows are merged into
  the same pairs.txt, scores.csv and retrieval.json as one job writes (vop.retrieval.merge_shards).
"""

from __future__ import annotations

import errno
import json
import math
from collections.abc import Sequence
from pathlib import Path

import h5py

from vop import io
from vop.conf import VopConf, method_conf
from vop.datasets import split_queries
from vop.voting import IMAGES_FOR_RADIUS


def ranges(count: int, per_job: int) -> list[list[int]]:
    """[start, stop) ranges of `per_job` items (the last one shorter) covering range(count)."""
    if per_job < 1:
        raise ValueError(f"images_per_job must be >= 1, got {per_job}")
    return [[start, min(start + per_job, count)] for start in range(0, count, per_job)] or [[0, 0]]


def plan(num_images: int, num_queries: int, per_job: int, first_image: str = "") -> dict:
    """The shards; `first_image` names one image, whose groups tell a job's memory the descriptors' sizes."""
    return {"images_per_job": per_job, "num_images": num_images, "num_queries": num_queries,
            "images": ranges(num_images, per_job), "queries": ranges(num_queries, per_job),
            "first_image": first_image}


def write_plan(gt_h5: str | Path, out_json: str | Path, per_job: int, mode: str = "register",
               queries: str | None = None, scene: str = "") -> dict:
    """The shards of a scene (its image order from gt.h5, its queries by the dataset's mode)."""
    names = io.read_names(gt_h5)
    query_ids, _ = split_queries(names, mode, queries, scene)
    result = plan(len(names), len(query_ids), per_job, names[0] if names else "")
    io.write_json(out_json, result)
    return result


def read_plan(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def job_memory_mb(descriptors_h5: str | Path, plan_path: str | Path, conf=None) -> int:
    """What one job of a sharded scene's retrieval holds, in MB, from the scene's size and its shards':

        global descriptors (and the index over them)  2 * N * G * 4 B
        vop: two chunks of patches in float32         2 * min(chunk_images, N) * M * D * 4 B
             the shard's sums and hits                2 * images_per_job * prefilter * M * 4 B

    (N images, G-d global descriptors, M patches of D dims); `conf` None is the scene_index job, which also
    samples patches for vop's radius."""
    if not Path(descriptors_h5).is_file():  # not made yet: a dry run, where Snakemake shows the memory as <TBD>
        raise FileNotFoundError(errno.ENOENT, "no descriptors yet", str(descriptors_h5))
    plan = read_plan(plan_path)
    num, per_job = plan["num_images"], plan["images_per_job"]
    with h5py.File(descriptors_h5, "r") as f:
        group = f[plan["first_image"]]
        global_dim = group["global_descriptor"].shape[-1]
        patches, dim = group["patch_descriptors"].shape
    total = 2 * num * global_dim * 4
    method = method_conf(conf) if conf is not None else None
    if method is None or isinstance(method, VopConf):
        chunk = method.chunk_images if method else IMAGES_FOR_RADIUS  # what the radius samples
        total += 2 * min(chunk, num) * patches * dim * 4
    if isinstance(method, VopConf):
        total += 2 * per_job * method.prefilter * patches * 4
    return math.ceil(total / 2**20)


def link_features(shards: Sequence[str | Path], out_h5: str | Path) -> list[str]:
    """A features file whose image groups are external links to the shards' groups; returns the names.

    Links are relative to the file's folder, so results can move as a whole."""
    out_h5 = Path(out_h5)
    names = []
    with io.atomic_path(out_h5) as tmp, h5py.File(tmp, "w") as out:
        for shard in shards:
            relative = Path(shard).resolve().relative_to(out_h5.resolve().parent).as_posix()
            for name in io.list_h5_names(shard):
                folder, _, leaf = name.rpartition("/")
                (out.require_group(folder) if folder else out)[leaf] = h5py.ExternalLink(relative, f"/{name}")
                names.append(name)
    return names
