# Config lookups shared by the rules. Every value a job depends on goes through `params:`.
import os
import re

from snakemake.exceptions import WorkflowError

DATASETS = config["datasets"]
METHODS = config["methods"]
ENCODERS = config["encoders"]
TRAINED_ENCODERS = [name for name, enc in ENCODERS.items() if "train" in enc]
NEVER = "(?!x)x"  # a wildcard constraint that matches nothing


def canonical(value):
    """A config value with its mappings' keys sorted: params are compared as written, so reordering
    keys in config.yaml must not look like a change and rerun jobs."""
    if isinstance(value, dict):
        return {key: canonical(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return value


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
        if ds["source"] == "synthetic" and "root" in ds:
            raise WorkflowError(f"{where}.root: synthetic scenes are always generated under resources/{name}")
        if ds["source"] == "eth3d" and "root" not in ds and "url" not in ds:
            raise WorkflowError(f"{where}: set `root` (an extracted ETH3D_undistorted folder) or `url`")
    for name, enc in ENCODERS.items():
        where = f"config: encoders.{name}"
        if "backbone" in enc and enc["backbone"] not in config["backbones"]:
            raise WorkflowError(f"{where}.backbone {enc['backbone']!r} is not under `backbones:`; add it there")
        for ds in enc.get("train", {}).get("datasets", []):
            if ds not in DATASETS:
                raise WorkflowError(f"{where}.train.datasets names {ds!r}, which is not under `datasets:`")
            if DATASETS[ds]["source"] != "synthetic":
                raise WorkflowError(f"{where}.train.datasets: {ds!r} has no depth maps to train from")


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


def model_files(wildcards):
    """The scene's COLMAP model: produced by a data rule, or already on disk under a configured root."""
    model_dir = f"{dataset_root(wildcards.dataset)}/{wildcards.scene}/dslr_calibration_undistorted"
    files = [f"{model_dir}/{name}.txt" for name in ("cameras", "images", "points3D")]
    if "root" in DATASETS[wildcards.dataset] and not all(os.path.exists(f) for f in files):
        raise WorkflowError(
            f"dataset {wildcards.dataset!r}, scene {wildcards.scene!r}: no COLMAP model in {model_dir}; "
            f"check datasets.{wildcards.dataset}.root in the config (it must hold one folder per scene)"
        )
    return files


def image_dir(dataset, scene):
    return f"{dataset_root(dataset)}/{scene}/images"


def scenes(dataset):
    return DATASETS[dataset]["scenes"]


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
    ds = wildcards.dataset
    runs = [(m, s) for m in DATASETS[ds]["methods"] for s in scenes(ds)]
    return {
        "pose": [f"results/{ds}/{s}/{m}/pose.csv" for m, s in runs],
        "pairs": [f"results/{ds}/{s}/{m}/pairs.txt" for m, s in runs],
        "gt": [f"results/{ds}/{s}/gt.h5" for m, s in runs],
    }


def metrics_runs(dataset):
    """The (method, scene) runs of a dataset's table and figures, with the k each method retrieved."""
    return [
        {"method": m, "scene": s, "k": METHODS[m]["k"]}
        for m in DATASETS[dataset]["methods"]
        for s in scenes(dataset)
    ]
