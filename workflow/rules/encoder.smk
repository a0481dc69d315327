# Encoder: patch labels (from depth or tracks), training of the VOP head, and its patch embeddings per scene.


rule patch_labels:
    """Ground-truth patch correspondences of sampled image pairs, from depth or from the tracks of 3D points
    in gt.h5 (`labels.geometry`; cached per scene)."""
    input:
        unpack(labels_inputs),
    output:
        "results/{dataset}/{scene}/labels.h5",
    params:
        reader=reader_args,
        conf=canonical(config["labels"]),
    resources:
        mem_mb=mem_mb(2000),
    log:
        "logs/{dataset}/{scene}/patch_labels.log",
    benchmark:
        "logs/{dataset}/{scene}/patch_labels.benchmark.tsv"
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/patch_labels.py"


rule train_encoder:
    """Train the VOP patch-embedding head on the labelled pairs of its training datasets."""
    input:
        unpack(train_inputs),
    output:
        checkpoint="results/encoders/{encoder}/checkpoint.pt",
        history="results/encoders/{encoder}/history.csv",
        plot=report(
            "results/encoders/{encoder}/training.png",
            caption="../report/training.rst",
            category="Encoder training",
        ),
    params:
        backbone=lambda wc: ENCODERS[wc.encoder]["backbone"],
        train=lambda wc: canonical({k: v for k, v in ENCODERS[wc.encoder]["train"].items() if k != "datasets"}),
    wildcard_constraints:
        encoder=alternatives(TRAINED_ENCODERS),
    threads: 2
    resources:
        gpu=1,
        mem_mb=mem_mb(4000),
    log:
        "logs/encoders/{encoder}/train_encoder.log",
    benchmark:
        "logs/encoders/{encoder}/train_encoder.benchmark.tsv"
    conda:
        GPU_ENV
    script:
        "../../scripts/train_encoder.py"


rule embeddings:
    """Apply an encoder (identity or a VOP checkpoint) to a scene's backbone features."""
    input:
        unpack(embeddings_inputs),
    output:
        "results/{dataset}/{scene}/embeddings-{encoder}.h5",
    params:
        encoder=lambda wc: canonical(ENCODERS[wc.encoder]),
    resources:
        gpu=1,
        mem_mb=mem_mb(2000),
    log:
        "logs/{dataset}/{scene}/embeddings-{encoder}.log",
    benchmark:
        "logs/{dataset}/{scene}/embeddings-{encoder}.benchmark.tsv"
    conda:
        GPU_ENV
    script:
        "../../scripts/embeddings.py"
