# Pose: local features once per image, then RANSAC relative pose on every retrieved pair (matches from the
# method's shard of the scene's store, matches.smk), each unordered pair estimated once per scene: a pose
# job copies the estimates of the scene's other methods made from the same inputs (vop.estimates).
# pose.scale_aware: a vop or cls method's pairs again, matched at their predicted relative scale.


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
        conf=pose_conf(),
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


rule pose_scale_aware:
    """A vop or cls method's pairs posed again, each image matched with local features extracted at the pair's
    predicted relative scale (overlap.csv; half-octave buckets, each (image, bucket) extracted once per scene);
    the pairs at the ordinary scale copy the method's poses.h5 (vop.scale_aware)."""
    input:
        pairs=rules.retrieve.output.pairs,
        # overlap.smk comes later in the Snakefile: its rule is looked up when the job is made
        overlap=lambda wc: scene_file("overlap", wc, method=wc.method),
        gt=rules.ground_truth.output[0],
        local_features=rules.local_features.output[0],
        poses=rules.pose.output.estimates,
        images=image_inputs,
    output:
        "results/{dataset}/{scene}/{method}/pose_scale_aware.csv",
        # the extractions at buckets > 0, a cache the scene's other methods' jobs copy (vop.scale_aware)
        features=update("results/{dataset}/{scene}/{method}/local_features_scaled.h5"),
        estimates=update("results/{dataset}/{scene}/{method}/poses_scale_aware.h5"),
    params:
        conf=pose_conf(),
        matching=canonical(config["matching"]),
        local_features=canonical(config["local_features"]),
        reader=reader_args,
    wildcard_constraints:
        method=alternatives([m for m in METHODS if METHODS[m]["type"] in NSO_METHOD_TYPES]),
    threads: 2
    resources:
        mem_mb=mem_mb(2000),
    log:
        "logs/{dataset}/{scene}/{method}/pose_scale_aware.log",
    benchmark:
        "logs/{dataset}/{scene}/{method}/pose_scale_aware.benchmark.tsv"
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/pose_scale_aware.py"
