# Overlap both ways round (vop.nso): per retrieved pair, how much of each image the other sees (enclosure,
# concentration) and their relative scale, against the ground-truth NSO of gt.h5; nso.csv per dataset with
# the box-embeddings protocol (RMSE, L1, Acc). vop methods predict it from their votes, cls from the
# backbone's patches with VOP's kernel and no trained head (the baseline).

rule overlap:
    """Predicted NSO both ways and the relative scale of every retrieved pair of a vop or cls method, with the
    ground-truth NSO where gt.h5 has it."""
    input:
        unpack(overlap_inputs),
    output:
        "results/{dataset}/{scene}/{method}/overlap.csv",
    params:
        method=lambda wc: canonical(METHODS[wc.method]),
        # the file's columns: a new layout reruns the rule instead of leaving old files its readers refuse
        columns=OVERLAP_COLUMNS,
    wildcard_constraints:
        method=alternatives([m for m in METHODS if METHODS[m]["type"] in NSO_METHOD_TYPES]),
    resources:
        mem_mb=mem_mb(2000),
    log:
        "logs/{dataset}/{scene}/{method}/overlap.log",
    benchmark:
        "logs/{dataset}/{scene}/{method}/overlap.benchmark.tsv"
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/overlap.py"


rule nso_table:
    """The box-embeddings protocol per method and scene, and ALL: RMSE, L1 and Acc of enclosure and
    concentration over the retrieved ordered pairs."""
    input:
        lambda wc: [rules.overlap.output[0].format(dataset=wc.dataset, scene=r["scene"], method=r["method"])
                    for r in nso_runs(wc.dataset)],
    output:
        report(
            "results/{dataset}/nso.csv",
            caption="../report/nso.rst",
            category="Results",
            labels=lambda wc: {"dataset": wc.dataset, "figure": "nso table"},
        ),
    params:
        runs=lambda wc: nso_runs(wc.dataset),
    wildcard_constraints:
        dataset=alternatives(nso_datasets()),
    log:
        "logs/{dataset}/nso_table.log",
    benchmark:
        "logs/{dataset}/nso_table.benchmark.tsv"
    localrule: True
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/nso_table.py"


rule nso_plots:
    """Predicted against true enclosure and concentration per method, and the pairs with the largest predicted
    scale change shown rescaled by it."""
    input:
        lambda wc: [rules.overlap.output[0].format(dataset=wc.dataset, scene=r["scene"], method=r["method"])
                    for r in nso_runs(wc.dataset)],
    output:
        scatter=report(
            "results/{dataset}/plots/nso.png",
            caption="../report/nso_plots.rst",
            category="Results",
            labels=lambda wc: {"dataset": wc.dataset, "figure": "nso"},
        ),
        pairs=report(
            "results/{dataset}/plots/nso_pairs.png",
            caption="../report/nso_plots.rst",
            category="Results",
            labels=lambda wc: {"dataset": wc.dataset, "figure": "nso pairs rescaled"},
        ),
    params:
        runs=lambda wc: [{**r, "image_dir": DATASETS[wc.dataset].image_dir(r["scene"])} for r in nso_runs(wc.dataset)],
    wildcard_constraints:
        dataset=alternatives(nso_datasets()),
    resources:
        mem_mb=mem_mb(2000),
    log:
        "logs/{dataset}/nso_plots.log",
    benchmark:
        "logs/{dataset}/nso_plots.benchmark.tsv"
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/nso_plots.py"
