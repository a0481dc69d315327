# Pose: local features once per image, then RANSAC relative pose on every retrieved pair.


rule local_features:
    """SIFT keypoints and descriptors of every image of a scene (hloc layout), shared by all methods."""
    input:
        gt="results/{dataset}/{scene}/gt.h5",
    output:
        "results/{dataset}/{scene}/local_features.h5",
    params:
        image_dir=lambda wc: image_dir(wc.dataset, wc.scene),
        conf=canonical(config.get("local_features", {})),
    threads: 2
    resources:
        mem_mb=mem_mb(2000),
    log:
        "logs/{dataset}/{scene}/local_features.log",
    benchmark:
        "logs/{dataset}/{scene}/local_features.benchmark.tsv"
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/local_features.py"


rule pose:
    """Match, estimate the essential matrix, and score each retrieved pair against ground truth."""
    input:
        pairs="results/{dataset}/{scene}/{method}/pairs.txt",
        gt="results/{dataset}/{scene}/gt.h5",
        local_features="results/{dataset}/{scene}/local_features.h5",
    output:
        "results/{dataset}/{scene}/{method}/pose.csv",
    params:
        conf=canonical(config.get("pose", {})),
    threads: 2
    resources:
        mem_mb=mem_mb(2000),
    log:
        "logs/{dataset}/{scene}/{method}/pose.log",
    benchmark:
        "logs/{dataset}/{scene}/{method}/pose.benchmark.tsv"
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/pose.py"
