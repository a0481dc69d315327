# Metrics: one table per dataset, every method on every scene plus pooled ALL rows.


rule auc_table:
    """Pose AUC@5/10/20, matches, inliers and retrieval recall per method and scene, and ALL."""
    input:
        unpack(auc_inputs),
    output:
        "results/{dataset}/auc.csv",
    params:
        runs=lambda wc: [
            {"method": m, "scene": s, "k": METHODS[m]["k"]}
            for m in DATASETS[wc.dataset]["methods"]
            for s in scenes(wc.dataset)
        ],
        overlap_tau=config.get("metrics", {}).get("overlap_tau", 0.1),
    log:
        "logs/{dataset}/auc_table.log",
    benchmark:
        "logs/{dataset}/auc_table.benchmark.tsv"
    localrule: True
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/auc_table.py"
