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


# Datasets without pose ground truth (folder, inloc): the same table, its metric cells saying so.
ruleorder: retrieval_table > auc_table


rule retrieval_table:
    """auc.csv of a dataset without ground truth: queries per method and scene, "no ground truth" cells."""
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
    wildcard_constraints:
        dataset=_alternatives([d for d in DATASETS if not has_pose_ground_truth(d)]),
    log:
        "logs/{dataset}/retrieval_table.log",
    benchmark:
        "logs/{dataset}/retrieval_table.benchmark.tsv"
    localrule: True
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/retrieval_table.py"
