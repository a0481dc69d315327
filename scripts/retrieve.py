"""Rule retrieve: pairs.txt, scores.csv and retrieval.json of one method on one scene (ranked here, or
merged from the scene's query shards)."""
from pathlib import Path

from vop.conf import MatchingConf, method_conf
from vop.retrieval import MethodRun, merge_shards
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
run = MethodRun.open(
    method_conf(snakemake.params.method, f"methods.{snakemake.wildcards.method}"),
    snakemake.wildcards.scene,
    snakemake.input.gt,
    features_h5=snakemake.input.get("features"),
    embeddings_h5=snakemake.input.get("embeddings"),
    mode=snakemake.params.mode["mode"],
    queries=snakemake.params.mode.get("queries"),
    info={"backbone": snakemake.params.backbone},
    k=snakemake.params.mode.get("k"),  # a dataset's depth (a protocol's), replacing the method's k
    # verify only: its first stage's ranking, the matches store (and the conf it was written with), features
    first_stage_scores=snakemake.input.get("first_stage"),
    matches_h5=snakemake.input.get("matches"),
    local_features_h5=snakemake.input.get("local_features"),
    matching=MatchingConf.from_dict(snakemake.params.matching or {}, "matching"),
    num_workers=snakemake.threads,
)
shards = snakemake.input.get("shards")
run.write(merge_shards(shards) if shards else run.rank(), Path(snakemake.output.pairs).parent)
