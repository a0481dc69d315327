# Verify: a method that reranks another method's shortlist by spatially verified matches (vop.verification).
# Its first stage runs here, deep enough for the shortlist and k; the verify method itself is a `retrieve`
# job that reads this ranking and the scene's matches store (retrieval_inputs in common.smk).


rule first_stage:
    """The first stage of a verify method: its ranking (max(k, shortlist) per query) and the shortlist."""
    input:
        unpack(first_stage_inputs),
    output:
        pairs="results/{dataset}/{scene}/{method}/first_stage/pairs.txt",
        scores="results/{dataset}/{scene}/{method}/first_stage/scores.csv",
        info="results/{dataset}/{scene}/{method}/first_stage/retrieval.json",
        shortlist="results/{dataset}/{scene}/{method}/shortlist.txt",
    params:
        method=lambda wc: canonical(METHODS[wc.method]),
        first_stage=lambda wc: canonical(METHODS[METHODS[wc.method]["first_stage"]]),
        backbone=lambda wc: method_backbone(wc.dataset, wc.method),
        mode=lambda wc: retrieval_mode(wc.dataset),
    wildcard_constraints:
        method=alternatives(VERIFY_METHODS),
    resources:
        gpu=1,
        mem_mb=mem_mb(4000),
    log:
        "logs/{dataset}/{scene}/{method}/first_stage.log",
    benchmark:
        "logs/{dataset}/{scene}/{method}/first_stage.benchmark.tsv"
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/first_stage.py"
