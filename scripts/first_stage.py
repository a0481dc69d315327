"""Rule first_stage: a verify method's first-stage ranking (max(k, shortlist) per query) and its shortlist."""
from pathlib import Path

from vop.conf import method_conf
from vop.retrieval import run_first_stage
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
verify = method_conf(snakemake.params.method, f"methods.{snakemake.wildcards.method}")
run_first_stage(
    verify,
    method_conf(snakemake.params.first_stage, f"methods.{verify.first_stage}"),
    snakemake.wildcards.scene,
    snakemake.input.gt,
    Path(snakemake.output.scores).parent,
    snakemake.output.shortlist,
    features_h5=snakemake.input.get("features"),
    embeddings_h5=snakemake.input.get("embeddings"),
    mode=snakemake.params.mode["mode"],
    queries=snakemake.params.mode.get("queries"),
    info={"backbone": snakemake.params.backbone, "first_stage_of": snakemake.wildcards.method},
)
