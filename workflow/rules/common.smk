# Config lookups shared by the rules. Layouts live in the package (vop.datasets, vop.conf): the workflow
# asks it and keeps none of its own. Every value a job depends on goes through `params:`.
import os
import re
from types import SimpleNamespace

from snakemake.exceptions import WorkflowError

from vop.conf import method_conf
from vop.config_errors import exit_on_config_error
from vop.datasets import PROTOCOLS
from vop.nso import OVERLAP_COLUMNS
from vop.workflow import load_datasets

with exit_on_config_error():  # the message (key path and fix first), without a traceback
    DATASETS = load_datasets(config)  # name -> vop.datasets.Dataset
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
    the demo peaks below 0.75 GB (benchmarks/job_resources.py); the bases leave room for real scenes."""
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
    paths += [(rules.place_part if DATASETS[dataset].archive_part(part).placed else rules.extract_part)
              .output[0].format(dataset=dataset, part=part) for part in needs.parts]
    if needs.generated:
        paths.append(rules.generate_scene.output[0].format(dataset=dataset, scene=scene))
    return paths


def gt_inputs(wildcards):
    """The native files of a scene's ground truth; its local features too where it triangulates tracks."""
    needs = DATASETS[wildcards.dataset].ground_truth_needs(wildcards.scene)
    inputs = {"native": needed_files(wildcards.dataset, wildcards.scene, needs)}
    if needs.local_features:
        inputs["local_features"] = scene_file("local_features", wildcards)
    if nso_reads_depth(wildcards.dataset):
        inputs["depth"] = needed_files(wildcards.dataset, wildcards.scene,
                                       DATASETS[wildcards.dataset].depth_needs(wildcards.scene))
    return inputs


def nso_reads_depth(dataset):
    """The ground-truth NSO (vop.nso) warps depth maps: `nso.geometry` depth, or auto on a source with depth."""
    geometry = config["nso"].get("geometry", "auto")
    return geometry == "depth" or (geometry == "auto" and DATASETS[dataset].has_depth)


def gt_triangulation(wildcards):
    """The `triangulation` block for a scene whose ground truth triangulates tracks, else None (so that
    changing it reruns only those scenes)."""
    if DATASETS[wildcards.dataset].ground_truth_needs(wildcards.scene).local_features:
        return canonical(config["triangulation"])
    return None


def image_inputs(wildcards):
    """The images a scene's job reads (or the archive parts / generated scene they come with)."""
    needs = DATASETS[wildcards.dataset].image_needs(wildcards.scene)
    return needed_files(wildcards.dataset, wildcards.scene, needs)


def sharded(dataset):
    """Features and retrieval in shards of `images_per_job` (vop.shards), planned by shard_plan."""
    return DATASETS[dataset].conf.images_per_job is not None


def shard_plan(wildcards):
    """The scene's shards (after the shard_plan checkpoint has run)."""
    from vop.shards import read_plan

    return read_plan(checkpoints.shard_plan.get(dataset=wildcards.dataset, scene=wildcards.scene).output[0])


def shard_memory(input, method):
    """mem_mb of a sharded scene's index or query-shard job: 1500 MB of libraries plus what it holds
    (vop.shards.job_memory_mb, from the scene's size and its shards'); retries add as for every rule."""
    from vop.shards import job_memory_mb

    return 1500 + job_memory_mb(input.get("embeddings") or input.get("features"), input.plan, method)


def features_inputs(wildcards):
    """The images and the image order (gt.h5: with views, the crops where the source has them); for a
    sharded dataset the features of its image shards instead."""
    if sharded(wildcards.dataset):
        shards = range(len(shard_plan(wildcards)["images"]))
        return {"shards": [scene_file("features_shard", wildcards, backbone=wildcards.backbone, shard=i)
                           for i in shards]}
    return {"images": image_inputs(wildcards), "gt": scene_file("ground_truth", wildcards)}


def labels_inputs(wildcards):
    needs = DATASETS[wildcards.dataset].depth_needs(wildcards.scene)
    return {"gt": scene_file("ground_truth", wildcards), "depth": needed_files(wildcards.dataset, wildcards.scene, needs)}


def scene_file(rule, wildcards, output=0, **more):
    """The output of a per-scene rule (its first, or the one named `output`) for the scene of `wildcards`
    (and more wildcards)."""
    outputs = getattr(rules, rule).output
    path = outputs[output] if isinstance(output, int) else getattr(outputs, output)
    return path.format(dataset=wildcards.dataset, scene=wildcards.scene, **more)


