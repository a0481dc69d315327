"""Rule pose: relative pose of every retrieved pair, scored against ground truth."""
from vop import io
from vop.pose import estimate_poses
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
conf = snakemake.params.conf
estimate_poses(
    io.read_pairs(snakemake.input.pairs),
    io.read_gt(snakemake.input.gt),
    snakemake.input.local_features,
    snakemake.output[0],
    threshold_px=conf.get("threshold_px", 1.0),
    ratio=conf.get("ratio", 0.8),
    num_workers=snakemake.threads,
)
