# SfM: which pairs give a complete reconstruction? Each method's pairs (and the baselines of `sfm.baselines`:
# exhaustive, sequential) reconstructed from their stored matches (vop.sfm), the sweep of pairs per query,
# sfm.csv and its figure; export_colmap writes a method's database for your own `colmap mapper`.


rule reconstruct:
    """COLMAP reconstruction of a scene from a method's pairs: stored matches, two-view verification,
    incremental mapping (pycolmap); the model in sfm/models/0 opens in COLMAP's GUI."""
    input:
        pairs=rules.retrieve.output.pairs,
        gt=rules.ground_truth.output[0],
        local_features=rules.local_features.output[0],
        matches=rules.matches.output[0],
    output:
        metrics="results/{dataset}/{scene}/{method}/sfm/metrics.json",
        database="results/{dataset}/{scene}/{method}/sfm/database.db",
    params:
        sfm=sfm_params,
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
    log:
        "logs/{dataset}/{scene}/{method}/reconstruct.log",
    benchmark:
        "logs/{dataset}/{scene}/{method}/reconstruct.benchmark.tsv"
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/reconstruct.py"


rule sfm_sweep:
    """Reconstructions from the method's ranking cut at each depth of `sfm.sweep` (ranked deeper where its
    scores.csv is shallower); pairs the scene's stores lack are matched into the sweep's store."""
    input:
        unpack(sweep_inputs),
    output:
        sweep="results/{dataset}/{scene}/{method}/sfm/sweep.csv",
        store=update("results/{dataset}/{scene}/{method}/sfm/matches.h5"),
    params:
        sfm=lambda wc: sfm_params(wc, sweep=True),
        method=lambda wc: canonical(METHODS[wc.method]),
        backbone=lambda wc: method_backbone(wc.dataset, wc.method),
        mode=lambda wc: retrieval_mode(wc.dataset),
    threads: 1
    resources:
        mem_mb=mem_mb(3000),
    log:
        "logs/{dataset}/{scene}/{method}/sfm_sweep.log",
    benchmark:
        "logs/{dataset}/{scene}/{method}/sfm_sweep.benchmark.tsv"
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/sfm_sweep.py"


rule sfm_table:
    """sfm.csv (a row per method and scene, ALL rows), sfm_sweep.csv and the figure registered vs pairs per image."""
    input:
        metrics=lambda wc: [rules.reconstruct.output.metrics.format(dataset=wc.dataset, **run)
                            for run in sfm_runs(wc.dataset)],
        sweep=lambda wc: [rules.sfm_sweep.output.sweep.format(dataset=wc.dataset, method=m, scene=s)
                          for m in sweep_methods(wc.dataset) for s in DATASETS[wc.dataset].scenes],
    output:
        table="results/{dataset}/sfm.csv",
        sweep="results/{dataset}/sfm_sweep.csv",
        plot="results/{dataset}/plots/sfm.png",
    params:
        runs=lambda wc: sfm_runs(wc.dataset),
        sweep_runs=lambda wc: [{"method": m, "scene": s} for m in sweep_methods(wc.dataset)
                               for s in DATASETS[wc.dataset].scenes],
    log:
        "logs/{dataset}/sfm_table.log",
    benchmark:
        "logs/{dataset}/sfm_table.benchmark.tsv"
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/sfm_table.py"


rule export_colmap:
    """A COLMAP database of a method's pairs (images, cameras, keypoints, descriptors, verified matches) for
    `colmap mapper`, written directly instead of through `colmap matches_importer`."""
    input:
        pairs=rules.retrieve.output.pairs,
        gt=rules.ground_truth.output[0],
        local_features=rules.local_features.output[0],
        matches=rules.matches.output[0],
    output:
        "results/{dataset}/{scene}/{method}/colmap/database.db",
    params:
        sfm=sfm_params,
    threads: 2
    resources:
        mem_mb=mem_mb(2000),
    log:
        "logs/{dataset}/{scene}/{method}/export_colmap.log",
    benchmark:
        "logs/{dataset}/{scene}/{method}/export_colmap.benchmark.tsv"
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/export_colmap.py"
