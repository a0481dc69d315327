"""Rule pose_scale_aware: a vop or cls method's pairs posed again, each image matched with local features
extracted at the pair's predicted relative scale (overlap.csv), cached per image and scale bucket."""
from vop import io
from vop.conf import LocalFeaturesConf, MatchingConf, PoseConf
from vop.datasets import open_scene
from vop.scale_aware import estimate_scene_scale_aware_poses
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
estimate_scene_scale_aware_poses(
    io.read_pairs(snakemake.input.pairs), snakemake.input.overlap, snakemake.input.gt, snakemake.input.local_features,
    open_scene(**snakemake.params.reader).image_dir, snakemake.output[0], snakemake.output.features,
    snakemake.output.estimates, snakemake.input.poses, PoseConf.from_dict(snakemake.params.conf, "pose"),
    MatchingConf.from_dict(snakemake.params.matching, "matching"),
    LocalFeaturesConf.from_dict(snakemake.params.local_features, "local_features"), num_workers=snakemake.threads)
