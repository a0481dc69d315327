# Features: backbone tokens per image (CLS + 16x16 patches). The images are the input: replacing one reruns it.


rule features:
    """Batched backbone forward pass over every image of a scene (or, for a sharded dataset, the links to
    the features of its image shards)."""
    input:
        unpack(features_inputs),
    output:
        "results/{dataset}/{scene}/features-{backbone}.h5",
    params:
        reader=reader_args,
        conf=lambda wc: canonical(config["backbones"][wc.backbone]),
        # training scenes also keep the tokens of the mirrored images (flip augmentation)
        with_flipped=lambda wc: used_for_training(wc.dataset),
    threads: 2
    resources:
        gpu=lambda wc: 0 if sharded(wc.dataset) else 1,  # a sharded scene's job only links its shards
        mem_mb=mem_mb(8000),  # DINOv2 ViT-L weights and batches of full-size images
    log:
        "logs/{dataset}/{scene}/features-{backbone}.log",
    benchmark:
        "logs/{dataset}/{scene}/features-{backbone}.benchmark.tsv"
    conda:
        GPU_ENV
    script:
        "../../scripts/features.py"
