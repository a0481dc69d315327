# Metrics: one table per dataset, every method on every scene plus pooled ALL rows, and its figures.


rule auc_table:
    """Pose AUC@5/10/20 (best pair and all pairs), matches, inliers, retrieval recall and mAP per method
    and scene, and ALL; a dataset without ground truth gets the same table, its metric cells saying so."""
    input:
        unpack(auc_inputs),
    output:
        report(
            "results/{dataset}/auc.csv",
            caption="../report/auc.rst",
            category="Results",
            labels=lambda wc: {"dataset": wc.dataset, "figure": "table"},
        ),
    params:
        runs=lambda wc: metrics_runs(wc.dataset),
        has_ground_truth=lambda wc: DATASETS[wc.dataset].has_poses,
        conf=canonical(config["metrics"]),
    log:
        "logs/{dataset}/auc_table.log",
    benchmark:
        "logs/{dataset}/auc_table.benchmark.tsv"
    localrule: True
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/auc_table.py"


rule plots:
    """Cumulative pose-error curves, recall@k curves and a grid of retrievals with their overlap, and an
    HTML summary (table and figures) that the report's front page shows."""
    input:
        unpack(auc_inputs),
        auc=rules.auc_table.output[0],
    output:
        pose_errors=report(
            "results/{dataset}/plots/pose_errors.png",
            caption="../report/pose_errors.rst",
            category="Results",
            labels=lambda wc: {"dataset": wc.dataset, "figure": "pose errors"},
        ),
        recall=report(
            "results/{dataset}/plots/recall.png",
            caption="../report/recall.rst",
            category="Results",
            labels=lambda wc: {"dataset": wc.dataset, "figure": "recall@k"},
        ),
        retrievals=report(
            "results/{dataset}/plots/retrievals.png",
            caption="../report/retrievals.rst",
            category="Results",
            labels=lambda wc: {"dataset": wc.dataset, "figure": "retrievals"},
        ),
        summary=report(
            "results/{dataset}/plots/summary.html",
            caption="../report/summary.rst",
            category="Results",
            labels=lambda wc: {"dataset": wc.dataset, "figure": "table and figures"},
        ),
    params:
        runs=lambda wc: [
            {**run, "image_dir": DATASETS[wc.dataset].image_dir(run["scene"])} for run in metrics_runs(wc.dataset)
        ],
        conf=canonical(config["metrics"]),
    wildcard_constraints:
        dataset=alternatives(datasets_where(lambda ds: ds.has_poses)),
    resources:
        mem_mb=mem_mb(2000),
    log:
        "logs/{dataset}/plots.log",
    benchmark:
        "logs/{dataset}/plots.benchmark.tsv"
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/plots.py"


rule scale_table:
    """pose.scale_aware: each NSO method and its +scale run, per scene and ALL: pose AUC over every retrieved pair
    and over those whose true relative scale is 2x or more either way."""
    input:
        pose=lambda wc: [run["pose"] for run in scale_runs(wc.dataset)],
        overlap=lambda wc: [run["overlap"] for run in scale_runs(wc.dataset)],
    output:
        report(
            "results/{dataset}/scale.csv",
            caption="../report/scale.rst",
            category="Results",
            labels=lambda wc: {"dataset": wc.dataset, "figure": "scale table"},
        ),
    params:
        runs=lambda wc: [{"method": run["method"], "scene": run["scene"]} for run in scale_runs(wc.dataset)],
    wildcard_constraints:
        dataset=alternatives(scale_datasets()),
    log:
        "logs/{dataset}/scale_table.log",
    benchmark:
        "logs/{dataset}/scale_table.benchmark.tsv"
    localrule: True
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/scale_table.py"
