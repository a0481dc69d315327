# Retrieval: every method writes pairs.txt, scores.csv and retrieval.json per scene.


rule retrieve:
    """Rank the database images of every query with one configured method."""
    input:
        unpack(retrieval_inputs),
    output:
        pairs="results/{dataset}/{scene}/{method}/pairs.txt",
        scores="results/{dataset}/{scene}/{method}/scores.csv",
        info="results/{dataset}/{scene}/{method}/retrieval.json",
    params:
        method=lambda wc: canonical(METHODS[wc.method]),
        backbone=lambda wc: method_backbone(wc.dataset, wc.method),
        mode=lambda wc: retrieval_mode(wc.dataset),
        # verify reads the matches store: the matching conf it was written with
        matching=lambda wc: canonical(config["matching"]) if is_verify(wc.method) else None,
    threads: lambda wc: 2 if is_verify(wc.method) else 1
    resources:
        gpu=lambda wc: 0 if sharded_retrieval(wc) else 1,  # then it only merges its shards' rows
        mem_mb=mem_mb(4000),
    log:
        "logs/{dataset}/{scene}/{method}/retrieve.log",
    benchmark:
        "logs/{dataset}/{scene}/{method}/retrieve.benchmark.tsv"
    conda:
        GPU_ENV
    script:
        "../../scripts/retrieve.py"
