# Features: backbone tokens per image (CLS + 16x16 patches), then the encoder's patch embeddings.


rule features:
    """Batched backbone forward pass over every image of a scene."""
    input:
        gt="results/{dataset}/{scene}/gt.h5",
    output:
        "results/{dataset}/{scene}/features-{backbone}.h5",
    params:
        image_dir=lambda wc: image_dir(wc.dataset, wc.scene),
        backbone=lambda wc: canonical(config["backbones"][wc.backbone]),
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
    log:
        "logs/{dataset}/{scene}/features-{backbone}.log",
    benchmark:
        "logs/{dataset}/{scene}/features-{backbone}.benchmark.tsv"
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/features.py"


rule embeddings:
    """Apply an encoder to the dataset's backbone features."""
    input:
        lambda wc: f"results/{wc.dataset}/{wc.scene}/features-{backbone_of(wc.dataset)}.h5",
    output:
        "results/{dataset}/{scene}/embeddings-{encoder}.h5",
    params:
        encoder=lambda wc: canonical(config["encoders"][wc.encoder]),
    resources:
        gpu=1,
        mem_mb=4000,
    log:
        "logs/{dataset}/{scene}/embeddings-{encoder}.log",
    benchmark:
        "logs/{dataset}/{scene}/embeddings-{encoder}.benchmark.tsv"
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/embeddings.py"