def reader_args(wildcards):
    return canonical(DATASETS[wildcards.dataset].reader_args(wildcards.scene))


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
    if needs == "matches":  # verify: its first stage's
        return method_backbone(dataset, entry["first_stage"])
    return None


def retrieval_mode(dataset):
    """register (every image against its scene) or retrieve (the `queries` glob against the rest), and the
    dataset's depth `k` where it replaces the methods' (a protocol's: vpr, revisitop, gl3d)."""
    ds = DATASETS[dataset]
    mode = {"mode": "retrieve", "queries": ds.queries} if ds.mode == "retrieve" else {"mode": "register"}
    if ds.retrieval_k is not None:
        mode["k"] = ds.retrieval_k
    return mode


def method_files(wildcards):
    """The scene file a method reads besides gt.h5: the backbone's features or the encoder's embeddings."""
    entry = METHODS[wildcards.method]
    needs = method_conf(entry).needs
    if needs == "features":
        return {"features": scene_file("features", wildcards, backbone=backbone_of(wildcards.dataset))}
    if needs == "embeddings":
        return {"embeddings": scene_file("embeddings", wildcards, encoder=entry["encoder"])}
    return {}


def sharded_retrieval(wildcards):
    """Whether the method ranks this scene in query shards (cls and vop on a sharded dataset)."""
    return sharded(wildcards.dataset) and bool(method_files(wildcards))


def retrieval_inputs(wildcards, shards=True):
    """gt.h5 and what the method needs; on a sharded dataset (cls, vop) its query shards' rows instead."""
    inputs = {"gt": scene_file("ground_truth", wildcards)}
    if shards and sharded_retrieval(wildcards):  # the shards' rows, merged
        inputs["shards"] = [rules.retrieve_shard.output[0].format(dataset=wildcards.dataset, scene=wildcards.scene,
                                                                  method=wildcards.method, shard=i)
                            for i in range(len(shard_plan(wildcards)["queries"]))]
        return inputs
    inputs.update(method_files(wildcards))
    if method_conf(METHODS[wildcards.method]).needs == "matches":  # verify: its first stage's ranking, the
        inputs["first_stage"] = scene_file("first_stage", wildcards, method=wildcards.method, output="scores")
        inputs["matches"] = scene_file("matches", wildcards, method=wildcards.method)  # scene's matches store,
        inputs["local_features"] = scene_file("local_features", wildcards)  # local features
    return inputs


def is_verify(method):
    return METHODS[method]["type"] == "verify"


VERIFY_METHODS = [name for name in METHODS if is_verify(name)]


def first_stage_inputs(wildcards):
    """A verify method's first stage reads what that method reads (in one job: its depth is verify's)."""
    first = METHODS[wildcards.method]["first_stage"]
    return retrieval_inputs(SimpleNamespace(dataset=wildcards.dataset, scene=wildcards.scene, method=first),
                            shards=False)


def matches_inputs(wildcards):
    """What a method's shard of the matches store holds the pairs of, and the scene's local features: the
    method's pairs.txt (read by its pose); for verify its shortlist, or on a dataset with poses its first
    stage's whole ranking (its pose.csv may reach past the shortlist)."""
    if is_verify(wildcards.method):
        has_poses = DATASETS[wildcards.dataset].has_poses
        pairs = scene_file("first_stage", wildcards, method=wildcards.method,
                           output="pairs" if has_poses else "shortlist")
    else:
        pairs = scene_file("retrieve", wildcards, method=wildcards.method, output="pairs")
    return {"pairs": [pairs], "local_features": scene_file("local_features", wildcards)}


def metrics_runs(dataset):
    """The (method, scene) runs of a dataset's table and figures, with the k each method retrieved; with
    pose.scale_aware each NSO method's `{method}+scale` runs follow its own (`scale_aware_of`: the method)."""
    runs = []
    for m in DATASETS[dataset].conf.methods:
        mine = [{"method": m, "scene": s, "k": METHODS[m]["k"], **retrieval_mode(dataset)}
                for s in DATASETS[dataset].scenes]
        runs += mine
        if m in scale_aware_methods(dataset):
            runs.extend({**run, "method": scale_run(m), "scale_aware_of": m} for run in mine)
    return runs


