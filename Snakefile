# VOP overlap retrieval: which images overlap, and what poses that gives.
# Stages (one .smk each): data -> ground truth -> features -> embeddings -> retrieval (verify) -> matches ->
# pose -> metrics.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/encoder.smk"
include: "workflow/rules/retrieval.smk"
include: "workflow/rules/verify.smk"
include: "workflow/rules/matches.smk"
include: "workflow/rules/pose.smk"
include: "workflow/rules/metrics.smk"


rule all:
    default_target: True
    input:
        expand(rules.auc_table.output[0], dataset=datasets_where(lambda ds: ds.conf.methods)),
        expand(
            rules.plots.output,
            dataset=datasets_where(lambda ds: ds.conf.methods and ds.has_poses),
        ),
