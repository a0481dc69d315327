# VOP overlap retrieval: which images overlap, and what poses that gives.
# Stages (one .smk each): data -> ground truth -> features -> embeddings -> retrieval (verify) -> matches ->
# pose -> metrics; protocols.smk: the tables of the other protocols (vpr, revisitop, gl3d) after retrieval.
from snakemake.utils import min_version

from vop.config_errors import exit_on_config_error, validate_config

min_version("9.0")


configfile: "config/config.yaml"


# The checks and defaults of snakemake.utils.validate, with errors that lead with the key and the fix.
if not workflow.modifier.skip_validation:
    config_source = [str(f) for f in workflow.configfiles]
    if workflow.config_settings.overwrite_config:
        config_source.append("--config")
    with exit_on_config_error():
        validate_config(
            config,
            f"{workflow.basedir}/workflow/schemas/config.schema.yaml",
            source=", ".join(config_source),
        )


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/encoder.smk"
include: "workflow/rules/retrieval.smk"
include: "workflow/rules/shards.smk"
include: "workflow/rules/verify.smk"
include: "workflow/rules/matches.smk"
include: "workflow/rules/pose.smk"
include: "workflow/rules/metrics.smk"
include: "workflow/rules/protocols.smk"
include: "workflow/rules/sfm.smk"
include: "workflow/rules/overlap.smk"
include: "workflow/rules/summary.smk"


rule all:
    default_target: True
    input:
        expand(rules.auc_table.output[0], dataset=datasets_where(lambda ds: ds.conf.methods and ds.protocol == "auc")),
        expand(
            rules.plots.output,
            dataset=datasets_where(lambda ds: ds.conf.methods and ds.has_poses),
        ),
        protocol_targets(DATASETS),
        expand(rules.nso_table.output[0], dataset=nso_datasets()),
        expand(rules.nso_plots.output, dataset=nso_datasets()),
        expand(rules.scale_table.output[0], dataset=scale_datasets()),
        expand(rules.run_summary.output, dataset=datasets_where(lambda ds: ds.conf.methods)),


rule demo:
    """Every table and figure of the offline datasets (generated scenes): the README's demo, every protocol."""
    input:
        expand(
            rules.auc_table.output[0],
            dataset=datasets_where(lambda ds: ds.reader.generated and ds.conf.methods and ds.protocol == "auc"),
        ),
        expand(
            rules.plots.output,
            dataset=datasets_where(lambda ds: ds.reader.generated and ds.conf.methods and ds.has_poses),
        ),
        protocol_targets(datasets_where(lambda ds: ds.reader.generated)),
        expand(rules.nso_table.output[0], dataset=[ds for ds in nso_datasets() if DATASETS[ds].reader.generated]),
        expand(rules.nso_plots.output, dataset=[ds for ds in nso_datasets() if DATASETS[ds].reader.generated]),
        expand(rules.scale_table.output[0], dataset=[ds for ds in scale_datasets() if DATASETS[ds].reader.generated]),
