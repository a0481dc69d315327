"""Rule scene_index: the prefilter's index over a sharded scene's database, and vop's radius."""
from vop.conf import method_conf
from vop.retrieval import MethodRun, save_scene_index
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
run = MethodRun.open(method_conf(snakemake.params.method, f"methods.{snakemake.wildcards.method}"),
                     snakemake.wildcards.scene, snakemake.input.gt, snakemake.input.get("features"),
                     snakemake.input.get("embeddings"), snakemake.params.mode["mode"],
                     snakemake.params.mode.get("queries"), k=snakemake.params.mode.get("k"))
save_scene_index(run.build_index(), snakemake.output.index, snakemake.output.info)
