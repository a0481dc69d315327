# Run summary: what each stage of a dataset's run took (jobs, wall seconds, peak memory), from the
# rules' benchmark files, for the report and `vop summary`.


rule run_summary:
    """Per stage of a dataset's run (its encoders' training included): jobs, wall seconds and peak memory."""
    input:
        run_summary_inputs,
    output:
        tsv="results/{dataset}/run_summary.tsv",
        html=report(
            "results/{dataset}/run_summary.html",
            caption="../report/run_summary.rst",
            category="Run summary",
            labels=lambda wc: {"dataset": wc.dataset, "figure": "stages"},
        ),
    params:
        results=lambda wc: summary_results_dirs(wc.dataset),
    wildcard_constraints:
        dataset=alternatives(datasets_where(lambda ds: ds.conf.methods)),
    log:
        "logs/run_summary/run_summary-{dataset}.log",
    benchmark:
        # outside logs/{dataset}/: the summary does not count itself
        "logs/run_summary/run_summary-{dataset}.benchmark.tsv"
    localrule: True
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/run_summary.py"
