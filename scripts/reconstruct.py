"""Rule reconstruct: COLMAP reconstruction of a scene from one method's pairs and stored matches (vop.sfm)."""
from pathlib import Path

from vop.conf import MatchingConf, SfmConf
from vop.io import read_pairs
from vop.sfm import reconstruct_method
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
params = snakemake.params.sfm
reconstruct_method(SfmConf.from_dict(params["conf"], "sfm"), read_pairs(snakemake.input.pairs), snakemake.input.gt,
                   snakemake.input.local_features, snakemake.input.matches, Path(snakemake.output.metrics).parent,
                   MatchingConf.from_dict(params["matching"], "matching"), posed=params["posed"],
                   num_threads=snakemake.threads)
