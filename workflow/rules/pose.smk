# Pose: local features once per image, then RANSAC relative pose on every retrieved pair (matches from the
# method's shard of the scene's store, matches.smk), each unordered pair estimated once per scene: a pose
# job copies the estimates of the scene's other methods made from the same inputs (vop.estimates).


rule local_features:
    """SIFT keypoints and descriptors of every image of a scene (hloc layout), shared by all methods and by
    the ground truth of scenes that triangulate tracks (so it reads the images, not gt.h5)."""
    input:
        images=image_inputs,
    output:
        "results/{dataset}/{scene}/local_features.h5",
    params:
        reader=reader_args,
        conf=canonical(config["local_features"]),
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
    """Estimate the essential matrix of each retrieved pair from its stored matches (each unordered pair once per
    scene), score it against ground truth."""
    input:
        pairs=rules.retrieve.output.pairs,
        gt=rules.ground_truth.output[0],
        local_features=rules.local_features.output[0],
        matches=rules.matches.output[0],
    output:
        "results/{dataset}/{scene}/{method}/pose.csv",
        # the estimates it scored, which the scene's other pose jobs copy instead of estimating (vop.estimates)
        estimates=update("results/{dataset}/{scene}/{method}/poses.h5"),
    params:
        conf=canonical(config["pose"]),
        matching=canonical(config["matching"]),
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
