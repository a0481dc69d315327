"""Rule pose: relative pose of every retrieved pair from the scene's matches store, scored against ground truth."""
from vop import io
from vop.conf import MatchingConf, PoseConf
from vop.pose import estimate_poses
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
estimate_poses(io.read_pairs(snakemake.input.pairs), snakemake.input.gt, snakemake.input.local_features,
               snakemake.output[0], PoseConf.from_dict(snakemake.params.conf, "pose"),
               num_workers=snakemake.threads, gt_path=snakemake.input.gt, matches_h5=snakemake.input.matches,
               matching=MatchingConf.from_dict(snakemake.params.matching, "matching"))
