# Config lookups shared by the rules. Layouts live in the package (vop.datasets, vop.conf): the workflow
# asks it and keeps none of its own. Every value a job depends on goes through `params:`.
import re

from snakemake.exceptions import WorkflowError

from vop.conf import ConfigError, method_conf
from vop.workflow import load_datasets

try:
    DATASETS = load_datasets(config)  # name -> vop.datasets.Dataset
except ConfigError as err:
    raise WorkflowError(str(err)) from None
METHODS = config["methods"]
ENCODERS = config["encoders"]
TRAINED_ENCODERS = [name for name, enc in ENCODERS.items() if "train" in enc]
NEVER = "(?!x)x"  # a wildcard constraint that matches nothing
# the conda env of the rules that declare gpu=1 (--software-deployment-method conda)
GPU_ENV = "../../envs/vop-gpu.yaml" if config["software"]["gpu_env"] else "../../envs/vop.yaml"


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


def alternatives(names):
    """A wildcard constraint matching exactly `names`."""
    return "|".join(re.escape(n) for n in names) or NEVER


def datasets_where(test):
    return [name for name, ds in DATASETS.items() if test(ds)]


wildcard_constraints:
    dataset=alternatives(DATASETS),
    scene="[^/]+",
    method=alternatives(METHODS),
    backbone=alternatives(config["backbones"]),
    encoder=alternatives(ENCODERS),


def needed_files(dataset, scene, needs):
    """The paths of what a scene's stage reads (vop.datasets.Needs): files under a configured root, the
    stamps of the archive parts to unpack, or the stamp of the generated scene."""
    paths = list(needs.files)
    paths += [rules.extract_part.output[0].format(dataset=dataset, part=part) for part in needs.parts]
    if needs.generated:
        paths.append(rules.generate_scene.output[0].format(dataset=dataset, scene=scene))
    return paths


def gt_inputs(wildcards):
    needs = DATASETS[wildcards.dataset].ground_truth_needs(wildcards.scene)
    return needed_files(wildcards.dataset, wildcards.scene, needs)


def labels_inputs(wildcards):
    needs = DATASETS[wildcards.dataset].depth_needs(wildcards.scene)
    return {"gt": scene_file("ground_truth", wildcards), "depth": needed_files(wildcards.dataset, wildcards.scene, needs)}


def scene_file(rule, wildcards, **more):
    """The output of a per-scene rule for the scene of `wildcards` (and more wildcards)."""
    return getattr(rules, rule).output[0].format(dataset=wildcards.dataset, scene=wildcards.scene, **more)


def reader_args(wildcards):
    return canonical(DATASETS[wildcards.dataset].reader_args(wildcards.scene))


def image_dir(wildcards):
    return DATASETS[wildcards.dataset].image_dir(wildcards.scene)


def backbone_of(dataset):
    return DATASETS[dataset].conf.backbone


def encoder_backbone(dataset, encoder):
    """Trained encoders work on the backbone they were trained for; `identity` on the dataset's."""
    return ENCODERS[encoder].get("backbone", backbone_of(dataset))


def training_scenes(encoder):
    return [(ds, scene) for ds in ENCODERS[encoder]["train"]["datasets"] for scene in DATASETS[ds].scenes]


def used_for_training(dataset):
    return any(dataset in ENCODERS[e]["train"]["datasets"] for e in TRAINED_ENCODERS)


def embeddings_inputs(wildcards):
    encoder = ENCODERS[wildcards.encoder]
    inputs = {"features": scene_file("features", wildcards,
                                     backbone=encoder_backbone(wildcards.dataset, wildcards.encoder))}
    if "train" in encoder:
        inputs["checkpoint"] = rules.train_encoder.output.checkpoint.format(encoder=wildcards.encoder)
    elif "checkpoint" in encoder:
        inputs["checkpoint"] = encoder["checkpoint"]
    return inputs


def train_inputs(wildcards):
    backbone = ENCODERS[wildcards.encoder]["backbone"]
    runs = training_scenes(wildcards.encoder)
    return {
        "features": [rules.features.output[0].format(dataset=d, scene=s, backbone=backbone) for d, s in runs],
        "labels": [rules.patch_labels.output[0].format(dataset=d, scene=s) for d, s in runs],
    }


def method_backbone(dataset, method):
    """The backbone whose tokens a method reads (None: it reads none), recorded in retrieval.json."""
    entry = METHODS[method]
    needs = method_conf(entry).needs
    if needs == "features":
        return backbone_of(dataset)
    if needs == "embeddings":
        return encoder_backbone(dataset, entry["encoder"])
    return None


def retrieval_mode(dataset):
    """register (every image against its scene) or retrieve (the `queries` glob against the rest)."""
    ds = DATASETS[dataset]
    return {"mode": "retrieve", "queries": ds.queries} if ds.mode == "retrieve" else {"mode": "register"}


def retrieval_inputs(wildcards):
    entry = METHODS[wildcards.method]
    inputs = {"gt": scene_file("ground_truth", wildcards)}
    needs = method_conf(entry).needs
    if needs == "features":
        inputs["features"] = scene_file("features", wildcards, backbone=backbone_of(wildcards.dataset))
    elif needs == "embeddings":
        inputs["embeddings"] = scene_file("embeddings", wildcards, encoder=entry["encoder"])
    return inputs


def metrics_runs(dataset):
    """The (method, scene) runs of a dataset's table and figures, with the k each method retrieved."""
    return [
        {"method": m, "scene": s, "k": METHODS[m]["k"], **retrieval_mode(dataset)}
        for m in DATASETS[dataset].conf.methods
        for s in DATASETS[dataset].scenes
    ]


def auc_inputs(wildcards):
    """Each run's files, in the order of metrics_runs(), which the table and plot scripts zip them with."""
    ds = wildcards.dataset
    runs = [(run["method"], run["scene"]) for run in metrics_runs(ds)]
    inputs = {
        "pairs": [rules.retrieve.output.pairs.format(dataset=ds, scene=s, method=m) for m, s in runs],
        "gt": [rules.ground_truth.output[0].format(dataset=ds, scene=s) for m, s in runs],
    }
    if DATASETS[ds].has_poses:  # images without poses: retrieval only, no pose.csv
        inputs["pose"] = [rules.pose.output[0].format(dataset=ds, scene=s, method=m) for m, s in runs]
    return inputs