def auc_inputs(wildcards):
    """Each run's files, in the order of metrics_runs(), which the table and plot scripts zip them with (a
    +scale run: its method's pairs, its scale-aware poses)."""
    ds = wildcards.dataset
    runs = [(run.get("scale_aware_of", run["method"]), run["scene"], "scale_aware_of" in run)
            for run in metrics_runs(ds)]
    inputs = {
        "pairs": [rules.retrieve.output.pairs.format(dataset=ds, scene=s, method=m) for m, s, _ in runs],
        "gt": [rules.ground_truth.output[0].format(dataset=ds, scene=s) for m, s, _ in runs],
    }
    if DATASETS[ds].has_poses:  # images without poses: retrieval only, no pose.csv
        inputs["pose"] = [(rules.pose_scale_aware if scaled else rules.pose).output[0].format(dataset=ds, scene=s,
                                                                                               method=m)
                          for m, s, scaled in runs]
    return inputs


def pose_conf():
    """The pose block as estimation sees it: scale_aware says which runs exist, so turning it on reruns no
    pose job."""
    return canonical({key: value for key, value in config["pose"].items() if key != "scale_aware"})


# The other protocols (protocols.smk)

OTHER_PROTOCOLS = [p for p in PROTOCOLS if p != "auc"]  # vpr, revisitop, gl3d


def protocol_datasets():
    return datasets_where(lambda ds: ds.protocol != "auc")


def placed_parts_datasets():
    """Downloaded datasets with files that place_part puts in place (vop.datasets.ArchivePart.placed)."""
    return datasets_where(
        lambda ds: ds.downloaded and any(p.placed for s in ds.scenes for p in ds.reader.archive_parts(s))
    )


def protocol_inputs(wildcards):
    """Each run's files, in the order of protocol_runs(), and the native ground truth the tables read."""
    ds = DATASETS[wildcards.dataset]
    if wildcards.protocol != ds.protocol:
        raise WorkflowError(f"dataset {wildcards.dataset!r} is scored by the {ds.protocol} protocol: its table is "
                            f"results/{wildcards.dataset}/{ds.protocol}.csv")
    runs = [(run["method"], run["scene"]) for run in protocol_runs(wildcards.dataset)]
    inputs = {
        "pairs": [rules.retrieve.output.pairs.format(dataset=ds.name, scene=s, method=m) for m, s in runs],
        "gt": [rules.ground_truth.output[0].format(dataset=ds.name, scene=s) for m, s in runs],
        "truth": [p for s in ds.scenes for p in needed_files(ds.name, s, ds.ground_truth_needs(s))],
    }
    if ds.protocol == "gl3d":
        inputs["match_pairs"] = [rules.match_pairs.output[0].format(dataset=ds.name, scene=s, method=m) for m, s in runs]
    return inputs


def protocol_targets(names):
    """The table and figure of every dataset in `names` scored by another protocol than poses."""
    out = []
    for name in names:
        ds = DATASETS[name]
        if ds.protocol != "auc" and ds.conf.methods:
            out += [rules.protocol_table.output[0].format(dataset=name, protocol=ds.protocol),
                    rules.protocol_plot.output[0].format(dataset=name, protocol=ds.protocol)]
    return out


def protocol_runs(dataset):
    """The (method, scene) runs of a protocol table (vpr, revisitop, gl3d): with the reader's arguments,
    and `k`, the depth the table scores (match_pairs.txt's lines per query for gl3d)."""
    ds = DATASETS[dataset]
    return [
        {"method": m, "scene": s, **retrieval_mode(dataset), "k": ds.k, "reader": canonical(ds.reader_args(s))}
        for m in ds.conf.methods
        for s in ds.scenes
    ]


def run_summary_inputs(wildcards):
    """The dataset's last outputs (its table, and its figures where it has poses): the summary comes after
    every job it counts."""
    ds = wildcards.dataset
    if DATASETS[ds].protocol != "auc":
        return protocol_targets([ds])
    inputs = [rules.auc_table.output[0].format(dataset=ds)]
    if DATASETS[ds].has_poses:
        inputs.append(rules.plots.output.summary.format(dataset=ds))
    return inputs


