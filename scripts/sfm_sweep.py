"""Rule sfm_sweep: reconstructions from a method's ranking cut at each depth of `sfm.sweep` (vop.sfm)."""
from pathlib import Path

from vop.conf import MatchingConf, SfmConf, method_conf
from vop.io import read_names
from vop.retrieval import MethodRun
from vop.sfm import run_sweep, scene_stores, sweep_ranking
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
params = snakemake.params.sfm
conf = SfmConf.from_dict(params["conf"], "sfm")
matching = MatchingConf.from_dict(params["matching"], "matching")
inputs = snakemake.input


def rank_deeper(depth):
    """The method ranked `depth` deep, from the files its retrieve job read."""
    run = MethodRun.open(
        method_conf(snakemake.params.method, f"methods.{snakemake.wildcards.method}"), snakemake.wildcards.scene,
        inputs.gt, features_h5=inputs.get("features"), embeddings_h5=inputs.get("embeddings"),
        mode=snakemake.params.mode["mode"], queries=snakemake.params.mode.get("queries"),
        info={"backbone": snakemake.params.backbone}, k=depth, first_stage_scores=inputs.get("first_stage"),
        matches_h5=inputs.get("matches"), local_features_h5=inputs.local_features, matching=matching,
    )
    return run.rank()


names = read_names(inputs.gt)
ranking = sweep_ranking(inputs.scores, names, max(conf.sweep), rank_deeper)
scene_dir = Path(inputs.store).parent.parent
run_sweep(conf, ranking, inputs.gt, inputs.local_features, Path(snakemake.output.sweep).parent, matching,
          posed=params["posed"], num_threads=snakemake.threads, shared=scene_stores(scene_dir))
