# Features: backbone tokens per image (CLS + 16x16 patches).


rule features:
    """Batched backbone forward pass over every image of a scene."""
    input:
        gt=rules.ground_truth.output[0],
    output:
        "results/{dataset}/{scene}/features-{backbone}.h5",
    params:
        image_dir=image_dir,
        conf=lambda wc: canonical(config["backbones"][wc.backbone]),
        # training scenes also keep the tokens of the mirrored images (flip augmentation)
        with_flipped=lambda wc: used_for_training(wc.dataset),
    threads: 2
    resources:
        gpu=1,
        mem_mb=mem_mb(8000),  # DINOv2 ViT-L weights and batches of full-size images
    log:
        "logs/{dataset}/{scene}/features-{backbone}.log",
    benchmark:
        "logs/{dataset}/{scene}/features-{backbone}.benchmark.tsv"
    conda:
        GPU_ENV
    script:
        "../../scripts/features.py"
