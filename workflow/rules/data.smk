# Data: raw scenes in their native layout under resources/ (generated, or downloaded and extracted; a
# configured `root` skips both), and gt.h5 per scene read through vop.datasets. What a source downloads
# and unpacks, and where, its reader says (archive parts); each part is unpacked by its own job.


rule generate_scene:
    """Render one scene of a generated source offline (its reader's `generate`)."""
    output:
        "resources/{dataset}/generated/{scene}.done",
    params:
        reader=reader_args,
    wildcard_constraints:
        dataset=alternatives(datasets_where(lambda ds: ds.reader.generated)),
    resources:
        mem_mb=mem_mb(1000),
    log:
        "logs/{dataset}/{scene}/generate_scene.log",
    benchmark:
        "logs/{dataset}/{scene}/generate_scene.benchmark.tsv"
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/generate_scene.py"


rule download_archive:
    """Fetch one archive of a dataset (resumable, verified), or say where to put it by hand."""
    output:
        "resources/{dataset}/archives/{archive}",
    params:
        url=lambda wc: DATASETS[wc.dataset].archive_url(wc.archive),
        config_key=lambda wc: f"datasets.{wc.dataset}.root",
    wildcard_constraints:
        dataset=alternatives(datasets_where(lambda ds: ds.downloaded)),
        archive="[^/]+",
    log:
        "logs/{dataset}/download_{archive}.log",
    benchmark:
        "logs/{dataset}/download_archive-{archive}.benchmark.tsv"
    localrule: True
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/download.py"


rule extract_part:
    """Unpack one part of an archive (a scene, its depth, the scene infos, ...) safely; stamp when done."""
    input:
        lambda wc: rules.download_archive.output[0].format(
            dataset=wc.dataset, archive=DATASETS[wc.dataset].archive_part(wc.part).archive
        ),
    output:
        "resources/{dataset}/extracted/{part}.done",
    params:
        member_prefix=lambda wc: DATASETS[wc.dataset].archive_part(wc.part).member_prefix,
        target=lambda wc: DATASETS[wc.dataset].part_target(wc.part),
    wildcard_constraints:
        dataset=alternatives(datasets_where(lambda ds: ds.downloaded)),
        part="[^/]+",
    resources:
        mem_mb=mem_mb(1000),
    log:
        "logs/{dataset}/extract_{part}.log",
    benchmark:
        "logs/{dataset}/extract_part-{part}.benchmark.tsv"
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/extract.py"


rule ground_truth:
    """Intrinsics, poses, image sizes and overlap of one scene, read from its native files; posed images
    without 3D points get tracks triangulated from their local features (vop.ground_truth)."""
    input:
        unpack(gt_inputs),
    output:
        "results/{dataset}/{scene}/gt.h5",
    params:
        reader=reader_args,
        triangulation=gt_triangulation,
        nso=canonical(config["nso"]),
    threads: lambda wc: 2 if gt_triangulation(wc) is not None else 1
    resources:
        mem_mb=mem_mb(2000),
    log:
        "logs/{dataset}/{scene}/ground_truth.log",
    benchmark:
        "logs/{dataset}/{scene}/ground_truth.benchmark.tsv"
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/ground_truth.py"
