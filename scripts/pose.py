"""Rule pose: relative pose of every retrieved pair from its stored matches, scored against ground truth; the
estimates each unordered pair once per scene (shared through the methods' poses.h5)."""
from vop import io
from vop.conf import MatchingConf, PoseConf
from vop.pose import estimate_scene_poses
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
estimate_scene_poses(io.read_pairs(snakemake.input.pairs), snakemake.input.gt, snakemake.input.local_features,
                     snakemake.output[0], snakemake.output.estimates, PoseConf.from_dict(snakemake.params.conf, "pose"),
                     num_workers=snakemake.threads, matches_h5=snakemake.input.matches,
                     matching=MatchingConf.from_dict(snakemake.params.matching, "matching"))
