# Config lookups shared by the rules. Every value a job depends on goes through `params:`.
import os
import re

from snakemake.exceptions import WorkflowError

DATASETS = config["datasets"]
METHODS = config["methods"]
ENCODERS = config["encoders"]
TRAINED_ENCODERS = [name for name, enc in ENCODERS.items() if "train" in enc]
NEVER = "(?!x)x"  # a wildcard constraint that matches nothing
# Dataset sources (vop.datasets): which have depth for training, which have no pose ground truth, which
# are downloaded as archives. Archive names and layouts follow vop.datasets.megadepth / .inloc.
WITH_DEPTH = ("synthetic", "eth3d", "megadepth")
NO_POSES = ("inloc", "folder")
DOWNLOADED = ("eth3d", "megadepth", "inloc")
ARCHIVE_PARTS = {
    # part -> (archive, member prefix, folder under the dataset root it unpacks into)
    "megadepth": lambda scene: {
        "scene_info": ("scene_info.tar.gz", "scene_info/", ""),
        f"Undistorted_SfM-{scene}": ("Undistorted_SfM.tar.gz", f"Undistorted_SfM/{scene}/", ""),
        f"depth_undistorted-{scene}": ("depth_undistorted.tar.gz", f"depth_undistorted/{scene}/", ""),
    },
    "inloc": lambda scene: {
        "cutouts": ("cutouts.tar.gz", "cutouts/", "database"),
        "iphone7": ("iphone7.tar.gz", "iphone7/", "query"),
    },
}


