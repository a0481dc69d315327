"""Rule retrieve_shard: the rankings of one query shard of a scene against its whole database."""
from vop.conf import method_conf
from vop.retrieval import MethodRun, load_scene_index, save_shard
from vop.shards import read_plan
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
run = MethodRun.open(method_conf(snakemake.params.method, f"methods.{snakemake.wildcards.method}"),
                     snakemake.wildcards.scene, snakemake.input.gt, snakemake.input.get("features"),
                     snakemake.input.get("embeddings"), snakemake.params.mode["mode"],
                     snakemake.params.mode.get("queries"), k=snakemake.params.mode.get("k"))
rows = read_plan(snakemake.input.plan)["queries"][int(snakemake.wildcards.shard)]
shared = load_scene_index(snakemake.input.index, snakemake.input.info)
save_shard(run.rank_shard(rows, shared), snakemake.output[0])
