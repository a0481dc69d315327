"""Checkpoint shard_plan: the image and query shards of one scene (vop.shards)."""
from vop.shards import write_plan
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
write_plan(snakemake.input.gt, snakemake.output[0], snakemake.params.per_job, snakemake.params.mode["mode"],
           snakemake.params.mode.get("queries"), snakemake.wildcards.scene)
