"""Rule matches: a method's shard of the scene's matches store, its pairs matched once per scene (vop.match_store)."""
import torch

from vop.conf import MatchingConf
from vop.match_store import build_scene_shard
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
build_scene_shard(snakemake.output[0], snakemake.input.pairs, snakemake.input.local_features,
                  MatchingConf.from_dict(snakemake.params.conf, "matching"))