def canonical(value):
    """A config value with its mappings' keys sorted: params are compared as written, so reordering
    keys in config.yaml must not look like a change and rerun jobs."""
    if isinstance(value, dict):
        return {key: canonical(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return value


def mem_mb(base):
    """A rule's memory request: `base` MB on the first attempt, times the attempt on each retry
    (profiles/slurm sets `retries`), so a job killed for memory comes back with more. Every rule of
    the demo peaks below 0.7 GB (benchmarks/job_resources.py); the bases leave room for real scenes."""
    return lambda wildcards, attempt: base * attempt


def _alternatives(names):
    return "|".join(re.escape(n) for n in names) or NEVER


def datasets_of(source):
    return [name for name, ds in DATASETS.items() if ds["source"] == source]


def _check_config():
    """Cross-references the JSON schema cannot express, with the fix in the message."""
    for name, ds in DATASETS.items():
        where = f"config: datasets.{name}"
        if ds["backbone"] not in config["backbones"]:
            raise WorkflowError(f"{where}.backbone {ds['backbone']!r} is not under `backbones:`; add it there")
        for method in ds["methods"]:
            if method not in METHODS:
                raise WorkflowError(f"{where}.methods names {method!r}, which is not under `methods:`")
            encoder = METHODS[method].get("encoder")
            if encoder is not None and encoder not in ENCODERS:
                raise WorkflowError(f"config: methods.{method}.encoder {encoder!r} is not under `encoders:`")
        if ds.get("mode", "register") == "retrieve" and not ds.get("queries"):
            raise WorkflowError(f"{where}: mode retrieve needs `queries`, a glob over image names such as 'query/*'")
        if ds["source"] == "synthetic" and "root" in ds:
            raise WorkflowError(f"{where}.root: synthetic scenes are always generated under resources/{name}")
        if ds["source"] in DOWNLOADED and "root" not in ds and "url" not in ds:
            raise WorkflowError(f"{where}: set `root` (the extracted dataset) or `url` (where to download it)")
        if ds["source"] in ("colmap", "folder") and "root" not in ds:
            raise WorkflowError(f"{where}: set `root` to the folder holding your images (and model)")
        if "scenes" not in ds and ds["source"] not in ("colmap", "folder"):
            raise WorkflowError(f"{where}: list its `scenes`")
        if "images" in ds and ds["source"] not in ("colmap", "folder"):
            raise WorkflowError(f"{where}.images: only for `source: colmap` or `folder`")
        if "model" in ds and ds["source"] != "colmap":
            raise WorkflowError(f"{where}.model: only for `source: colmap`")
        if ds["source"] in NO_POSES:
            for method in ds["methods"]:
                if method in METHODS and METHODS[method]["type"] == "oracle":
                    raise WorkflowError(f"{where}.methods: {method!r} needs ground-truth overlap, which a "
                                        f"`{ds['source']}` dataset does not have; remove it")
    for name, enc in ENCODERS.items():
        where = f"config: encoders.{name}"
        if "backbone" in enc and enc["backbone"] not in config["backbones"]:
            raise WorkflowError(f"{where}.backbone {enc['backbone']!r} is not under `backbones:`; add it there")
        for ds in enc.get("train", {}).get("datasets", []):
            if ds not in DATASETS:
                raise WorkflowError(f"{where}.train.datasets names {ds!r}, which is not under `datasets:`")
            if DATASETS[ds]["source"] not in WITH_DEPTH:
                raise WorkflowError(f"{where}.train.datasets: {ds!r} has no depth maps to train from "
                                    f"(sources with depth: {', '.join(WITH_DEPTH)})")


_check_config()


wildcard_constraints:
    dataset=_alternatives(DATASETS),
    scene="[^/]+",
    method=_alternatives(METHODS),
    backbone=_alternatives(config["backbones"]),
    encoder=_alternatives(config["encoders"]),


def dataset_root(dataset):
    ds = DATASETS[dataset]
    if "root" in ds:
        return ds["root"].rstrip("/")
    if ds["source"] == "eth3d":
        return f"resources/{dataset}/ETH3D_undistorted"
    return f"resources/{dataset}"


def single_scene(dataset):
    """colmap/folder datasets without `scenes`: one scene, named after the dataset, at the root itself."""
    return "scenes" not in DATASETS[dataset]


def scene_dir(dataset, scene):
    if DATASETS[dataset]["source"] == "inloc" or single_scene(dataset):
        return dataset_root(dataset)
    return f"{dataset_root(dataset)}/{scene}"


def reader_args(dataset, scene):
    """What vop.datasets.open_scene needs to read one scene (passed to jobs through `params:`)."""
    ds = DATASETS[dataset]
    source = "eth3d" if ds["source"] == "synthetic" else ds["source"]
    args = {"source": source, "root": dataset_root(dataset), "scene": None if single_scene(dataset) else scene}
    if source in ("colmap", "folder"):
        args["images"] = ds.get("images", "images" if source == "colmap" else "")
    if source == "colmap":
        args["model"] = ds.get("model", "sparse")
    return canonical(args)


def _require(dataset, paths, what):
    """Files a configured `root` must hold; checked only when a target needs this dataset."""
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise WorkflowError(
            f"dataset {dataset!r}: {missing[0]} not found ({what}); set datasets.{dataset}.root in the config "
            f"to the folder that holds it (now {dataset_root(dataset)!r}; relative paths start at the "
            f"working directory {os.getcwd()})"
        )
    return list(paths)


def part_stamp(dataset, part):
    return f"resources/{dataset}/extracted/{part}.done"


def _colmap_model_files(dataset, scene):
    model = f"{scene_dir(dataset, scene)}/{DATASETS[dataset].get('model', 'sparse')}"
    for folder in (model, f"{model}/0"):
        for ext in (".txt", ".bin"):
            files = [f"{folder}/{name}{ext}" for name in ("cameras", "images")]
            if all(os.path.exists(f) for f in files):
                points = f"{folder}/points3D{ext}"
                return files + ([points] if os.path.exists(points) else [])
    return _require(dataset, [f"{model}/cameras.txt"], "a COLMAP model, text or binary, in the `model` folder")


def gt_inputs(wildcards):
    """The native files a scene's ground truth is read from: produced by data rules, or under `root`."""
    dataset, scene = wildcards.dataset, wildcards.scene
    source, configured = DATASETS[dataset]["source"], "root" in DATASETS[dataset]
    if single_scene(dataset) and scene != dataset:
        raise WorkflowError(f"dataset {dataset!r} has one scene, called {dataset!r}; asked for {scene!r}")
    if source in ("synthetic", "eth3d"):
        model_dir = f"{scene_dir(dataset, scene)}/dslr_calibration_undistorted"
        files = [f"{model_dir}/{name}.txt" for name in ("cameras", "images", "points3D")]
        return _require(dataset, files, "the scene's ETH3D calibration; root holds one folder per scene") \
            if configured else files
    if source == "megadepth":
        if configured:
            return _require(dataset, [f"{dataset_root(dataset)}/scene_info/{scene}.npz"],
                            "the scene info; root holds scene_info/ and Undistorted_SfM/")
        return [part_stamp(dataset, "scene_info"), part_stamp(dataset, f"Undistorted_SfM-{scene}")]
    if source == "inloc":
        if configured:
            return _require(dataset, [f"{dataset_root(dataset)}/database/cutouts", f"{dataset_root(dataset)}/query/iphone7"],
                            "InLoc's cutouts and iphone7 queries")
        return [part_stamp(dataset, "cutouts"), part_stamp(dataset, "iphone7")]
    if source == "colmap":
        return _colmap_model_files(dataset, scene)
    return _require(dataset, [image_dir(dataset, scene)], "the image folder")  # folder


def labels_inputs(wildcards):
    inputs = {"gt": f"results/{wildcards.dataset}/{wildcards.scene}/gt.h5"}
    ds = DATASETS[wildcards.dataset]
    if ds["source"] == "megadepth":
        depth = f"{dataset_root(wildcards.dataset)}/depth_undistorted/{wildcards.scene}"
        inputs["depth"] = _require(wildcards.dataset, [depth], "MegaDepth depth maps, for training") \
            if "root" in ds else part_stamp(wildcards.dataset, f"depth_undistorted-{wildcards.scene}")
    return inputs


def archive_part(dataset, part):
    parts = {}
    for scene in scenes(dataset):
        parts.update(ARCHIVE_PARTS[DATASETS[dataset]["source"]](scene))
    if part not in parts:
        raise WorkflowError(f"dataset {dataset!r}: unknown archive part {part!r} (known: {sorted(parts)})")
    return parts[part]


def archive_url(dataset, archive):
    base = DATASETS[dataset]["url"].rstrip("/")
    return f"{base}/{archive}"


def image_dir(dataset, scene):
    source = DATASETS[dataset]["source"]
    if source == "megadepth":
        return f"{dataset_root(dataset)}/Undistorted_SfM/{scene}/images"
    if source == "inloc":
        return dataset_root(dataset)
    if source in ("colmap", "folder"):
        images = reader_args(dataset, scene)["images"]
        return f"{scene_dir(dataset, scene)}/{images}".rstrip("/") if images else scene_dir(dataset, scene)
    return f"{scene_dir(dataset, scene)}/images"


def has_pose_ground_truth(dataset):
    return DATASETS[dataset]["source"] not in NO_POSES


def scenes(dataset):
    return DATASETS[dataset].get("scenes", [dataset])


def backbone_of(dataset):
    return DATASETS[dataset]["backbone"]


def encoder_backbone(dataset, encoder):
    """Trained encoders work on the backbone they were trained for; `identity` on the dataset's."""
    return ENCODERS[encoder].get("backbone", backbone_of(dataset))


def training_scenes(encoder):
    return [(ds, scene) for ds in ENCODERS[encoder]["train"]["datasets"] for scene in scenes(ds)]


def used_for_training(dataset):
    return any(dataset in ENCODERS[e]["train"]["datasets"] for e in TRAINED_ENCODERS)


def embeddings_inputs(wildcards):
    encoder = ENCODERS[wildcards.encoder]
    backbone = encoder_backbone(wildcards.dataset, wildcards.encoder)
    inputs = {"features": f"results/{wildcards.dataset}/{wildcards.scene}/features-{backbone}.h5"}
    if "train" in encoder:
        inputs["checkpoint"] = f"results/encoders/{wildcards.encoder}/checkpoint.pt"
    elif "checkpoint" in encoder:
        inputs["checkpoint"] = encoder["checkpoint"]
    return inputs


def train_inputs(wildcards):
    backbone = ENCODERS[wildcards.encoder]["backbone"]
    runs = training_scenes(wildcards.encoder)
    return {
        "features": [f"results/{ds}/{s}/features-{backbone}.h5" for ds, s in runs],
        "labels": [f"results/{ds}/{s}/labels.h5" for ds, s in runs],
    }


def method_params(dataset, method):
    """What a retrieval job depends on: the method's entry plus the names of its inputs."""
    entry = dict(METHODS[method])
    if entry["type"] == "cls":
        entry["backbone"] = backbone_of(dataset)
    elif entry["type"] == "vop":
        entry["backbone"] = encoder_backbone(dataset, entry["encoder"])
    return canonical(entry)


def retrieval_mode(dataset):
    """register (every image against its scene) or retrieve (the `queries` glob against the rest)."""
    ds = DATASETS[dataset]
    if ds.get("mode", "register") == "retrieve":
        return {"mode": "retrieve", "queries": ds["queries"]}
    return {"mode": "register"}


def retrieval_inputs(wildcards):
    scene_dir = f"results/{wildcards.dataset}/{wildcards.scene}"
    entry = METHODS[wildcards.method]
    inputs = {"gt": f"{scene_dir}/gt.h5"}
    if entry["type"] == "cls":
        inputs["features"] = f"{scene_dir}/features-{backbone_of(wildcards.dataset)}.h5"
    elif entry["type"] == "vop":
        inputs["embeddings"] = f"{scene_dir}/embeddings-{entry['encoder']}.h5"
    return inputs


def auc_inputs(wildcards):
    """Each run's files, in the order of metrics_runs(), which the table and plot scripts zip them with."""
    ds = wildcards.dataset
    runs = [(run["method"], run["scene"]) for run in metrics_runs(ds)]
    inputs = {
        "pose": [f"results/{ds}/{s}/{m}/pose.csv" for m, s in runs],
        "pairs": [f"results/{ds}/{s}/{m}/pairs.txt" for m, s in runs],
        "gt": [f"results/{ds}/{s}/gt.h5" for m, s in runs],
    }
    if not has_pose_ground_truth(ds):  # images without poses: retrieval only, no pose.csv
        del inputs["pose"]
    return inputs


def metrics_runs(dataset):
    """The (method, scene) runs of a dataset's table and figures, with the k each method retrieved."""
    return [
        {"method": m, "scene": s, "k": METHODS[m]["k"], **retrieval_mode(dataset)}
        for m in DATASETS[dataset]["methods"]
        for s in scenes(dataset)
    ]