def summary_results_dirs(dataset):
    """results/<dataset> and those of the datasets its methods' trained encoders learnt from."""
    encoders = {METHODS[m].get("encoder") for m in DATASETS[dataset].conf.methods} & set(TRAINED_ENCODERS)
    training = sorted({d for e in encoders for d in ENCODERS[e]["train"]["datasets"]} - {dataset})
    return [os.path.dirname(rules.auc_table.output[0].format(dataset=d)) for d in [dataset, *training]]


# SfM (sfm.smk)


def sfm_methods(dataset):
    """The methods of a dataset's sfm.csv: its own, then the baselines it does not list."""
    own = list(DATASETS[dataset].conf.methods)
    for name in config["sfm"]["baselines"]:
        if name not in METHODS:
            raise WorkflowError(f"sfm.baselines: {name!r} is not under `methods:`; add it there (e.g. {name}: "
                                f"{{type: {name}}}, as config/config.yaml does) or drop it from sfm.baselines")
    return own + [m for m in config["sfm"]["baselines"] if m not in own]


def sfm_params(wildcards, sweep=False):
    """What a reconstruction depends on besides its files: the sfm conf (the sweep's depths only for the sweep;
    the baselines for none), the matching conf and whether the scene is posed."""
    skip = ("baselines",) if sweep else ("baselines", "sweep")
    conf = {key: value for key, value in config["sfm"].items() if key not in skip}
    return {"conf": canonical(conf), "matching": canonical(config["matching"]),
            "posed": DATASETS[wildcards.dataset].has_poses}


def sweep_inputs(wildcards):
    """The method's ranking and store, the scene's local features, and what ranking it deeper reads."""
    inputs = retrieval_inputs(wildcards, shards=False)
    inputs.update(scores=scene_file("retrieve", wildcards, output="scores", method=wildcards.method),
                  store=scene_file("matches", wildcards, method=wildcards.method),
                  local_features=scene_file("local_features", wildcards))
    return inputs


def sfm_runs(dataset):
    return [{"method": m, "scene": s, "k": method_conf(METHODS[m]).k} for m in sfm_methods(dataset)
            for s in DATASETS[dataset].scenes]


def sweep_methods(dataset):
    """Every method of the table but exhaustive, which has no depth to cut."""
    return [m for m in sfm_methods(dataset) if METHODS[m]["type"] != "exhaustive"]


# Overlap both ways round (overlap.smk, vop.nso)

NSO_METHOD_TYPES = ("vop", "cls")


def nso_methods(dataset):
    """The dataset's methods that predict NSO (vop: its votes; cls: the baseline from the same patches)."""
    return [m for m in DATASETS[dataset].conf.methods if METHODS[m]["type"] in NSO_METHOD_TYPES]


def nso_datasets():
    return datasets_where(lambda ds: ds.has_poses and ds.protocol == "auc" and nso_methods(ds.name))


def overlap_inputs(wildcards):
    inputs = {"scores": scene_file("retrieve", wildcards, output="scores", method=wildcards.method),
              "gt": scene_file("ground_truth", wildcards)}
    # the baseline votes with the backbone's patches: cls's prediction, and vop's like-for-like comparison
    inputs["features"] = scene_file("features", wildcards, backbone=backbone_of(wildcards.dataset))
    return inputs


def nso_runs(dataset):
    return [{"method": m, "scene": s} for m in nso_methods(dataset) for s in DATASETS[dataset].scenes]


# pose.scale_aware (pose.smk, vop.scale_aware)

def scale_run(method):
    """The auc.csv and scale.csv method of a method's scale-aware run."""
    return f"{method}+scale"


def scale_aware_methods(dataset):
    """The methods posed again at their predicted relative scale: with pose.scale_aware, the NSO methods of a
    dataset with poses (their overlap.csv gives the scale)."""
    if not config["pose"]["scale_aware"] or dataset not in nso_datasets():
        return []
    return nso_methods(dataset)


def scale_datasets():
    return [ds for ds in nso_datasets() if scale_aware_methods(ds)]


def scale_runs(dataset):
    """The runs of scale.csv: each NSO method and its +scale run per scene, with the files they read."""
    runs = []
    for m in scale_aware_methods(dataset):
        for rule, method in ((rules.pose, m), (rules.pose_scale_aware, scale_run(m))):
            runs.extend({"method": method, "scene": s,
                         "pose": rule.output[0].format(dataset=dataset, scene=s, method=m),
                         "overlap": rules.overlap.output[0].format(dataset=dataset, scene=s, method=m)}
                        for s in DATASETS[dataset].scenes)
    return runs
