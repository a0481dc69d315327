# Data: raw scenes in their native layout under resources/ (generated, or downloaded and extracted; a
# configured `root` skips both), and gt.h5 per scene read through vop.datasets.


rule synthetic_scene:
    """Render one synthetic scene offline (ETH3D layout: images, COLMAP model with tracks, depth)."""
    output:
        multiext(
            "resources/{dataset}/{scene}/dslr_calibration_undistorted/",
            "cameras.txt",
            "images.txt",
            "points3D.txt",
        ),
    params:
        scene_dir=lambda wc: f"resources/{wc.dataset}/{wc.scene}",
        synthetic=lambda wc: canonical(DATASETS[wc.dataset].get("synthetic", {})),
    wildcard_constraints:
        dataset=_alternatives(datasets_of("synthetic")),
    resources:
        mem_mb=mem_mb(1000),
    log:
        "logs/{dataset}/{scene}/synthetic_scene.log",
    benchmark:
        "logs/{dataset}/{scene}/synthetic_scene.benchmark.tsv"
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/synthetic_scene.py"


rule download_eth3d:
    """Fetch the ETH3D_undistorted archive (or say where to put it when there is no network)."""
    output:
        "resources/{dataset}/ETH3D_undistorted.zip",
    params:
        url=lambda wc: DATASETS[wc.dataset]["url"],
        config_key=lambda wc: f"datasets.{wc.dataset}.root",
    wildcard_constraints:
        dataset=_alternatives(datasets_of("eth3d")),
    log:
        "logs/{dataset}/download_eth3d.log",
    benchmark:
        "logs/{dataset}/download_eth3d.benchmark.tsv"
    localrule: True
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/download.py"


rule extract_eth3d_scene:
    """Unpack one scene of the archive (members escaping the target folder are refused)."""
    input:
        "resources/{dataset}/ETH3D_undistorted.zip",
    output:
        multiext(
            "resources/{dataset}/ETH3D_undistorted/{scene}/dslr_calibration_undistorted/",
            "cameras.txt",
            "images.txt",
            "points3D.txt",
        ),
    params:
        member_prefix=lambda wc: f"ETH3D_undistorted/{wc.scene}/",
        target=lambda wc: f"resources/{wc.dataset}",
    wildcard_constraints:
        dataset=_alternatives(datasets_of("eth3d")),
    resources:
        mem_mb=mem_mb(1000),
    log:
        "logs/{dataset}/{scene}/extract_eth3d_scene.log",
    benchmark:
        "logs/{dataset}/{scene}/extract_eth3d_scene.benchmark.tsv"
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/extract.py"


rule download_archive:
    """Fetch one archive of MegaDepth or InLoc (resumable, verified), or say where to put it by hand."""
    output:
        "resources/{dataset}/archives/{archive}",
    params:
        url=lambda wc: archive_url(wc.dataset, wc.archive),
        config_key=lambda wc: f"datasets.{wc.dataset}.root",
    wildcard_constraints:
        dataset=_alternatives(datasets_of("megadepth") + datasets_of("inloc")),
        archive=r"[^/]+\.tar(\.gz)?",
    log:
        "logs/{dataset}/download_{archive}.log",
    benchmark:
        "logs/{dataset}/download_{archive}.benchmark.tsv"
    localrule: True
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/download.py"


rule extract_archive_part:
    """Unpack one part (a scene's images or depth, the scene infos, the cutouts) safely; stamp when done."""
    input:
        lambda wc: f"resources/{wc.dataset}/archives/{archive_part(wc.dataset, wc.part)[0]}",
    output:
        "resources/{dataset}/extracted/{part}.done",
    params:
        member_prefix=lambda wc: archive_part(wc.dataset, wc.part)[1],
        target=lambda wc: f"{dataset_root(wc.dataset)}/{archive_part(wc.dataset, wc.part)[2]}".rstrip("/"),
        stamp=lambda wc: part_stamp(wc.dataset, wc.part),
    wildcard_constraints:
        dataset=_alternatives(datasets_of("megadepth") + datasets_of("inloc")),
        part="[^/]+",
    resources:
        mem_mb=mem_mb(1000),
    log:
        "logs/{dataset}/extract_{part}.log",
    benchmark:
        "logs/{dataset}/extract_{part}.benchmark.tsv"
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/extract.py"


rule ground_truth:
    """Intrinsics, poses, image sizes and overlap of one scene, read from its native files."""
    input:
        gt_inputs,
    output:
        "results/{dataset}/{scene}/gt.h5",
    params:
        reader=lambda wc: reader_args(wc.dataset, wc.scene),
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
