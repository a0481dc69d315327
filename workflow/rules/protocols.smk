# The other protocols of the field, after retrieval: place recognition (vpr.csv), landmark retrieval
# (revisitop.csv) and matchable image retrieval (gl3d.csv, from MIRorR's match_pairs.txt). A dataset's
# source decides its protocol (vop.datasets: the reader's `protocol`); the table and figure rules are one
# each, with a function per protocol in vop.protocols, because their inputs are the same (every run's
# retrieval and the scene's ground truth) and only the metric differs.


rule place_part:
    """Put one downloaded file where its reader reads it: a file that is no archive (a ground-truth
    pickle, an image list) copied, an archive unpacked by file name into one folder (revisitop's jpg/)."""
    input:
        lambda wc: rules.download_archive.output[0].format(
            dataset=wc.dataset, archive=DATASETS[wc.dataset].archive_part(wc.part).archive
        ),
    output:
        "resources/{dataset}/placed/{part}.done",
    params:
        member_prefix=lambda wc: DATASETS[wc.dataset].archive_part(wc.part).member_prefix,
        target=lambda wc: DATASETS[wc.dataset].part_target(wc.part),
    wildcard_constraints:
        dataset=alternatives(placed_parts_datasets()),
        part="[^/]+",
    resources:
        mem_mb=mem_mb(1000),
    log:
        "logs/{dataset}/place_{part}.log",
    benchmark:
        "logs/{dataset}/place_part-{part}.benchmark.tsv"
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/place_part.py"


rule match_pairs:
    """MIRorR's match_pairs.txt of one run: `i j score`, indices into the image list, self pair first."""
    input:
        pairs=rules.retrieve.output.pairs,
        scores=rules.retrieve.output.scores,
        gt=rules.ground_truth.output[0],
    output:
        "results/{dataset}/{scene}/{method}/match_pairs.txt",
    wildcard_constraints:
        dataset=alternatives(datasets_where(lambda ds: ds.protocol == "gl3d")),
    resources:
        mem_mb=mem_mb(2000),
    log:
        "logs/{dataset}/{scene}/{method}/match_pairs.log",
    benchmark:
        "logs/{dataset}/{scene}/{method}/match_pairs.benchmark.tsv"
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/match_pairs.py"


rule protocol_table:
    """recall@N (vpr), mAP and mP@k under Easy/Medium/Hard (revisitop) or mAP@K (gl3d) per method and scene,
    and ALL."""
    input:
        unpack(protocol_inputs),
    output:
        report(
            "results/{dataset}/{protocol}.csv",
            caption="../report/protocol_table.rst",
            category="Results",
            labels=lambda wc: {"dataset": wc.dataset, "figure": f"{wc.protocol} table"},
        ),
    params:
        runs=lambda wc: protocol_runs(wc.dataset),
    wildcard_constraints:
        dataset=alternatives(protocol_datasets()),
        protocol=alternatives(OTHER_PROTOCOLS),
    log:
        "logs/{dataset}/{protocol}_table.log",
    benchmark:
        "logs/{dataset}/protocol_table-{protocol}.benchmark.tsv"
    localrule: True
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/protocol_table.py"


rule protocol_plot:
    """R@N curves (vpr), mAP and mP@10 bars per protocol (revisitop), mAP@K bars (gl3d)."""
    input:
        unpack(protocol_inputs),
        table=rules.protocol_table.output[0],
    output:
        report(
            "results/{dataset}/plots/{protocol}.png",
            caption="../report/protocol_plot.rst",
            category="Results",
            labels=lambda wc: {"dataset": wc.dataset, "figure": f"{wc.protocol} figure"},
        ),
    params:
        runs=lambda wc: protocol_runs(wc.dataset),
    wildcard_constraints:
        dataset=alternatives(protocol_datasets()),
        protocol=alternatives(OTHER_PROTOCOLS),
    resources:
        mem_mb=mem_mb(2000),
    log:
        "logs/{dataset}/{protocol}_plot.log",
    benchmark:
        "logs/{dataset}/protocol_plot-{protocol}.benchmark.tsv"
    conda:
        "../../envs/vop.yaml"
    script:
        "../../scripts/protocol_plot.py"
