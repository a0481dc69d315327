# Shards: a dataset with `images_per_job` dumps its features in image shards and ranks its queries (cls,
# vop) in query shards against an index built once per scene (vop.shards). The features and retrieve rules
# then merge what their shards wrote; every other dataset never reaches these rules.


checkpoint shard_plan:
    """The image and query ranges of a scene's shards (their number is known once gt.h5 is)."""
    input:
        gt=rules.ground_truth.output[0],
    output:
        "results/{dataset}/{scene}/shards.json",
    params:
        per_job=lambda wc: DATASETS[wc.dataset].conf.images_per_job,
        mode=lambda wc: retrieval_mode(wc.dataset),
    wildcard_constraints:
        dataset=alternatives(datasets_where(lambda ds: ds.conf.images_per_job is not None)),
    log:
        "logs/{dataset}/{scene}/shard_plan.log",
    benchmark:
        "logs/{dataset}/{scene}/shard_plan.benchmark.tsv"
    localrule: True
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/shard_plan.py"


rule features_shard:
    """Backbone tokens of one image shard of a scene."""
    input:
        images=image_inputs,
        gt=rules.ground_truth.output[0],
        plan=rules.shard_plan.output[0],
    output:
        "results/{dataset}/{scene}/shards/features-{backbone}-{shard}.h5",
    params:
        reader=reader_args,
        conf=lambda wc: canonical(config["backbones"][wc.backbone]),
        with_flipped=lambda wc: used_for_training(wc.dataset),
    wildcard_constraints:
        shard=r"\d+",
    threads: 2
    resources:
        gpu=1,
        mem_mb=mem_mb(8000),  # the model and one batch: a shard holds no more than the unsharded job
    log:
        "logs/{dataset}/{scene}/features_shard-{backbone}-{shard}.log",
    benchmark:
        "logs/{dataset}/{scene}/features_shard-{backbone}-{shard}.benchmark.tsv"
    conda:
        GPU_ENV
    script:
        "../../scripts/features.py"


rule scene_index:
    """The prefilter's index over a scene's database (and vop's voting radius), once for all its shards."""
    input:
        unpack(method_files),
        gt=rules.ground_truth.output[0],
        plan=rules.shard_plan.output[0],
    output:
        index="results/{dataset}/{scene}/{method}/index.faiss",
        info="results/{dataset}/{scene}/{method}/index.json",
    params:
        method=lambda wc: canonical(METHODS[wc.method]),
        mode=lambda wc: retrieval_mode(wc.dataset),
    resources:
        mem_mb=lambda wc, input, attempt: shard_memory(input, None) * attempt,
    log:
        "logs/{dataset}/{scene}/{method}/scene_index.log",
    benchmark:
        "logs/{dataset}/{scene}/{method}/scene_index.benchmark.tsv"
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/scene_index.py"


rule retrieve_shard:
    """The rankings of one query shard of a scene, against its whole database."""
    input:
        unpack(method_files),
        gt=rules.ground_truth.output[0],
        plan=rules.shard_plan.output[0],
        index=rules.scene_index.output.index,
        info=rules.scene_index.output.info,
    output:
        "results/{dataset}/{scene}/{method}/shards/{shard}.npz",
    params:
        method=lambda wc: canonical(METHODS[wc.method]),
        backbone=lambda wc: method_backbone(wc.dataset, wc.method),
        mode=lambda wc: retrieval_mode(wc.dataset),
    wildcard_constraints:
        shard=r"\d+",
    resources:
        gpu=1,
        mem_mb=lambda wc, input, attempt: shard_memory(input, METHODS[wc.method]) * attempt,
    log:
        "logs/{dataset}/{scene}/{method}/retrieve_shard-{shard}.log",
    benchmark:
        "logs/{dataset}/{scene}/{method}/retrieve_shard-{shard}.benchmark.tsv"
    conda:
        GPU_ENV
    script:
        "../../scripts/retrieve_shard.py"
