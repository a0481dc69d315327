"""Rule export_colmap: a COLMAP database of a method's pairs for `colmap mapper` (vop.sfm.export_colmap)."""
from vop.conf import MatchingConf, SfmConf
from vop.io import read_pairs
from vop.sfm import export_colmap
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
params = snakemake.params.sfm
conf = SfmConf.from_dict(params["conf"], "sfm")
export_colmap(snakemake.output[0], read_pairs(snakemake.input.pairs), snakemake.input.local_features,
              snakemake.input.matches, snakemake.input.gt, MatchingConf.from_dict(params["matching"], "matching"),
              known_intrinsics=conf.known_intrinsics and params["posed"], max_error_px=conf.max_error_px,
              min_num_inliers=conf.min_num_inliers, num_threads=snakemake.threads)
